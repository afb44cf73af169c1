//! Batch tasks: run-to-completion work (a command with arguments, never a shell) placed on a
//! node by the same scheduler as VMs, with every attempt and its result recorded through Raft.
//!
//! This module holds the pure types and their validation; the commands that change them are in
//! `state::tasks`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::placement::{Constraint, PlacementSpec, MAX_CONSTRAINTS};
use crate::spec::{quoted, validate_labels, validate_name, ValidationError, VmSpec};
use crate::NodeId;

/// Longest command (the program), in bytes.
pub const MAX_COMMAND_LEN: usize = 4096;
/// Most arguments.
pub const MAX_ARGS: usize = 256;
/// Longest argument, in bytes.
pub const MAX_ARG_LEN: usize = 4096;
/// Largest command line (command and arguments together), in bytes.
pub const MAX_ARGV_BYTES: usize = 64 * 1024;
/// Most environment variables.
pub const MAX_ENV: usize = 128;
/// Longest environment variable name, in bytes.
pub const MAX_ENV_KEY_LEN: usize = 256;
/// Longest environment variable value, in bytes.
pub const MAX_ENV_VALUE_LEN: usize = 4096;
/// vCPUs a task may ask for (inclusive).
pub const VCPUS: (u32, u32) = (1, 256);
/// Memory a task may ask for, in MiB (inclusive).
pub const MEMORY_MIB: (u32, u32) = (1, 1024 * 1024);
/// vCPUs of a task with `vm` isolation (those of a VM).
pub const VM_VCPUS: (u32, u32) = crate::spec::VCPUS;
/// Memory of a task with `vm` isolation, in MiB: the guest kernel needs about 72 MiB to boot.
pub const VM_MEMORY_MIB: (u32, u32) = (96, crate::spec::MEMORY_MIB.1);
/// Timeout range, in ms (1 s to 7 days).
pub const TIMEOUT_MS: (u64, u64) = (1_000, 7 * 24 * 3_600_000);
/// Most retries after the first attempt.
pub const MAX_RETRIES: u32 = 20;
/// Largest backoff (base and cap), in ms.
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// Largest output tail carried in a result, per stream, in bytes.
pub const MAX_TAIL: usize = 4096;
/// Most attempts recorded for one task (lost attempts are retried without counting against
/// `retries`; this bounds a task whose nodes keep failing).
pub const MAX_ATTEMPTS: usize = 64;
/// Longest error text in a result, in bytes.
pub const MAX_ERROR_LEN: usize = 1024;

/// Where a task runs on its node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Isolation {
    /// A child process in its own process group.
    #[default]
    Process,
    /// A throwaway microVM booted from the default guest image, with the task's vCPUs and
    /// memory, destroyed when the attempt ends.
    Vm,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Vm => "vm",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "process" => Ok(Isolation::Process),
            "vm" => Ok(Isolation::Vm),
            _ => Err(ValidationError::new("isolation", format!("must be process or vm (got {})", quoted(s)))),
        }
    }
}

/// What the user asks to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub name: Option<String>,
    /// The program: a path, or a name looked up in the worker's `PATH`. Never run by a shell.
    pub command: String,
    pub args: Vec<String>,
    /// The whole environment of the task besides `PATH` (the worker's own is not inherited).
    pub env: BTreeMap<String, String>,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub constraints: Vec<Constraint>,
    pub timeout_ms: u64,
    /// Attempts after the first one when an attempt fails or times out.
    pub retries: u32,
    /// Backoff before retry n is `backoff_ms * 2^(n-1)`, at most `backoff_cap_ms`.
    pub backoff_ms: u64,
    pub backoff_cap_ms: u64,
    pub isolation: Isolation,
    pub labels: BTreeMap<String, String>,
}

impl Default for TaskSpec {
    fn default() -> Self {
        TaskSpec {
            name: None,
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            vcpus: 1,
            memory_mib: 128,
            constraints: Vec::new(),
            timeout_ms: 3_600_000,
            retries: 0,
            backoff_ms: 1_000,
            backoff_cap_ms: 60_000,
            isolation: Isolation::Process,
            labels: BTreeMap::new(),
        }
    }
}

fn no_nul(field: &str, s: &str) -> Result<(), ValidationError> {
    if s.contains('\0') {
        return Err(ValidationError::new(field, format!("must not contain a NUL byte (got {})", quoted(s))));
    }
    Ok(())
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(field: &str, v: T, (lo, hi): (T, T)) -> Result<(), ValidationError> {
    if v < lo || v > hi {
        return Err(ValidationError::new(field, format!("must be {lo} to {hi} (got {v})")));
    }
    Ok(())
}

fn env_key_ok(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ENV_KEY_LEN
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

impl TaskSpec {
    /// Every rule, naming the field that breaks one.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(n) = &self.name {
            validate_name(n)?;
        }
        if self.command.is_empty() || self.command.len() > MAX_COMMAND_LEN {
            return Err(ValidationError::new(
                "command",
                format!("must be 1 to {MAX_COMMAND_LEN} bytes (got {})", self.command.len()),
            ));
        }
        no_nul("command", &self.command)?;
        if self.args.len() > MAX_ARGS {
            return Err(ValidationError::new(
                "args",
                format!("at most {MAX_ARGS} arguments (got {})", self.args.len()),
            ));
        }
        for a in &self.args {
            if a.len() > MAX_ARG_LEN {
                return Err(ValidationError::new("args", format!("an argument is at most {MAX_ARG_LEN} bytes")));
            }
            no_nul("args", a)?;
        }
        let total = self.command.len() + self.args.iter().map(String::len).sum::<usize>();
        if total > MAX_ARGV_BYTES {
            return Err(ValidationError::new("args", format!("the command line is at most {MAX_ARGV_BYTES} bytes")));
        }
        if self.env.len() > MAX_ENV {
            return Err(ValidationError::new("env", format!("at most {MAX_ENV} variables (got {})", self.env.len())));
        }
        for (k, v) in &self.env {
            if !env_key_ok(k) {
                return Err(ValidationError::new(
                    "env",
                    format!(
                        "name {} must be 1 to {MAX_ENV_KEY_LEN} of [A-Za-z0-9_], not starting with a digit",
                        quoted(k)
                    ),
                ));
            }
            if k == "PATH" {
                return Err(ValidationError::new("env", "PATH is the worker's own and cannot be set"));
            }
            if v.len() > MAX_ENV_VALUE_LEN {
                return Err(ValidationError::new("env", format!("value of {k} is at most {MAX_ENV_VALUE_LEN} bytes")));
            }
            no_nul("env", v)?;
        }
        range("vcpus", self.vcpus, VCPUS)?;
        range("memory", self.memory_mib, MEMORY_MIB)?;
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(ValidationError::new("constraint", format!("at most {MAX_CONSTRAINTS} constraints")));
        }
        for c in &self.constraints {
            c.validate()?;
        }
        range("timeout_ms", self.timeout_ms, TIMEOUT_MS)?;
        range("retries", self.retries, (0, MAX_RETRIES))?;
        range("backoff_ms", self.backoff_ms, (0, MAX_BACKOFF_MS))?;
        range("backoff_cap_ms", self.backoff_cap_ms, (self.backoff_ms, MAX_BACKOFF_MS))?;
        if self.isolation == Isolation::Vm {
            range("vcpus", self.vcpus, VM_VCPUS)?;
            range("memory", self.memory_mib, VM_MEMORY_MIB)?;
        }
        validate_labels(&self.labels)
    }

    /// The backoff before retry `n` (1 = the first retry), capped.
    pub fn backoff(&self, n: u32) -> u64 {
        if n == 0 {
            return 0;
        }
        let shift = (n - 1).min(32);
        self.backoff_ms.saturating_mul(1u64 << shift).min(self.backoff_cap_ms)
    }

    /// What the scheduler sees of it: resources and constraints, nothing else.
    pub(crate) fn as_vm(&self, id: &str) -> VmSpec {
        VmSpec {
            name: id.to_string(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            placement: PlacementSpec { constraints: self.constraints.clone(), ..Default::default() },
            ..Default::default()
        }
    }
}

/// A task's state, derived from its attempts and its policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskState {
    /// Waiting for a node with room (see `pending`).
    #[default]
    Pending,
    /// Its current attempt is on a node that has not started it yet.
    Assigned,
    Running,
    Succeeded,
    /// Exited non-zero, killed by a signal, or failed to start (after all retries).
    Failed,
    TimedOut,
    Cancelled,
    /// Its attempts kept being lost (more than [`MAX_ATTEMPTS`]).
    Lost,
}

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 8] = [
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::TimedOut,
        TaskState::Cancelled,
        TaskState::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::TimedOut => "timed_out",
            TaskState::Cancelled => "cancelled",
            TaskState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Ok(match s {
            "pending" => TaskState::Pending,
            "assigned" => TaskState::Assigned,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "timed_out" => TaskState::TimedOut,
            "cancelled" => TaskState::Cancelled,
            "lost" => TaskState::Lost,
            _ => return Err(ValidationError::new("state", format!("is not a task state (got {})", quoted(s)))),
        })
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, TaskState::Pending | TaskState::Assigned | TaskState::Running)
    }
}

/// How an attempt ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptResult {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    /// Its timeout passed; `killed`: it ignored SIGTERM for the grace period and got SIGKILL.
    TimedOut {
        killed: bool,
    },
    Cancelled {
        killed: bool,
    },
    /// Its node was declared down or left: it may or may not have run to its end.
    Lost,
    /// Killed by the kernel for exceeding its memory limit (a cgroup's OOM killer; with
    /// rlimits an allocation failure is an ordinary failure instead).
    Oom,
    /// The worker could not start it (no such program, ...).
    StartFailed {
        error: String,
    },
}

impl AttemptResult {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let AttemptResult::StartFailed { error } = self {
            if error.len() > MAX_ERROR_LEN {
                return Err(ValidationError::new("result", format!("error is at most {MAX_ERROR_LEN} bytes")));
            }
        }
        Ok(())
    }

    /// One word for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            AttemptResult::Exited { .. } => "exited",
            AttemptResult::Signaled { .. } => "signaled",
            AttemptResult::TimedOut { .. } => "timed_out",
            AttemptResult::Cancelled { .. } => "cancelled",
            AttemptResult::Lost => "lost",
            AttemptResult::Oom => "oom",
            AttemptResult::StartFailed { .. } => "start_failed",
        }
    }
}

/// How a node holds an attempt to its resources (chosen by the node when it starts it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforcement {
    /// Nothing: vCPUs and memory are only reserved.
    #[default]
    None,
    /// `RLIMIT_AS` = its memory (no CPU limit): an allocation beyond it fails inside the task,
    /// which sees an ordinary error, so the result is a plain failure, never `oom`.
    Rlimit,
    /// A cgroup v1 per attempt (memory and cpu controllers): `oom` when the kernel kills it.
    CgroupV1,
    /// A cgroup v2 per attempt (`memory.max`, `cpu.max`): `oom` when the kernel kills it.
    CgroupV2,
    /// A microVM of its own (`--isolation vm`): the VM's vCPUs and memory are the limits.
    Vm,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::None => "none",
            Enforcement::Rlimit => "rlimit",
            Enforcement::CgroupV1 => "cgroup-v1",
            Enforcement::CgroupV2 => "cgroup-v2",
            Enforcement::Vm => "vm",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        Ok(match s {
            "none" => Enforcement::None,
            "rlimit" => Enforcement::Rlimit,
            "cgroup-v1" => Enforcement::CgroupV1,
            "cgroup-v2" => Enforcement::CgroupV2,
            "vm" => Enforcement::Vm,
            _ => {
                return Err(ValidationError::new(
                    "enforcement",
                    format!("must be none, rlimit, cgroup-v1, cgroup-v2 or vm (got {})", quoted(s)),
                ))
            }
        })
    }
}

/// One try at running a task, on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1, 2, ...
    pub number: u32,
    /// The log index that placed it: what a report names, so a stale one is refused.
    pub id: u64,
    pub node: NodeId,
    /// Cluster time when it was placed.
    pub assigned_ms: u64,
    /// Do not start before this cluster time (the retry backoff).
    pub not_before_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub result: Option<AttemptResult>,
    pub stdout_tail: Vec<u8>,
    pub stderr_tail: Vec<u8>,
    /// How its node enforced its resources (from its `Started` report; `None` before).
    pub enforcement: Option<Enforcement>,
}

/// A task as the replicated state knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// `t<submit index>`.
    pub id: String,
    pub spec: TaskSpec,
    pub submit_index: u64,
    pub submitted_ms: u64,
    pub state: TaskState,
    pub attempts: Vec<Attempt>,
    /// Why it waits (the scheduler's reasons), while pending.
    pub pending: Option<String>,
    /// Do not place before this cluster time (a retry's backoff while pending).
    pub not_before_ms: u64,
    /// A cancel was asked while an attempt ran: the node stops it and reports.
    pub cancel_requested: bool,
    /// Retries used (lost attempts do not count).
    pub retries_used: u32,
    pub finished_ms: Option<u64>,
    /// The log index that finished it (the retention order).
    pub finished_index: Option<u64>,
}

impl TaskRecord {
    /// The attempt that is on a node now (no result yet).
    pub fn current(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.result.is_none())
    }

    /// The exit code `task wait` and `submit --wait` end with: the task's own when it exited,
    /// 128+signal when signaled, 124 when timed out, else 1 (and 0 only for success).
    pub fn exit_code(&self) -> Option<i32> {
        if !self.state.is_finished() {
            return None;
        }
        Some(match self.attempts.last().and_then(|a| a.result.as_ref()) {
            Some(AttemptResult::Exited { code }) => *code,
            Some(AttemptResult::Signaled { signal }) => 128 + signal,
            Some(AttemptResult::TimedOut { .. }) => 124,
            Some(AttemptResult::Oom) => 137,
            _ => 1,
        })
    }
}

/// Parses a task id (`t<index>`) into the submit index it is stored under.
pub fn parse_id(id: &str) -> Result<u64, ValidationError> {
    id.strip_prefix('t')
        .filter(|n| n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| ValidationError::new("id", format!("a task id is t<number> (got {})", quoted(id))))
}

pub fn format_id(index: u64) -> String {
    format!("t{index}")
}

#[cfg(test)]
mod tests;
