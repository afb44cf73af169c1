//! `blixard task`: batch tasks (see README "Batch tasks").

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use blixard_proto::v1::task_service_client::TaskServiceClient;
use blixard_proto::v1::{self, ReadOptions};
use serde::Serialize;

use super::vm::parse_duration;
use crate::client::{connect, Conn};
use crate::output::{emit, Table};
use crate::Format;

#[derive(clap::Args)]
pub struct SubmitArgs {
    #[arg(long)]
    name: Option<String>,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    /// A node-label constraint (the VM constraint language), repeatable.
    #[arg(long = "constraint", value_name = "EXPR")]
    constraints: Vec<String>,
    /// e.g. 60s, 10m.
    #[arg(long, default_value = "3600s", value_parser = parse_duration)]
    timeout: Duration,
    /// Attempts after the first when an attempt fails or times out.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Backoff before the first retry (doubling, capped by --backoff-cap).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    backoff: Duration,
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    backoff_cap: Duration,
    /// process, or vm: a throwaway microVM booted from the default guest image (see README).
    #[arg(long, default_value = "process")]
    isolation: String,
    /// K=V, repeatable: the task's whole environment besides PATH.
    #[arg(long = "env", value_name = "K=V")]
    env: Vec<String>,
    #[arg(long = "label", value_name = "K=V")]
    labels: Vec<String>,
    /// Follow it to its end and exit with its exit code.
    #[arg(long)]
    wait: bool,
    /// The program and its arguments (never run by a shell).
    #[arg(last = true, required = true, num_args = 1..)]
    argv: Vec<String>,
}

#[derive(clap::Subcommand)]
pub enum TaskCmd {
    /// Submit a task: `blixard task submit [OPTIONS] -- CMD ARGS...`.
    Submit(Box<SubmitArgs>),
    /// Show one task with its attempts.
    Get {
        id: String,
        #[arg(long)]
        stale: bool,
    },
    /// List tasks, oldest first.
    List {
        /// pending | assigned | running | succeeded | failed | timed_out | cancelled | lost
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Print an attempt's stdout (or stderr) from the node that ran it.
    Logs {
        id: String,
        #[arg(long)]
        stderr: bool,
        /// Attempt number (default: the last).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
    },
    /// Cancel a task (its node stops a running attempt: SIGTERM, then SIGKILL; a VM is killed).
    Cancel { id: String },
    /// Wait for a task to end; exits with its exit code.
    Wait {
        id: String,
        #[arg(long, default_value = "3600s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Delete finished tasks beyond the newest --keep.
    Prune {
        #[arg(long, default_value_t = 0)]
        keep: u64,
    },
}

fn client(ch: tonic::transport::Channel) -> TaskServiceClient<tonic::transport::Channel> {
    TaskServiceClient::new(ch)
        .max_decoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
}

fn kv(what: &str, items: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--{what} takes K=V (got {})", blixard_core::quoted(s)))
        })
        .collect()
}

#[derive(Serialize)]
pub struct AttemptOut {
    number: u32,
    id: u64,
    node: u64,
    started_ms: Option<u64>,
    ended_ms: Option<u64>,
    result: Option<String>,
    exit_code: Option<i32>,
    signal: Option<i32>,
    killed: bool,
    error: Option<String>,
    /// cgroup-v2 | cgroup-v1 | rlimit | none (absent before it started).
    enforcement: Option<String>,
    stdout_tail: String,
    stderr_tail: String,
}

#[derive(Serialize)]
pub struct TaskOut {
    id: String,
    name: Option<String>,
    state: String,
    node: Option<u64>,
    command: Vec<String>,
    isolation: String,
    vcpus: u32,
    memory_mib: u32,
    exit_code: Option<i32>,
    pending: Option<String>,
    cancel_requested: bool,
    retries_used: u32,
    submitted_ms: u64,
    finished_ms: Option<u64>,
    attempts: Vec<AttemptOut>,
}

fn task_out(t: v1::Task) -> TaskOut {
    let spec = t.spec.unwrap_or_default();
    let mut command = vec![spec.command];
    command.extend(spec.args);
    TaskOut {
        node: t.attempts.last().map(|a| a.node),
        id: t.id,
        name: Some(spec.name).filter(|n| !n.is_empty()),
        state: t.state,
        command,
        isolation: if spec.isolation.is_empty() { "process".into() } else { spec.isolation },
        vcpus: spec.vcpus,
        memory_mib: spec.memory_mib,
        exit_code: t.exit_code,
        pending: Some(t.pending).filter(|p| !p.is_empty()),
        cancel_requested: t.cancel_requested,
        retries_used: t.retries_used,
        submitted_ms: t.submitted_ms,
        finished_ms: t.finished_ms,
        attempts: t
            .attempts
            .into_iter()
            .map(|a| AttemptOut {
                number: a.number,
                id: a.id,
                node: a.node,
                started_ms: a.started_ms,
                ended_ms: a.ended_ms,
                exit_code: (a.result == "exited").then_some(a.exit_code),
                signal: (a.result == "signaled").then_some(a.signal),
                result: Some(a.result).filter(|r| !r.is_empty()),
                killed: a.killed,
                error: Some(a.error).filter(|e| !e.is_empty()),
                enforcement: Some(a.enforcement).filter(|e| !e.is_empty()),
                stdout_tail: String::from_utf8_lossy(&a.stdout_tail).into_owned(),
                stderr_tail: String::from_utf8_lossy(&a.stderr_tail).into_owned(),
            })
            .collect(),
    }
}

fn table(ts: &[TaskOut]) -> Table {
    let mut t = Table::new(vec!["ID", "STATE", "NODE", "EXIT", "ATTEMPTS", "COMMAND"]);
    for x in ts {
        t.rows.push(vec![
            x.id.clone(),
            x.state.clone(),
            x.node.map_or("-".into(), |n| n.to_string()),
            x.exit_code.map_or("-".into(), |c| c.to_string()),
            x.attempts.len().to_string(),
            x.command.join(" "),
        ]);
    }
    t
}

fn detail(x: &TaskOut) -> String {
    let mut s = table(std::slice::from_ref(x)).render();
    if let Some(p) = &x.pending {
        s.push_str(&format!("pending: {p}\n"));
    }
    for a in &x.attempts {
        s.push_str(&format!(
            "attempt {} on node {}: {}{}{}{}\n",
            a.number,
            a.node,
            a.result.as_deref().unwrap_or("open"),
            a.exit_code.map_or(String::new(), |c| format!(" code {c}")),
            a.signal.map_or(String::new(), |c| format!(" signal {c}")),
            match (a.killed, x.isolation.as_str()) {
                (false, _) => "",
                (true, "vm") => " (its VM was killed)",
                (true, _) => " (SIGKILL after the grace period)",
            },
        ));
        if a.result.as_deref() == Some("oom") {
            s.push_str(&format!("  out of memory: the kernel killed it for exceeding its {} MiB\n", x.memory_mib));
        }
        if let Some(e) = &a.error {
            s.push_str(&format!("  error: {e}\n"));
        }
        if let Some(e) = &a.enforcement {
            s.push_str(&format!("  enforcement: {e}{}\n", enforcement_note(e, x)));
        }
    }
    s
}

/// What an enforcement means for this task, for `task get`.
fn enforcement_note(e: &str, x: &TaskOut) -> String {
    match e {
        "cgroup-v2" | "cgroup-v1" => {
            format!(" (a cgroup: memory {} MiB, no swap; CPU quota {} vCPU)", x.memory_mib, x.vcpus)
        }
        "rlimit" => format!(
            " (address space limited to {} MiB: an allocation beyond fails inside the task, an ordinary failure, \
             not oom; no CPU limit)",
            x.memory_mib
        ),
        "none" => " (vCPUs and memory only reserved, not enforced)".into(),
        _ => String::new(),
    }
}

async fn get(conn: &mut Conn, id: &str, stale: bool) -> anyhow::Result<v1::Task> {
    let req = v1::TaskIdRequest { id: id.to_string(), read: Some(ReadOptions { stale }) };
    Ok(conn.read(req, |ch, r| async move { client(ch).get_task(r).await }).await?)
}

/// How long one `WaitTask` request waits (below the client's per-request timeout).
const WAIT_CHUNK: Duration = Duration::from_secs(10);

/// The task once it finished or `left` passed: one `WaitTask` (the node answers when it applies
/// the end); a node without `WaitTask` is polled as before it existed.
async fn wait_once(conn: &mut Conn, id: &str, left: Duration) -> anyhow::Result<v1::Task> {
    let req = v1::WaitTaskRequest {
        id: id.to_string(),
        timeout_ms: left.min(WAIT_CHUNK).as_millis().max(1) as u64,
        read: Some(ReadOptions { stale: false }),
    };
    match conn.read(req, |ch, r| async move { client(ch).wait_task(r).await }).await {
        Err(crate::client::ClientError::Status(s)) if s.code() == tonic::Code::Unimplemented => {
            tokio::time::sleep(Duration::from_millis(200).min(left)).await;
            get(conn, id, false).await
        }
        r => Ok(r?),
    }
}

/// Waits until the task is finished (or the deadline), then prints it and exits with its code.
async fn wait(conn: &mut Conn, fmt: Format, id: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut t = get(conn, id, false).await?;
    loop {
        if let Some(code) = t.exit_code {
            let out = task_out(t);
            emit(fmt, &out, || detail(&out));
            use std::io::Write;
            std::io::stdout().flush()?;
            std::process::exit(code.clamp(0, 255));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            anyhow::bail!("task {id} is still {} after {timeout:?}", t.state);
        }
        t = wait_once(conn, id, left).await?;
    }
}

pub async fn run(addr: &str, fmt: Format, c: TaskCmd) -> anyhow::Result<()> {
    let mut conn = connect(addr).await?;
    match c {
        TaskCmd::Submit(a) => {
            let mut argv = a.argv.into_iter();
            let spec = v1::TaskSpec {
                name: a.name.unwrap_or_default(),
                command: argv.next().unwrap_or_default(),
                args: argv.collect(),
                env: kv("env", &a.env)?.into_iter().collect(),
                vcpus: a.vcpus,
                memory_mib: a.memory,
                constraints: a.constraints,
                timeout_ms: a.timeout.as_millis() as u64,
                retries: a.retries,
                backoff_ms: a.backoff.as_millis() as u64,
                backoff_cap_ms: a.backoff_cap.as_millis() as u64,
                isolation: a.isolation,
                labels: kv("label", &a.labels)?.into_iter().collect(),
            };
            let t = conn.write(spec, |ch, r| async move { client(ch).submit_task(r).await }).await?;
            let id = t.id.clone();
            if a.wait {
                if fmt == Format::Table {
                    let node = t.attempts.last().map_or("(pending)".to_string(), |a| format!("node {}", a.node));
                    eprintln!("{id} {node}");
                }
                return wait(&mut conn, fmt, &id, Duration::from_secs(8 * 24 * 3600)).await;
            }
            let out = task_out(t);
            emit(fmt, &out, || detail(&out));
        }
        TaskCmd::Get { id, stale } => {
            let out = task_out(get(&mut conn, &id, stale).await?);
            emit(fmt, &out, || detail(&out));
        }
        TaskCmd::List { state, limit } => {
            let req = v1::ListTasksRequest {
                state: state.unwrap_or_default(),
                start_after: String::new(),
                limit,
                read: Some(ReadOptions { stale: false }),
            };
            let r = conn.read(req, |ch, r| async move { client(ch).list_tasks(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                tasks: Vec<TaskOut>,
                more: bool,
            }
            let out = Out { tasks: r.tasks.into_iter().map(task_out).collect(), more: r.more };
            emit(fmt, &out, || table(&out.tasks));
        }
        TaskCmd::Logs { id, stderr, attempt } => {
            use std::io::Write;
            let req = v1::TaskLogsRequest { id, attempt, stderr, offset: 0 };
            let mut stream = conn.read(req, |ch, r| async move { client(ch).task_logs(r).await }).await?;
            let mut out = std::io::stdout().lock();
            loop {
                match stream.message().await {
                    Ok(Some(chunk)) => out.write_all(&chunk.data)?,
                    Ok(None) => break,
                    Err(s) => anyhow::bail!("{}", s.message()),
                }
            }
            out.flush()?;
        }
        TaskCmd::Cancel { id } => {
            let req = v1::TaskIdRequest { id, read: None };
            let t = conn.write(req, |ch, r| async move { client(ch).cancel_task(r).await }).await?;
            let out = task_out(t);
            emit(fmt, &out, || detail(&out));
        }
        TaskCmd::Wait { id, timeout } => wait(&mut conn, fmt, &id, timeout).await?,
        TaskCmd::Prune { keep } => {
            let req = v1::PruneTasksRequest { keep };
            let r = conn.write(req, |ch, r| async move { client(ch).prune_tasks(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                pruned: u64,
            }
            emit(fmt, &Out { pruned: r.pruned }, || format!("pruned {} finished tasks\n", r.pruned));
        }
    }
    Ok(())
}
