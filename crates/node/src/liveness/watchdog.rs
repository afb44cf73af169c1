//! The fencing watchdog: a small process of its own (`blixard fence-watch`) that kills this
//! node's VMs when the lease the daemon wrote to `<data-dir>/lease` runs out — for when the
//! daemon itself is gone (crashed, killed, stopped) and so cannot fence. QEMU runs in a process
//! group of its own so that a daemon restart can adopt it; without the watchdog a VM of a dead
//! daemon would run on while the cluster starts its replacement elsewhere.
//!
//! A daemon restarted before its lease runs out (2 s by default) keeps its VMs; one restarted
//! later finds them stopped and starts those still assigned to it. One watchdog runs per data
//! dir (an exclusive lock); it leaves once the daemon that started it is gone and no VM (nor
//! task attempt: `<data-dir>/tasks/*/pgid`) of the data dir runs any more.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fence::{lease_file, monotonic_ns};

const POLL: Duration = Duration::from_millis(100);

/// Starts the watchdog for `data_dir` (`exe fence-watch --data-dir D --daemon-pid P`) in a
/// process group of its own, so that signals to the daemon's group do not reach it.
pub fn spawn(exe: &Path, data_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let dir = std::fs::canonicalize(data_dir)?;
    std::process::Command::new(exe)
        .arg("fence-watch")
        .arg("--data-dir")
        .arg(&dir)
        .arg("--daemon-pid")
        .arg(std::process::id().to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .map(|_| ())
}

/// The QEMU processes of `data_dir`'s VMs: (instance dir, pid), from their pidfiles, each
/// checked against `/proc` (a pid that now names another process is skipped).
pub fn vm_processes(data_dir: &Path) -> Vec<(PathBuf, i32)> {
    let Ok(dirs) = std::fs::read_dir(data_dir.join("vmm").join("vms")) else { return Vec::new() };
    let mut out = Vec::new();
    for d in dirs.flatten() {
        let Ok(text) = std::fs::read_to_string(d.path().join("qemu.pid")) else { continue };
        let Some(pid) = text.trim().parse::<i32>().ok().filter(|p| *p > 0) else { continue };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        // The daemon may name its data dir by another path than ours: match the instance.
        let own = format!("{}/qemu.pid", d.file_name().to_string_lossy());
        if cmd.contains("qemu-system") && cmd.contains(&own) {
            out.push((d.path(), pid));
        }
    }
    out
}

/// The lease's deadline, `CLOCK_MONOTONIC` nanoseconds; `None` when no daemon ever held one.
fn deadline(data_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(lease_file(data_dir)).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            // A zombie is gone for our purpose.
            s.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
}

/// Runs the watchdog until it has nothing left to guard. Returns early (Ok) when another
/// watchdog already guards the data dir.
pub fn run(data_dir: &Path, daemon_pid: i32) -> anyhow::Result<()> {
    use rustix::fs::{flock, FlockOperation};
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(data_dir.join("fence-watch.lock"))?;
    if flock(&lock, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(());
    }
    loop {
        let vms = vm_processes(data_dir);
        let tasks = crate::tasks::exec::live_attempts(&data_dir.join("tasks"));
        if vms.is_empty() && tasks.is_empty() && !alive(daemon_pid) {
            return Ok(());
        }
        if !data_dir.exists() {
            return Ok(());
        }
        if deadline(data_dir).is_some_and(|d| monotonic_ns() >= d) {
            for (dir, pid) in &vms {
                // SIGKILL: a VM must not outlive its node's lease by a moment longer than needed.
                let Some(p) = rustix::process::Pid::from_raw(*pid) else { continue };
                if rustix::process::kill_process(p, rustix::process::Signal::KILL).is_ok() {
                    eprintln!(
                        "blixard fence-watch: lease of {} ran out: killed VM {}",
                        data_dir.display(),
                        dir.display()
                    );
                }
            }
            for dir in &tasks {
                if crate::tasks::exec::kill_leftover(dir) {
                    eprintln!(
                        "blixard fence-watch: lease of {} ran out: killed task attempt {}",
                        data_dir.display(),
                        dir.display()
                    );
                }
            }
        }
        std::thread::sleep(POLL); // a poll interval of a watchdog loop
    }
}
