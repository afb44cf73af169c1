//! The KVM probe's QEMU, and reaping the probes whose daemon died.
//!
//! Two mechanisms, because neither alone is enough:
//! - The probe runs under `setpriv --pdeathsig KILL` (util-linux) where the host has it, so the
//!   kernel SIGKILLs it when its parent goes, including when the whole daemon is killed. The
//!   workspace forbids `unsafe`, so the daemon cannot call `prctl` in the child between fork and
//!   exec itself; setpriv does exactly that, then execs QEMU. The signal fires when the parent
//!   *thread* exits, not the process: the probe is therefore forked, waited for and killed by one
//!   blocking thread that runs until the probe is gone (a thread that exits while the probe runs
//!   would kill it early; one that lives on after it, idle in tokio's pool, is harmless).
//! - Every start reaps what survived anyway (no setpriv, or a daemon killed between fork and
//!   `prctl`): a probe names its scratch directory `kvm-probe-<daemon pid>` on its command line
//!   and carries [`PROBE_ARG`] on the guest's; one whose parent is not that daemon has been
//!   orphaned and is killed, and scratch directories of daemons that are gone are removed.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::image::GuestImage;
use crate::qemu::state::process_alive;
use crate::{Result, VmmError, BOOT_MARKER};

const QEMU: &str = "qemu-system-x86_64";
/// On the probe guest's kernel command line: tells a probe from a VM in `/proc`.
pub const PROBE_ARG: &str = "blixard.name=kvm-probe";
/// Scratch directory prefix; the daemon's pid follows.
const SCRATCH: &str = "kvm-probe-";

/// Boots `image` under KVM (no network, serial to a file) and waits up to `timeout` for the
/// boot marker. Returns whether it appeared, and a human-readable detail. Always kills the probe
/// VM and removes its directory `<scratch>/kvm-probe-<pid>`.
pub async fn probe_kvm(image: &GuestImage, scratch: &Path, timeout: Duration) -> Result<(bool, String)> {
    std::fs::create_dir_all(scratch).map_err(VmmError::io("create", scratch))?;
    // Absolute: QEMU runs inside the probe directory, where a relative log path means another file.
    let scratch = std::fs::canonicalize(scratch).map_err(VmmError::io("resolve", scratch))?;
    let dir = scratch.join(format!("{SCRATCH}{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(VmmError::io("create", &dir))?;
    let (image, d) = (image.clone(), dir.clone());
    // Runs to the end (the probe killed and reaped) even if this future is dropped.
    let result =
        tokio::task::spawn_blocking(move || probe_in(&image, &d, timeout)).await.expect("the probe does not panic");
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The probe QEMU; dropping it kills its process group and reaps it (also when unwinding).
struct Probe {
    child: Child,
    reaped: bool,
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Once reaped its pid may belong to someone else: never signal it then.
        if !self.reaped {
            let _ = crate::qemu::host::kill_group(self.child.id());
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn probe_in(image: &GuestImage, dir: &Path, timeout: Duration) -> Result<(bool, String)> {
    let log = dir.join("console.log");
    let mut cmdline = format!("console=ttyS0 tsc=reliable {PROBE_ARG}");
    if let Some(khz) = crate::qemu::args::host_tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let mut cmd = match pdeathsig_wrapper() {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--", QEMU]);
            c
        }
        None => {
            tracing::info!(
                "setpriv --pdeathsig is not available: a probe outliving a killed daemon is reaped at the next start"
            );
            Command::new(QEMU)
        }
    };
    cmd.args(["-M", "microvm", "-accel", "kvm", "-cpu", "qemu64,+arat", "-m", "128M", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-nographic"])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initrd)
        .args(["-append", &cmdline])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let started = Instant::now();
    let child = cmd.spawn().map_err(|source| VmmError::Spawn { program: QEMU.into(), source })?;
    let mut probe = Probe { child, reaped: false };
    let outcome = loop {
        if std::fs::read_to_string(&log).is_ok_and(|s| s.contains(BOOT_MARKER)) {
            break (true, format!("a KVM guest booted in {} ms", started.elapsed().as_millis()));
        }
        if let Ok(Some(st)) = probe.child.try_wait() {
            probe.reaped = true;
            break (false, format!("QEMU under KVM exited ({st}) before the guest booted"));
        }
        if started.elapsed() > timeout {
            break (false, format!("a KVM guest printed no boot marker within {} ms", timeout.as_millis()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(probe);
    Ok(outcome)
}

/// `setpriv` if it is on `PATH` and knows `--pdeathsig` (util-linux 2.33 and later).
pub fn pdeathsig_wrapper() -> Option<PathBuf> {
    let path = std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("setpriv")).find(|p| p.is_file())?;
    let help = Command::new(&path).arg("--help").stdin(Stdio::null()).stderr(Stdio::null()).output().ok()?;
    String::from_utf8_lossy(&help.stdout).contains("--pdeathsig").then_some(path)
}

/// The daemon pid a probe's command line (`/proc/PID/cmdline`: NUL-separated) names in its
/// scratch directory, or `None` if it is not a probe: it must run QEMU, carry [`PROBE_ARG`] and
/// name a `…/kvm-probe-<pid>/…` path.
pub fn probe_owner(cmdline: &[u8]) -> Option<u32> {
    let args: Vec<String> = cmdline.split(|&b| b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let runs_qemu =
        args.iter().any(|a| Path::new(a).file_name().is_some_and(|f| f.to_string_lossy().starts_with("qemu-system")));
    let is_probe = args.iter().any(|a| a.split_whitespace().any(|w| w == PROBE_ARG));
    if !(runs_qemu && is_probe) {
        return None;
    }
    args.iter().find_map(|a| {
        let (_, rest) = a.split_once(&format!("/{SCRATCH}"))?;
        let (digits, _) = rest.split_once('/')?;
        (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
    })
}

/// The parent pid of `pid` (field 4 of `/proc/PID/stat`, after the parenthesised name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// Kills every probe QEMU on this host whose daemon is gone (its parent is not the daemon its
/// scratch directory names: the daemon died and it was reparented), then removes the scratch
/// directories in `cache_dir` of daemons that are gone. Returns the pids it killed. Best effort:
/// what it cannot read or kill is left for the next start.
pub fn reap_leftover_probes(cache_dir: &Path) -> Vec<u32> {
    let mut killed = Vec::new();
    let mut orphaned_by = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some(owner) = std::fs::read(e.path().join("cmdline")).ok().and_then(|c| probe_owner(&c)) else {
            continue;
        };
        if parent_of(pid) == Some(owner) || !process_alive(pid) {
            continue;
        }
        match crate::qemu::host::kill_group(pid) {
            Ok(()) => {
                tracing::warn!(pid, daemon = owner, "killed a KVM probe left running by a daemon that is gone");
                killed.push(pid);
                orphaned_by.insert(owner);
            }
            Err(e) => tracing::warn!(pid, "cannot kill a leftover KVM probe: {e}"),
        }
    }
    let me = std::process::id();
    for e in std::fs::read_dir(cache_dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let Some(owner) = name.to_str().and_then(|n| n.strip_prefix(SCRATCH)).and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A live owner may be probing right now; unless its probe was orphaned, its pid was reused.
        if owner == me || (process_alive(owner) && !orphaned_by.contains(&owner)) {
            continue;
        }
        let dir = e.path();
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "cannot remove a leftover probe directory: {e}");
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<u8> {
        args.join("\0").into_bytes()
    }

    #[test]
    fn probes_are_told_apart_from_vms_by_their_command_line() {
        let probe = [
            "qemu-system-x86_64",
            "-append",
            "console=ttyS0 tsc=reliable blixard.name=kvm-probe tsc_early_khz=1",
            "-serial",
            "file:/var/cache/blixard/kvm-probe-4242/console.log",
        ];
        assert_eq!(probe_owner(&argv(&probe)), Some(4242));
        let wrapped = [&["/usr/bin/setpriv", "--pdeathsig", "KILL", "--"][..], &probe[..]].concat();
        assert_eq!(probe_owner(&argv(&wrapped)), Some(4242), "before setpriv execs QEMU");
        let vm = ["qemu-system-x86_64", "-append", "blixard.name=web", "-pidfile", "/d/vms/web/qemu.pid"];
        assert_eq!(probe_owner(&argv(&vm)), None);
        let not_qemu = ["sh", "-c", "echo blixard.name=kvm-probe /x/kvm-probe-1/"];
        assert_eq!(probe_owner(&argv(&not_qemu)), None);
        for path in
            ["file:/x/kvm-probe-12x/log", "file:/x/kvm-probe-/log", "file:/x/kvm-probe-12", "file:/x/kvm-probe-+1/l"]
        {
            assert_eq!(probe_owner(&argv(&[probe[0], probe[1], probe[2], path])), None, "{path}");
        }
    }

    #[test]
    fn a_parent_pid_is_read_from_proc() {
        assert_eq!(
            parent_of(std::process::id()),
            Some(rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32))
        );
    }
}
