//! `--isolation vm`: each attempt runs in a throwaway QEMU `microvm` booted from the default
//! guest image in task mode, and the VM is destroyed when the attempt ends, however it ends.
//!
//! The attempt directory holds what a process attempt's does (`stdout`, `stderr`, `work/`,
//! `pgid`) plus `console` (the guest's serial console, bounded) and `qemu.stderr`; while the VM
//! runs, also `initrd.img` (the image's initramfs with the task appended, mode 0600) and the
//! sockets QEMU connects to. See [`guest`] for how the task gets in and its results get out.
//!
//! QEMU runs with the attempt's `work/` as its working directory, as the leader of its own
//! process group whose id is in `pgid`, so the daemon after a restart and the fencing watchdog
//! find and kill it exactly as they do a process attempt's group. Besides, it is started under
//! `setpriv --pdeathsig KILL` (when the host has it) by a thread that lives as long as it does,
//! so a daemon that dies takes its task VMs with it at once. The VM's process is killed through
//! a pidfd (never a pid that may have been reused) when the attempt ends, and when the future
//! running it is dropped.
//!
//! Semantics next to the process executor: the timeout counts from the attempt's start, boot
//! included; on timeout or cancel the VM is killed at once (there is no SIGTERM to the task and
//! no grace: nothing in the VM outlives it), so `killed` is always true. A signal inside the
//! guest shows as exit status 128+N (the guest's shell reports it so).

pub mod guest;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use blixard_core::{AttemptResult, Enforcement, Isolation, TaskSpec};
use blixard_vmm::image::GuestImage;
use blixard_vmm::Accel;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch, OnceCell};
use tokio::time::Instant;

use self::guest::{EndOfStream, Report, VmFiles};
use super::exec::{copy_bounded, Executor, Finished, Job, Stop, OUTPUT_LIMIT};

/// The serial console log's bound (kernel messages and reports; the task's output is not there).
pub const CONSOLE_LIMIT: u64 = 1024 * 1024;
/// After the exit report, how long the host waits for the rest of the output.
const DRAIN: Duration = Duration::from_secs(5);
/// How long the guest has between its boot marker and the task's start report: an image
/// without task mode boots to a shell instead, and must not hold the attempt until its timeout.
const START_AFTER_BOOT: Duration = Duration::from_secs(30);
/// How long a killed QEMU has to be reaped, and its streams to close.
const REAP: Duration = Duration::from_secs(10);
/// Longest path a unix socket address holds (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Runs each attempt with the executor for its isolation.
pub struct ByIsolation {
    pub process: Arc<dyn Executor>,
    pub vm: Arc<dyn Executor>,
}

impl Executor for ByIsolation {
    fn enforcement(&self, spec: &TaskSpec) -> Enforcement {
        match spec.isolation {
            Isolation::Process => self.process.enforcement(spec),
            Isolation::Vm => self.vm.enforcement(spec),
        }
    }

    fn run(&self, job: Job, stop: watch::Receiver<Stop>) -> BoxFuture<'static, Finished> {
        match job.spec.isolation {
            Isolation::Process => self.process.run(job, stop),
            Isolation::Vm => self.vm.run(job, stop),
        }
    }
}

/// What every task VM boots: found (built if need be) on the first VM attempt.
#[derive(Clone, Debug)]
struct Boot {
    image: GuestImage,
    accel: Accel,
    tsc_khz: Option<u64>,
    /// `setpriv`, when it knows `--pdeathsig`.
    setpriv: Option<PathBuf>,
}

/// Runs attempts in throwaway microVMs.
#[derive(Clone)]
pub struct VmExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    /// The node's image cache: the default image is `<cache>/default`, the accelerator verdict
    /// is cached in `<cache>` (the QEMU backend's own).
    image_cache: PathBuf,
    qemu: PathBuf,
    output_limit: u64,
    boot: OnceCell<Boot>,
}

impl VmExecutor {
    pub fn new(image_cache: PathBuf) -> Self {
        VmExecutor {
            inner: Arc::new(Inner {
                image_cache,
                qemu: "qemu-system-x86_64".into(),
                output_limit: OUTPUT_LIMIT,
                boot: OnceCell::new(),
            }),
        }
    }
}

impl Executor for VmExecutor {
    fn enforcement(&self, _spec: &TaskSpec) -> Enforcement {
        Enforcement::Vm
    }

    fn run(&self, job: Job, stop: watch::Receiver<Stop>) -> BoxFuture<'static, Finished> {
        Box::pin(self.inner.clone().go(job, stop))
    }
}

fn truncated(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

fn failed(error: String) -> Finished {
    let error = truncated(error, blixard_core::task::MAX_ERROR_LEN);
    Finished { result: AttemptResult::StartFailed { error }, stdout_tail: Vec::new(), stderr_tail: Vec::new() }
}

/// The last `max` bytes of a file, as one line of printable text (for error messages).
fn file_tail(path: &Path, max: usize) -> String {
    let b = std::fs::read(path).unwrap_or_default();
    let s = String::from_utf8_lossy(&b[b.len().saturating_sub(max)..]).replace(|c: char| c.is_control(), " ");
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Resolves once `stop` asks the attempt to stop.
async fn stopped(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let s = *stop.borrow_and_update();
        if s != Stop::Run {
            return s;
        }
        if stop.changed().await.is_err() {
            futures::future::pending::<()>().await;
        }
    }
}

/// The VM's QEMU: killed through its pidfd when dropped (also when the attempt's future is).
struct Vm {
    pid: u32,
    pidfd: OwnedFd,
    exited: oneshot::Receiver<io::Result<std::process::ExitStatus>>,
}

impl Vm {
    fn kill(&self) {
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts QEMU from a thread of its own that then waits for it: with `setpriv --pdeathsig`,
/// the kernel kills QEMU when the thread that forked it exits, so that thread must live exactly
/// as long as QEMU (it does: it only waits), and a daemon that dies kills its VMs.
async fn spawn_qemu(boot: &Boot, qemu: &Path, argv: Vec<String>, work: &Path, stderr: std::fs::File) -> io::Result<Vm> {
    use std::os::unix::process::CommandExt;
    let mut cmd = match &boot.setpriv {
        Some(setpriv) => {
            let mut c = std::process::Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(qemu);
            c
        }
        None => std::process::Command::new(qemu),
    };
    cmd.args(argv)
        .current_dir(work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .process_group(0);
    let (started_tx, started_rx) = oneshot::channel();
    let (exited_tx, exited) = oneshot::channel();
    std::thread::Builder::new().name("task-vm".into()).spawn(move || {
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = started_tx.send(Err(e));
                return;
            }
        };
        let pid = child.id();
        // Opened before the child can be reaped, so it can only ever name this process.
        let pidfd = rustix::process::Pid::from_raw(pid as i32).ok_or_else(|| io::Error::other("pid 0")).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(io::Error::from)
        });
        let failed = pidfd.is_err();
        let _ = started_tx.send(pidfd.map(|fd| (pid, fd)));
        if failed {
            let _ = child.kill();
        }
        let _ = exited_tx.send(child.wait());
    })?;
    let (pid, pidfd) = started_rx.await.map_err(|_| io::Error::other("the QEMU thread ended"))??;
    Ok(Vm { pid, pidfd, exited })
}

/// A task stream up to its trailer: reads end (EOF) at the trailer, or when the socket closes.
struct UntilEnd<R> {
    inner: R,
    end: EndOfStream,
    ready: Vec<u8>,
    pos: usize,
    done: bool,
    buf: Box<[u8]>,
}

impl<R> UntilEnd<R> {
    fn new(inner: R, trailer: Vec<u8>) -> Self {
        UntilEnd {
            inner,
            end: EndOfStream::new(trailer),
            ready: Vec::new(),
            pos: 0,
            done: false,
            buf: vec![0; 64 * 1024].into_boxed_slice(),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for UntilEnd<R> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            if me.pos < me.ready.len() {
                let n = out.remaining().min(me.ready.len() - me.pos);
                out.put_slice(&me.ready[me.pos..me.pos + n]);
                me.pos += n;
                return Poll::Ready(Ok(()));
            }
            if me.done {
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut me.buf);
            let n = match Pin::new(&mut me.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => rb.filled().len(),
                Poll::Ready(Err(_)) => 0,
            };
            me.pos = 0;
            if n == 0 {
                me.ready = me.end.finish();
                me.done = true;
            } else {
                let (bytes, ended) = me.end.feed(rb.filled());
                me.ready = bytes;
                me.done = ended;
            }
        }
    }
}

/// Accepts the stream's connection from QEMU and copies it, bounded, to `file` up to its
/// trailer (or until QEMU closes it); returns the tail.
async fn stream(listener: UnixListener, file: PathBuf, limit: u64, trailer: Vec<u8>) -> Vec<u8> {
    let Ok((sock, _)) = listener.accept().await else { return Vec::new() };
    copy_bounded(UntilEnd::new(sock, trailer), file, limit).await
}

/// What the console tells the executor.
enum Seen {
    /// The guest's init printed its boot marker.
    Booted,
    Report(Report),
}

/// Accepts the console's connection, keeps its bytes (bounded) in `log`, and sends the boot
/// marker and every report carrying `nonce`.
async fn console(listener: UnixListener, log: PathBuf, nonce: String, tx: mpsc::UnboundedSender<Seen>) {
    let Ok((mut sock, _)) = listener.accept().await else { return };
    let mut file = tokio::fs::File::create(&log).await.ok();
    let mut written = 0u64;
    let mut lines = guest::Lines::default();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if let Some(f) = file.as_mut() {
            let take = (CONSOLE_LIMIT.saturating_sub(written) as usize).min(n);
            if take > 0 && f.write_all(&chunk[..take]).await.is_err() {
                file = None;
            }
            written += take as u64;
        }
        lines.feed(chunk, |line| {
            if let Some(r) = guest::parse_report(line, &nonce) {
                let _ = tx.send(Seen::Report(r));
            } else if line.starts_with(blixard_vmm::BOOT_MARKER.as_bytes()) {
                let _ = tx.send(Seen::Booted);
            }
        });
    }
    if let Some(mut f) = file {
        let _ = f.flush().await;
    }
}

/// How the running phase ended.
enum Outcome {
    Exited(i32),
    /// The guest could not run the task (its reason).
    GuestError(String),
    QemuExited(String),
    /// The guest booted and did not start the task.
    NoStart,
    TimedOut,
    Stopped,
}

/// Everything an attempt needs before QEMU starts.
struct Prepared {
    dir: PathBuf,
    nonce: String,
    files: VmFiles,
    listeners: [UnixListener; 3],
}

impl Inner {
    async fn boot(&self) -> Result<Boot, String> {
        let cache = self.image_cache.clone();
        self.boot
            .get_or_try_init(|| async move {
                let dir = cache.join("default");
                let image = tokio::task::spawn_blocking(move || blixard_vmm::image::ensure_image(&dir))
                    .await
                    .map_err(|e| format!("the guest image build panicked: {e}"))?
                    .map_err(|e| format!("cannot build the guest image: {}", crate::status::chain(&e)))?;
                let verdict = blixard_vmm::accel::select(&image, &cache)
                    .await
                    .map_err(|e| format!("cannot choose an accelerator: {}", crate::status::chain(&e)))?;
                let setpriv = tokio::task::spawn_blocking(blixard_vmm::accel::pdeathsig_wrapper).await.ok().flatten();
                if setpriv.is_none() {
                    tracing::info!(
                        "setpriv --pdeathsig is not available: a task VM of a killed daemon dies by its fencing watchdog"
                    );
                }
                let tsc_khz = blixard_vmm::qemu::args::host_tsc_khz();
                Ok::<_, String>(Boot { image, accel: verdict.accel, tsc_khz, setpriv })
            })
            .await
            .cloned()
    }

    /// The attempt directory, the initramfs with the task appended, the sockets.
    async fn prepare(&self, job: &Job, boot: &Boot) -> Result<Prepared, String> {
        let work = job.dir.join("work");
        tokio::fs::create_dir_all(&work).await.map_err(|e| format!("cannot create {}: {e}", work.display()))?;
        // Absolute: QEMU runs in `work/`.
        let dir = tokio::fs::canonicalize(&job.dir)
            .await
            .map_err(|e| format!("cannot resolve {}: {e}", job.dir.display()))?;
        let files = VmFiles::in_dir(&dir, boot.image.kernel.clone());
        for p in [&files.console, &files.stdout, &files.stderr] {
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(format!(
                    "the attempt directory {} is too long for the VM's sockets (at most {MAX_SOCKET_PATH} bytes): use a shorter data dir",
                    dir.display()
                ));
            }
            let _ = std::fs::remove_file(p);
        }
        let nonce = guest::new_nonce();
        let archive = guest::archive(&job.spec, &nonce)?;
        let (base, initrd) = (boot.image.initrd.clone(), files.initrd.clone());
        tokio::task::spawn_blocking(move || write_initrd(&base, &initrd, &archive))
            .await
            .map_err(|e| format!("writing the initramfs panicked: {e}"))?
            .map_err(|e| format!("cannot write the VM's initramfs {}: {e}", files.initrd.display()))?;
        let bind = |p: &Path| UnixListener::bind(p).map_err(|e| format!("cannot listen on {}: {e}", p.display()));
        let listeners = [bind(&files.console)?, bind(&files.stdout)?, bind(&files.stderr)?];
        Ok(Prepared { dir, nonce, files, listeners })
    }

    async fn go(self: Arc<Self>, job: Job, mut stop: watch::Receiver<Stop>) -> Finished {
        let begun = Instant::now();
        let deadline = begun + Duration::from_millis(job.spec.timeout_ms);
        let boot = match self.boot().await {
            Ok(b) => b,
            Err(e) => return failed(e),
        };
        let p = match self.prepare(&job, &boot).await {
            Ok(p) => p,
            Err(e) => {
                remove_files(&VmFiles::in_dir(&job.dir, PathBuf::new())).await;
                return failed(e);
            }
        };
        let name = job.dir.file_name().map_or_else(|| "task".into(), |n| n.to_string_lossy().into_owned());
        let argv = guest::qemu_args(&job.spec, &p.files, boot.accel, boot.tsc_khz, &name);
        let stderr_path = p.dir.join("qemu.stderr");
        let stderr = match std::fs::File::create(&stderr_path) {
            Ok(f) => f,
            Err(e) => {
                remove_files(&p.files).await;
                return failed(format!("cannot create {}: {e}", stderr_path.display()));
            }
        };
        let [con_l, out_l, err_l] = p.listeners;
        let mut vm = match spawn_qemu(&boot, &self.qemu, argv, &p.dir.join("work"), stderr).await {
            Ok(vm) => vm,
            Err(e) => {
                remove_files(&p.files).await;
                return failed(format!("cannot start {}: {e}", self.qemu.display()));
            }
        };
        let _ = tokio::fs::write(p.dir.join("pgid"), vm.pid.to_string()).await;
        let (tx, mut reports) = mpsc::unbounded_channel();
        let con = tokio::spawn(console(con_l, p.dir.join("console"), p.nonce.clone(), tx));
        let trailer = guest::trailer(&p.nonce);
        let mut out = tokio::spawn(stream(out_l, p.dir.join("stdout"), self.output_limit, trailer.clone()));
        let mut err = tokio::spawn(stream(err_l, p.dir.join("stderr"), self.output_limit, trailer));

        let mut console_open = true;
        let mut exited = false;
        let mut started = None;
        let mut start_by = None;
        let outcome = loop {
            tokio::select! {
                r = reports.recv(), if console_open => match r {
                    Some(Seen::Booted) => {
                        start_by.get_or_insert_with(|| Instant::now() + START_AFTER_BOOT);
                    }
                    Some(Seen::Report(Report::Start)) => {
                        started.get_or_insert_with(Instant::now);
                    }
                    Some(Seen::Report(Report::Exit(code))) => break Outcome::Exited(code),
                    Some(Seen::Report(Report::Error(e))) => break Outcome::GuestError(e),
                    None => console_open = false,
                },
                _ = tokio::time::sleep_until(start_by.unwrap_or(deadline)), if start_by.is_some() && started.is_none() => {
                    break Outcome::NoStart;
                }
                st = &mut vm.exited => {
                    exited = true;
                    let st = st.map_or_else(|_| "unknown status".to_string(), |s| s.map_or_else(|e| e.to_string(), |s| s.to_string()));
                    break Outcome::QemuExited(st);
                }
                _ = tokio::time::sleep_until(deadline) => break Outcome::TimedOut,
                _ = stopped(&mut stop) => break Outcome::Stopped,
            }
        };
        if let Some(at) = started {
            tracing::debug!(
                vm_ms = (at - begun).as_millis() as u64,
                run_ms = at.elapsed().as_millis() as u64,
                "task VM"
            );
        }
        let mut tails = None;
        if let Outcome::Exited(_) | Outcome::GuestError(_) = outcome {
            // The guest wrote its trailers before the report: wait for QEMU to pass the rest on.
            if let Ok((o, e)) = tokio::time::timeout(DRAIN, futures::future::join(&mut out, &mut err)).await {
                tails = Some((o.unwrap_or_default(), e.unwrap_or_default()));
            } else {
                tracing::warn!(dir = %p.dir.display(), "the task VM's output did not end within {DRAIN:?}: it may be incomplete");
            }
        }
        vm.kill();
        let reaped = exited || tokio::time::timeout(REAP, &mut vm.exited).await.is_ok();
        if !reaped {
            tracing::warn!(pid = vm.pid, "a killed task VM was not reaped within {REAP:?}");
        }
        let (stdout_tail, stderr_tail) = match tails {
            Some(t) => t,
            None => {
                let both = tokio::time::timeout(REAP, futures::future::join(&mut out, &mut err)).await;
                both.map(|(o, e)| (o.unwrap_or_default(), e.unwrap_or_default())).unwrap_or_default()
            }
        };
        out.abort();
        err.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), con).await;
        if reaped {
            let _ = tokio::fs::remove_file(p.dir.join("pgid")).await;
        }
        remove_files(&p.files).await;
        let console_tail = |max| file_tail(&p.dir.join("console"), max);
        let error = match outcome {
            Outcome::Exited(code) => Ok(AttemptResult::Exited { code }),
            Outcome::TimedOut => Ok(AttemptResult::TimedOut { killed: true }),
            Outcome::Stopped => Ok(AttemptResult::Cancelled { killed: true }),
            Outcome::GuestError(e) if e == "notfound" => {
                Err(format!("cannot start {:?} in the VM: no such program in the guest image", job.spec.command))
            }
            Outcome::GuestError(e) => Err(format!("the VM could not run the task: {e}")),
            Outcome::QemuExited(st) => Err(format!(
                "the VM ended before the task {} (QEMU: {st}; {}; console: {})",
                if started.is_some() { "reported its exit" } else { "started" },
                file_tail(&stderr_path, 300),
                console_tail(400)
            )),
            Outcome::NoStart => Err(format!(
                "the VM booted but did not start the task within {START_AFTER_BOOT:?}: is its guest image one without task mode? (console: {})",
                console_tail(300)
            )),
        };
        let result = error
            .unwrap_or_else(|e| AttemptResult::StartFailed { error: truncated(e, blixard_core::task::MAX_ERROR_LEN) });
        Finished { result, stdout_tail, stderr_tail }
    }
}

/// Removes the attempt's copy of the initramfs (2-3 MB) and its sockets.
async fn remove_files(f: &VmFiles) {
    for f in [&f.initrd, &f.console, &f.stdout, &f.stderr] {
        let _ = tokio::fs::remove_file(f).await;
    }
}

/// `initrd`: a copy of `base` (mode 0600: the task's environment is in it), zero padding to a
/// 4-byte boundary, then `archive`.
fn write_initrd(base: &Path, initrd: &Path, archive: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::File::open(base)?;
    let mut dst = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(initrd)?;
    let n = io::copy(&mut src, &mut dst)?;
    dst.write_all(&vec![0u8; guest::appended_at(n)])?;
    dst.write_all(archive)?;
    dst.flush()
}
