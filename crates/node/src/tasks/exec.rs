//! Running one attempt: the [`Executor`] boundary and its real implementation, a child process
//! in its own process group, environment cleared except `PATH` and the task's own, working
//! directory `<attempt dir>/work`, stdout and stderr to bounded files (with a truncation
//! marker), SIGTERM to the group on timeout or cancel and SIGKILL after a grace period (at once
//! when fenced, so that it is gone before the cluster runs the task elsewhere); held to
//! its vCPUs and memory as [`super::limits`] says (a cgroup, or rlimits), an OOM kill reported
//! as `Oom`.

use std::path::PathBuf;
use std::time::Duration;

#[cfg(not(madsim))]
use blixard_core::task::MAX_TAIL;
use blixard_core::{AttemptResult, Enforcement, TaskSpec};
use futures::future::BoxFuture;
#[cfg(not(madsim))]
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::limits::Plan;

/// Each output file's bound.
pub const OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// What ends an output file cut at its bound.
pub const TRUNCATED: &str = "\n[blixard: output truncated: the limit is reached]\n";
/// Time a process group has between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// Why an attempt must stop before it ends on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    Run,
    /// The user cancelled the task.
    Cancel,
    /// The node lost its lease, or the attempt is no longer the task's current one.
    Fence,
}

/// One attempt to run.
#[derive(Clone, Debug)]
pub struct Job {
    pub spec: TaskSpec,
    /// The attempt's directory (created by the executor): `work/`, `stdout`, `stderr`.
    pub dir: PathBuf,
}

/// How it ended, with the last bytes of each stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub result: AttemptResult,
    pub stdout_tail: Vec<u8>,
    pub stderr_tail: Vec<u8>,
}

/// Runs attempts: the real process executor here, a simulated one for the simulator.
pub trait Executor: Send + Sync + 'static {
    /// How it will hold `spec` to its resources (reported when the attempt starts).
    fn enforcement(&self, spec: &TaskSpec) -> Enforcement;

    /// Runs `job` to its end; `stop` changing from [`Stop::Run`] stops it. Whatever goes wrong
    /// is in the result (`StartFailed`), never a panic.
    fn run(&self, job: Job, stop: watch::Receiver<Stop>) -> BoxFuture<'static, Finished>;
}

/// An executor handed to the node instead of real processes ([`crate::NodeConfig::task_executor`]):
/// the simulation's fake.
#[derive(Clone)]
pub struct Injected(pub std::sync::Arc<dyn Executor>);

impl std::fmt::Debug for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Injected(task executor)")
    }
}

/// Real processes.
#[derive(Clone, Debug)]
pub struct ProcessExecutor {
    pub output_limit: u64,
    pub grace: Duration,
    /// The `PATH` tasks get (the daemon's own).
    pub path: String,
    /// How attempts are held to their resources ([`super::limits::detect`] on a node).
    pub limits: Plan,
}

impl Default for ProcessExecutor {
    fn default() -> Self {
        ProcessExecutor {
            output_limit: OUTPUT_LIMIT,
            grace: GRACE,
            path: std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
            limits: Plan::None,
        }
    }
}

#[cfg(not(madsim))]
fn start_failed(error: String) -> Finished {
    let mut error = error;
    error.truncate(blixard_core::task::MAX_ERROR_LEN);
    Finished { result: AttemptResult::StartFailed { error }, stdout_tail: Vec::new(), stderr_tail: Vec::new() }
}

#[cfg(not(madsim))]
/// Copies `from` into `file` up to `limit` bytes (then the marker, and the rest is drained),
/// returning the last [`MAX_TAIL`] bytes of the whole stream.
pub(crate) async fn copy_bounded(mut from: impl AsyncRead + Unpin, file: PathBuf, limit: u64) -> Vec<u8> {
    let mut out = match tokio::fs::File::create(&file).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("cannot create {}: {e}", file.display());
            None
        }
    };
    let mut written = 0u64;
    let mut marked = false;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        tail.extend_from_slice(chunk);
        if tail.len() > 2 * MAX_TAIL {
            tail.drain(..tail.len() - MAX_TAIL);
        }
        if let Some(f) = out.as_mut() {
            let room = limit.saturating_sub(written) as usize;
            let take = room.min(n);
            if take > 0 && f.write_all(&chunk[..take]).await.is_err() {
                out = None;
                continue;
            }
            written += take as u64;
            if take < n && !marked {
                marked = true;
                let _ = f.write_all(TRUNCATED.as_bytes()).await;
            }
        }
    }
    if let Some(mut f) = out {
        let _ = f.flush().await;
    }
    let cut = tail.len().saturating_sub(MAX_TAIL);
    tail.split_off(cut)
}

#[cfg(not(madsim))]
fn signal_group(pgid: u32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// The process group of the attempt in `dir` while its leader still runs there: the id in its
/// `pgid` file, checked against `/proc` (the leader's working directory is the attempt's), so a
/// reused id never names another process.
#[cfg(not(madsim))]
pub fn live_group(dir: &std::path::Path) -> Option<u32> {
    let pgid = std::fs::read_to_string(dir.join(PGID_FILE)).ok()?.trim().parse::<u32>().ok().filter(|p| *p > 1)?;
    let cwd = std::fs::read_link(format!("/proc/{pgid}/cwd")).ok()?;
    let work = std::fs::canonicalize(dir.join("work")).ok()?;
    cwd.starts_with(&work).then_some(pgid)
}

/// The cgroup of the attempt in `dir`, from its `cgroup` file, while that exists.
#[cfg(not(madsim))]
pub fn attempt_cgroup(dir: &std::path::Path) -> Option<super::limits::Cgroup> {
    super::limits::Cgroup::from_file(&std::fs::read_to_string(dir.join(CGROUP_FILE)).ok()?)
}

/// Kills what is left of the attempt in `dir` (after a daemon restart, or by the watchdog when
/// the lease ran out without a daemon): its cgroup's processes, whichever group they are in,
/// and its process group; then removes the cgroup. Returns whether anything was killed.
#[cfg(not(madsim))]
pub fn kill_leftover(dir: &std::path::Path) -> bool {
    let mut killed = false;
    if let Some(pgid) = live_group(dir) {
        signal_group(pgid, rustix::process::Signal::KILL);
        killed = true;
    }
    if let Some(cg) = attempt_cgroup(dir) {
        killed |= super::limits::kill(&cg);
        super::limits::remove(&cg);
        forget(&dir.join(CGROUP_FILE));
    }
    killed
}

/// The attempt directories under `tasks_dir` whose process group still runs, or whose cgroup
/// is still there.
#[cfg(not(madsim))]
pub fn live_attempts(tasks_dir: &std::path::Path) -> Vec<PathBuf> {
    let Ok(dirs) = std::fs::read_dir(tasks_dir) else { return Vec::new() };
    dirs.flatten()
        .map(|d| d.path())
        .filter(|d| live_group(d).is_some() || attempt_cgroup(d).is_some_and(|c| c.dirs.iter().any(|p| p.exists())))
        .collect()
}

/// The file in an attempt's directory naming its cgroup (see [`super::limits::Cgroup`]).
pub const CGROUP_FILE: &str = "cgroup";
/// The file in an attempt's directory holding its process group id while it runs.
pub const PGID_FILE: &str = "pgid";

/// Makes the attempt's working directory and, under a cgroup plan, its cgroup with the task's
/// limits, recorded in the attempt's [`CGROUP_FILE`] before any process exists (so a daemon
/// restarted after any crash finds it). One trip to the blocking pool per attempt.
#[cfg(not(madsim))]
fn set_up(
    plan: &Plan,
    dir: &std::path::Path,
    vcpus: u32,
    memory_mib: u32,
) -> Result<Option<super::limits::Cgroup>, String> {
    use super::limits;
    let work = dir.join("work");
    std::fs::create_dir_all(&work).map_err(|e| format!("cannot create {}: {e}", work.display()))?;
    if !matches!(plan, Plan::V1 { .. } | Plan::V2 { .. }) {
        return Ok(None);
    }
    let cg = limits::create(plan, &limits::leaf_name(dir), vcpus, memory_mib)
        .map_err(|e| format!("cannot set up its cgroup: {e}"))?;
    if let Err(e) = std::fs::write(dir.join(CGROUP_FILE), cg.to_file()) {
        limits::remove(&cg);
        return Err(format!("cannot record its cgroup: {e}"));
    }
    Ok(Some(cg))
}

/// Empties and removes the attempt's cgroup, if any, and forgets the file naming it.
#[cfg(not(madsim))]
fn tear_down(cg: Option<super::limits::Cgroup>, dir: &std::path::Path) {
    if let Some(cg) = cg {
        super::limits::remove(&cg);
        forget(&dir.join(CGROUP_FILE));
    }
}

/// Empties `file` where it exists: an empty [`CGROUP_FILE`] or [`PGID_FILE`] names nothing.
/// Emptied rather than removed: ext4 without a journal passes over every inode deleted in the
/// last 5–10 s when it allocates one, reading each from disk, so two files unlinked per attempt
/// made every file the next attempts create cost more the faster attempts ran (a fifth of the
/// daemons' CPU at ~100 tasks/s on such a host).
#[cfg(not(madsim))]
fn forget(file: &std::path::Path) {
    let _ = std::fs::OpenOptions::new().write(true).truncate(true).open(file);
}

/// Makes the child join its cgroup (writing itself into each `cgroup.procs`) and take its
/// rlimit before it execs the task's program, so nothing it runs escapes them.
#[cfg(not(madsim))]
#[allow(unsafe_code)]
fn limit_before_exec(cmd: &mut tokio::process::Command, procs: Vec<std::ffi::CString>, rlimit_as: Option<u64>) {
    use rustix::fs::{Mode, OFlags};
    use rustix::process::{Resource, Rlimit};
    // SAFETY: the closure runs in the forked child between fork and exec, where only
    // async-signal-safe work is allowed: it makes system calls (open, write, close, prlimit)
    // on data prepared before the fork, and neither allocates nor takes a lock.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = rustix::fs::open(p.as_c_str(), OFlags::WRONLY | OFlags::CLOEXEC, Mode::empty())?;
                rustix::io::write(&fd, b"0")?;
            }
            if let Some(b) = rlimit_as {
                rustix::process::setrlimit(Resource::As, Rlimit { current: Some(b), maximum: Some(b) })?;
            }
            Ok(())
        });
    }
}

/// How often a running attempt's cgroup is checked for an OOM kill.
#[cfg(not(madsim))]
const OOM_POLL: Duration = Duration::from_millis(200);

/// Why the wait for the child ended.
#[cfg(not(madsim))]
enum Ended {
    Exited(std::io::Result<std::process::ExitStatus>),
    Stop(Stop),
    TimedOut,
    Oom,
}

#[cfg(not(madsim))]
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

#[cfg(not(madsim))]
impl ProcessExecutor {
    async fn go(self, job: Job, mut stop: watch::Receiver<Stop>) -> Finished {
        use std::os::unix::process::ExitStatusExt;
        use std::process::Stdio;

        use super::limits;
        let t0 = tokio::time::Instant::now();
        let work = job.dir.join("work");
        let spec = &job.spec;
        let (plan, dir, vcpus, mem) = (self.limits.clone(), job.dir.clone(), spec.vcpus, spec.memory_mib);
        let cgroup = match blocking(move || set_up(&plan, &dir, vcpus, mem)).await {
            Some(Ok(cg)) => cg,
            Some(Err(e)) => return start_failed(e),
            None => return start_failed("cannot set up its directory and cgroup".into()),
        };
        let t_setup = t0.elapsed();
        // Under cgroup v1 the child is started without a fork of the daemon (see
        // [`super::spawn`]): that needs the program as a path (a name is looked up in the
        // task's PATH here; one found nowhere is left to fail as before).
        let v1 = cgroup.as_ref().and_then(limits::v1_thread_files);
        let program = v1.as_ref().and_then(|_| match spec.command.contains('/') {
            true => Some(PathBuf::from(&spec.command)),
            false => super::spawn::resolve(&spec.command, &self.path),
        });
        let mut cmd = match &program {
            Some(p) => {
                let mut c = tokio::process::Command::new(p);
                c.arg0(&spec.command);
                c
            }
            None => tokio::process::Command::new(&spec.command),
        };
        cmd.args(&spec.args)
            .env_clear()
            .env("PATH", &self.path)
            .envs(&spec.env)
            .current_dir(&work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let procs: Vec<std::ffi::CString> = cgroup
            .iter()
            .flat_map(limits::procs_files)
            .filter_map(|p| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).ok())
            .collect();
        let rlimit_as = self.limits.rlimit_as(spec.memory_mib);
        let spawned = match (program, v1) {
            (Some(_), Some((into, home))) => super::spawn::on_spawner(move || {
                match super::spawn::spawn_in_v1(&into, &home, || cmd.spawn()) {
                    // A script without `#!`: `posix_spawn` does not run it, `execvp` hands it to
                    // `sh` (as the task ran before): that path, then.
                    Ok(Err(e)) if e.raw_os_error() == Some(rustix::io::Errno::NOEXEC.raw_os_error()) => {
                        limit_before_exec(&mut cmd, procs, rlimit_as);
                        cmd.spawn()
                    }
                    Ok(r) => r,
                    Err(e) => {
                        // The thread could not join the cgroup: the child joins it before exec.
                        tracing::warn!("spawning without a fork failed ({e}): forking instead");
                        limit_before_exec(&mut cmd, procs, rlimit_as);
                        cmd.spawn()
                    }
                }
            })
            .await
            .unwrap_or_else(|| Err(std::io::Error::other("the task-spawner thread is gone"))),
            _ => {
                if !procs.is_empty() || rlimit_as.is_some() {
                    limit_before_exec(&mut cmd, procs, rlimit_as);
                }
                cmd.spawn()
            }
        };
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let dir = job.dir.clone();
                blocking(move || tear_down(cgroup, &dir)).await;
                return start_failed(format!("cannot start {:?}: {e}", spec.command));
            }
        };
        let t_spawned = t0.elapsed();
        let pgid = child.id().unwrap_or(0);
        let _ = tokio::fs::write(job.dir.join(PGID_FILE), pgid.to_string()).await;
        let out = child.stdout.take().map(|o| tokio::spawn(copy_bounded(o, job.dir.join("stdout"), self.output_limit)));
        let err = child.stderr.take().map(|e| tokio::spawn(copy_bounded(e, job.dir.join("stderr"), self.output_limit)));
        let timeout = tokio::time::sleep(Duration::from_millis(spec.timeout_ms));
        tokio::pin!(timeout);
        let oom_watch = async {
            match &cgroup {
                // An OOM kill ends the whole attempt (v2 kills the whole cgroup itself with
                // memory.oom.group; v1 kills one process, and the rest are killed here).
                Some(cg) => loop {
                    tokio::time::sleep(OOM_POLL).await;
                    if limits::oom_kills(cg) > 0 {
                        break;
                    }
                },
                None => futures::future::pending::<()>().await,
            }
        };
        let ended = tokio::select! {
            s = child.wait() => Ended::Exited(s),
            _ = &mut timeout => Ended::TimedOut,
            _ = oom_watch => Ended::Oom,
            _ = async { while *stop.borrow_and_update() == Stop::Run { if stop.changed().await.is_err() { futures::future::pending::<()>().await } } } => Ended::Stop(*stop.borrow()),
        };
        let mut result = match ended {
            Ended::Exited(status) => match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => AttemptResult::Exited { code },
                    (None, Some(signal)) => AttemptResult::Signaled { signal },
                    (None, None) => AttemptResult::Exited { code: -1 },
                },
                Err(e) => AttemptResult::StartFailed { error: format!("cannot wait for it: {e}") },
            },
            // Fenced (the lease ran out, or the attempt is no longer current): the cluster
            // will soon run the task elsewhere, so no grace: SIGKILL now, cgroup and all.
            Ended::Stop(Stop::Fence) => {
                signal_group(pgid, rustix::process::Signal::KILL);
                if let Some(cg) = cgroup.clone() {
                    blocking(move || limits::kill(&cg)).await;
                }
                let _ = child.wait().await;
                AttemptResult::Cancelled { killed: true }
            }
            Ended::Oom => {
                signal_group(pgid, rustix::process::Signal::KILL);
                if let Some(cg) = cgroup.clone() {
                    blocking(move || limits::kill(&cg)).await;
                }
                let _ = child.wait().await;
                AttemptResult::Oom
            }
            Ended::TimedOut | Ended::Stop(_) => {
                signal_group(pgid, rustix::process::Signal::TERM);
                let killed = match tokio::time::timeout(self.grace, child.wait()).await {
                    Ok(_) => false,
                    Err(_) => {
                        signal_group(pgid, rustix::process::Signal::KILL);
                        let _ = child.wait().await;
                        true
                    }
                };
                match ended {
                    Ended::Stop(_) => AttemptResult::Cancelled { killed },
                    _ => AttemptResult::TimedOut { killed },
                }
            }
        };
        // A process of the attempt killed by the kernel for memory makes the result `oom`,
        // whatever the main process did after (a shell goes on after a killed command).
        if let Some(cg) = &cgroup {
            if matches!(result, AttemptResult::Exited { .. } | AttemptResult::Signaled { .. })
                && limits::oom_kills(cg) > 0
            {
                result = AttemptResult::Oom;
            }
        }
        // Whatever the task left behind in its group or its cgroup ends with it (and lets go of
        // the pipes); then its cgroup goes.
        let t_ended = t0.elapsed();
        signal_group(pgid, rustix::process::Signal::KILL);
        let dir = job.dir.clone();
        blocking(move || {
            tear_down(cgroup, &dir);
            forget(&dir.join(PGID_FILE));
        })
        .await;
        let tail = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
            match h {
                Some(h) => {
                    tokio::time::timeout(Duration::from_secs(5), h).await.ok().and_then(Result::ok).unwrap_or_default()
                }
                None => Vec::new(),
            }
        };
        let stdout_tail = tail(out).await;
        let stderr_tail = tail(err).await;
        tracing::debug!(
            dir = %job.dir.display(),
            set_up_us = t_setup.as_micros() as u64,
            spawned_us = t_spawned.as_micros() as u64,
            ended_us = t_ended.as_micros() as u64,
            done_us = t0.elapsed().as_micros() as u64,
            "attempt stages"
        );
        Finished { result, stdout_tail, stderr_tail }
    }
}

#[cfg(not(madsim))]
impl Executor for ProcessExecutor {
    fn enforcement(&self, _spec: &TaskSpec) -> Enforcement {
        self.limits.enforcement()
    }

    fn run(&self, job: Job, stop: watch::Receiver<Stop>) -> BoxFuture<'static, Finished> {
        Box::pin(self.clone().go(job, stop))
    }
}
