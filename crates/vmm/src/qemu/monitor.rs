//! One task per running VM: owns its QMP connection (QEMU serves one client at a time), notices
//! the process exit, classifies it, watches the console for the boot marker and rotates the log.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, Mutex};
use tokio::task::JoinHandle;

use super::args::VmPaths;
use super::qmp::{self, Message, Qmp};
use super::state::{self, ExitRecord, RunFile};
use crate::{now_ms, Accel, Result, VmmError, BOOT_MARKER};

/// The observed state of one run, published through a `watch` channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    pub pid: u32,
    /// The directory named on the process's command line: where it was started, which is not
    /// its directory any more once a legacy directory was adopted (renamed) under it.
    pub dir: PathBuf,
    pub started_at_ms: u64,
    pub accel: Accel,
    pub boot_ms: Option<u64>,
    pub console_base: u64,
    /// Set by `stop` before it acts, so the exit it causes is not reported as a failure.
    pub stop_requested: bool,
    pub exit: Option<ExitRecord>,
}

impl Live {
    pub fn run_file(&self, paths: &VmPaths) -> RunFile {
        RunFile {
            pid: Some(self.pid),
            dir: Some(self.dir.clone()),
            started_at_ms: Some(self.started_at_ms),
            accel: Some(self.accel),
            qmp: paths.qmp.display().to_string(),
            boot_ms: self.boot_ms,
            console_base: self.console_base,
            exit: self.exit.clone(),
        }
    }
}

/// The process being watched: our child, or a QEMU adopted from an earlier daemon (not our child,
/// so its exit is noticed by polling /proc).
pub enum Proc {
    Child(tokio::process::Child),
    Adopted(u32),
}

/// How the process ended, as far as we can know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
    /// Not our child: no exit status.
    Unknown,
}

/// Decides `Stopped` vs `Failed` from the QMP `SHUTDOWN` reason first (QEMU exits 0 for a guest
/// power-off, a QMP quit, SIGTERM and a panic alike), then from the exit status.
/// Returns `(failed, reason)`.
pub fn classify(shutdown: Option<&str>, ended: Ended, stop_requested: bool, stderr_tail: &str) -> (bool, String) {
    match (shutdown, ended) {
        (Some("guest-panic"), _) => (true, "guest panicked".into()),
        (Some(r @ ("guest-shutdown" | "guest-reset" | "host-qmp-quit" | "host-qmp-system-reset")), _) => {
            (false, r.to_string())
        }
        (Some(r), _) => (!stop_requested, r.to_string()),
        (None, Ended::Signal(s)) => (!stop_requested, format!("killed by signal {s}")),
        (None, Ended::Code(0)) => (!stop_requested, "exited without a shutdown event".into()),
        (None, Ended::Code(c)) if stderr_tail.is_empty() => (true, format!("exited with status {c}")),
        (None, Ended::Code(c)) => (true, format!("exited with status {c}: {stderr_tail}")),
        (None, Ended::Unknown) => (!stop_requested, "exited without a shutdown event".into()),
    }
}

/// Last non-empty line of QEMU's stderr: where it explains a failed start.
pub fn stderr_tail(paths: &VmPaths) -> String {
    let text = std::fs::read_to_string(&paths.stderr).unwrap_or_default();
    text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string()
}

pub struct Request {
    pub command: &'static str,
    pub reply: oneshot::Sender<Result<Value>>,
}

/// The driver's handle on a watched VM. Dropping it stops watching (the VM keeps running).
pub struct Handle {
    pub live: Arc<watch::Sender<Live>>,
    pub tx: mpsc::Sender<Request>,
    /// Serializes console log readers and rotation.
    pub console: Arc<Mutex<()>>,
    /// Our connection to the serial console socket, kept open for the whole run: QEMU feeds the
    /// guest only as fast as its 16-byte UART FIFO drains and drops unread input when a client
    /// hangs up, so a connect-write-close client would lose keystrokes. The monitor drains (and
    /// discards) the output side; QEMU also writes it to `console.log`.
    console_in: Mutex<Option<OwnedWriteHalf>>,
    task: JoinHandle<()>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Handle {
    pub fn snapshot(&self) -> Live {
        self.live.borrow().clone()
    }

    /// Sends a QMP command through the monitor and waits for its reply.
    pub async fn command(&self, command: &'static str) -> Result<Value> {
        let (reply, rx) = oneshot::channel();
        let closed = || VmmError::Qmp("the monitor is gone".into());
        self.tx.send(Request { command, reply }).await.map_err(|_| closed())?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| VmmError::Timeout { what: format!("QMP {command}"), after_ms: 5000 })?
            .map_err(|_| closed())?
    }

    /// Types `bytes` on the serial console.
    pub async fn console_input(&self, bytes: &[u8]) -> Result<()> {
        let mut w = self.console_in.lock().await;
        let w = w.as_mut().ok_or_else(|| VmmError::Qmp("no console connection".into()))?;
        w.write_all(bytes).await.map_err(|e| VmmError::Qmp(format!("console write failed: {e}")))
    }

    /// Waits until the run has ended; false on timeout.
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let mut rx = self.live.subscribe();
        let ended = async { rx.wait_for(|l| l.exit.is_some()).await.is_ok() };
        tokio::time::timeout(timeout, ended).await.unwrap_or(false)
    }
}

/// Connects to the serial console socket (see [`Handle`] for why the connection is kept).
pub async fn connect_console(paths: &VmPaths) -> Option<UnixStream> {
    match UnixStream::connect(&paths.console_sock).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, path = %paths.console_sock.display(), "no console connection");
            None
        }
    }
}

/// Starts watching. `qmp` is already negotiated.
pub fn spawn(
    paths: VmPaths,
    proc: Proc,
    qmp: Qmp,
    console: Option<UnixStream>,
    live: Live,
    console_cap: u64,
    changes: Arc<tokio::sync::Notify>,
) -> Handle {
    let (console_rd, console_wr) = match console.map(UnixStream::into_split) {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    let (tx, rx) = mpsc::channel(16);
    let live = Arc::new(watch::channel(live).0);
    let console = Arc::new(Mutex::new(()));
    let m = Monitor { paths, live: live.clone(), console: console.clone(), cap: console_cap, changes };
    let task = tokio::spawn(m.run(proc, qmp, console_rd, rx));
    Handle { live, tx, console, console_in: Mutex::new(console_wr), task }
}

struct Monitor {
    paths: VmPaths,
    live: Arc<watch::Sender<Live>>,
    console: Arc<Mutex<()>>,
    cap: u64,
    /// The driver's [`crate::VmDriver::changes`]: a boot or an exit was just published.
    changes: Arc<tokio::sync::Notify>,
}

async fn next_message(qmp: &mut Option<Qmp>) -> Option<Result<Message>> {
    match qmp {
        Some(q) => q.next().await.transpose(),
        None => std::future::pending().await,
    }
}

async fn read_some(rd: &mut Option<OwnedReadHalf>, buf: &mut [u8]) -> usize {
    match rd {
        Some(r) => r.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}

async fn wait_proc(proc: &mut Proc) -> Ended {
    use std::os::unix::process::ExitStatusExt;
    match proc {
        Proc::Child(c) => match c.wait().await {
            Ok(st) => st.code().map(Ended::Code).or(st.signal().map(Ended::Signal)).unwrap_or(Ended::Unknown),
            Err(_) => Ended::Unknown,
        },
        Proc::Adopted(_) => std::future::pending().await,
    }
}

impl Monitor {
    async fn run(self, mut proc: Proc, qmp: Qmp, mut console: Option<OwnedReadHalf>, mut rx: mpsc::Receiver<Request>) {
        let mut qmp = Some(qmp);
        let mut sink = vec![0u8; 16 * 1024];
        let mut pending: VecDeque<oneshot::Sender<Result<Value>>> = VecDeque::new();
        let mut shutdown: Option<String> = None;
        let mut scanned = self.live.borrow().console_base;
        let mut carry = String::new();
        // Fast ticks while waiting for the boot marker (it is the boot-time measurement), slow after.
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let mut rx_open = true;
        let ended = loop {
            tokio::select! {
                msg = next_message(&mut qmp) => match msg {
                    Some(Ok(Message::Event { event, data })) => {
                        if let Some(r) = qmp::shutdown_reason(&event, &data) {
                            shutdown = Some(r);
                        }
                    }
                    Some(Ok(Message::Return(v))) => reply(&mut pending, Ok(v)),
                    Some(Ok(Message::Error(e))) => reply(&mut pending, Err(VmmError::Qmp(e))),
                    Some(Ok(Message::Greeting(_))) => {}
                    Some(Err(_)) | None => {
                        // QEMU closes QMP when it exits: poll an adopted process's exit quickly.
                        tick = tokio::time::interval(Duration::from_millis(50));
                        qmp = None;
                        while let Some(p) = pending.pop_front() {
                            let _ = p.send(Err(VmmError::Qmp("QEMU closed the connection".into())));
                        }
                    }
                },
                req = rx.recv(), if rx_open => match (req, qmp.as_mut()) {
                    (None, _) => rx_open = false,
                    (Some(r), Some(q)) => match q.send(r.command).await {
                        Ok(()) => pending.push_back(r.reply),
                        Err(e) => { let _ = r.reply.send(Err(e)); }
                    },
                    (Some(r), None) => { let _ = r.reply.send(Err(VmmError::Qmp("QEMU closed the connection".into()))); }
                },
                n = read_some(&mut console, &mut sink) => if n == 0 { console = None },
                ended = wait_proc(&mut proc) => break ended,
                _ = tick.tick() => {
                    if let Proc::Adopted(pid) = proc {
                        if !state::process_alive(pid) {
                            break Ended::Unknown;
                        }
                    }
                    if self.live.borrow().boot_ms.is_none() {
                        if self.scan_for_marker(&mut scanned, &mut carry) {
                            tick = tokio::time::interval(Duration::from_secs(1));
                        }
                    } else {
                        self.rotate().await;
                    }
                }
            }
        };
        // QEMU sends SHUTDOWN just before exiting; the process may be reaped before we read it.
        if let Some(q) = qmp.as_mut() {
            let drain = async {
                while let Ok(Some(m)) = q.next().await {
                    if let Message::Event { event, data } = m {
                        shutdown = qmp::shutdown_reason(&event, &data).or(shutdown.take());
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
        }
        let stop_requested = self.live.borrow().stop_requested;
        let (failed, reason) = classify(shutdown.as_deref(), ended, stop_requested, &stderr_tail(&self.paths));
        if failed {
            tracing::warn!(dir = %self.paths.dir.display(), %reason, "VM failed");
        } else {
            tracing::info!(dir = %self.paths.dir.display(), %reason, "VM stopped");
        }
        for p in [&self.paths.console_sock, &self.paths.qmp, &self.paths.pidfile] {
            let _ = std::fs::remove_file(p);
        }
        // Persist before publishing: whoever waits for the exit (stop, then delete) may remove the
        // directory as soon as it is published.
        let exit = ExitRecord { failed, reason, at_ms: now_ms() };
        let run = RunFile { exit: Some(exit.clone()), ..self.live.borrow().run_file(&self.paths) };
        if let Err(e) = state::write_json(&self.paths.run, &run) {
            tracing::warn!(error = %e, "cannot record VM state");
        }
        self.live.send_modify(|l| l.exit = Some(exit));
        self.changes.notify_one();
    }

    fn persist(&self) {
        let run = self.live.borrow().run_file(&self.paths);
        if let Err(e) = state::write_json(&self.paths.run, &run) {
            tracing::warn!(error = %e, "cannot record VM state");
        }
    }

    /// Reads the console bytes not scanned yet; records `boot_ms` when the marker shows up.
    fn scan_for_marker(&self, scanned: &mut u64, carry: &mut String) -> bool {
        let base = self.live.borrow().console_base;
        let Ok(chunk) = state::read_console(&self.paths, base, *scanned, 1 << 20) else { return false };
        *scanned = chunk.next_offset;
        carry.push_str(&String::from_utf8_lossy(&chunk.data));
        if !carry.contains(BOOT_MARKER) {
            let keep = carry.len().saturating_sub(BOOT_MARKER.len());
            let cut = (keep..=carry.len()).find(|&i| carry.is_char_boundary(i)).unwrap_or(carry.len());
            carry.drain(..cut);
            return false;
        }
        self.live.send_modify(|l| l.boot_ms = Some(now_ms().saturating_sub(l.started_at_ms)));
        self.persist();
        self.changes.notify_one();
        true
    }

    async fn rotate(&self) {
        let _guard = self.console.lock().await;
        let base = self.live.borrow().console_base;
        match state::rotate_console(&self.paths, base, self.cap) {
            Ok(new) if new != base => {
                self.live.send_modify(|l| l.console_base = new);
                self.persist();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot rotate the console log"),
        }
    }
}

fn reply(pending: &mut VecDeque<oneshot::Sender<Result<Value>>>, r: Result<Value>) {
    if let Some(p) = pending.pop_front() {
        let _ = p.send(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_classified_by_shutdown_reason_first() {
        let c = |s, e, stop| classify(s, e, stop, "");
        assert_eq!(c(Some("guest-shutdown"), Ended::Code(0), false), (false, "guest-shutdown".into()));
        assert_eq!(c(Some("host-qmp-quit"), Ended::Code(0), true), (false, "host-qmp-quit".into()));
        assert_eq!(c(Some("guest-panic"), Ended::Code(1), false), (true, "guest panicked".into()));
        assert_eq!(c(Some("host-signal"), Ended::Code(0), false), (true, "host-signal".into()));
        assert_eq!(c(None, Ended::Signal(9), false), (true, "killed by signal 9".into()));
        assert_eq!(c(None, Ended::Signal(9), true), (false, "killed by signal 9".into()));
        assert!(c(None, Ended::Unknown, false).0);
        assert_eq!(
            classify(None, Ended::Code(1), false, "could not set up host forwarding rule"),
            (true, "exited with status 1: could not set up host forwarding rule".into())
        );
    }
}
