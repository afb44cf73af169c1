//! Choosing the accelerator: KVM only if a real guest boots under it.
//!
//! On some hosts `/dev/kvm` opens and trivial KVM guests run, yet QEMU guests print nothing and
//! hang (QEMU-NOTES.md). Checking for the device is therefore not enough: the probe boots the real
//! guest image under `-accel kvm` and waits for its boot marker; if it does not appear in time,
//! TCG is used. The verdict is cached per host boot (`/proc/sys/kernel/random/boot_id`), since
//! the answer can change only with the host kernel or its modules.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::image::GuestImage;
use crate::{Accel, Result, VmmError, BOOT_MARKER};

/// How long the KVM probe waits for the boot marker (a TCG boot takes ~2 s, KVM far less).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Environment override: `tcg` or `kvm` skips the probe (tests, and hosts known to be good).
pub const ENV_OVERRIDE: &str = "BLIXARD_ACCEL";

/// Where a verdict came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Env,
    NoKvmDevice,
    Probed,
    Cached,
}

/// The chosen accelerator and why, for the daemon to log and show.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelVerdict {
    pub accel: Accel,
    pub source: Source,
    pub detail: String,
    /// Host boot id the verdict is valid for.
    pub boot_id: String,
}

/// The verdict cache file under a cache directory.
pub fn verdict_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("accel.json")
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// Picks the accelerator: the env override, else a cached verdict for this host boot, else a
/// probe (whose verdict is cached in `cache_dir`).
pub async fn select(image: &GuestImage, cache_dir: &Path) -> Result<AccelVerdict> {
    let boot_id = boot_id();
    match std::env::var(ENV_OVERRIDE).as_deref() {
        Ok("tcg") => return Ok(verdict(Accel::Tcg, Source::Env, "BLIXARD_ACCEL=tcg", &boot_id)),
        Ok("kvm") => return Ok(verdict(Accel::Kvm, Source::Env, "BLIXARD_ACCEL=kvm", &boot_id)),
        _ => {}
    }
    let path = verdict_path(cache_dir);
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(v) = serde_json::from_str::<AccelVerdict>(&text) {
            if v.boot_id == boot_id && !boot_id.is_empty() {
                return Ok(AccelVerdict { source: Source::Cached, ..v });
            }
        }
    }
    let v = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Err(e) => verdict(Accel::Tcg, Source::NoKvmDevice, &format!("cannot open /dev/kvm: {e}"), &boot_id),
        Ok(_) => {
            let (ok, detail) = probe_kvm(image, cache_dir, PROBE_TIMEOUT).await?;
            verdict(if ok { Accel::Kvm } else { Accel::Tcg }, Source::Probed, &detail, &boot_id)
        }
    };
    std::fs::create_dir_all(cache_dir).map_err(VmmError::io("create", cache_dir))?;
    crate::qemu::state::write_json(&path, &v)?;
    tracing::info!(accel = %v.accel, detail = %v.detail, "chose the accelerator");
    Ok(v)
}

fn verdict(accel: Accel, source: Source, detail: &str, boot_id: &str) -> AccelVerdict {
    AccelVerdict { accel, source, detail: detail.to_string(), boot_id: boot_id.to_string() }
}

/// Boots `image` under KVM (no network, serial to a file) and waits up to `timeout` for the
/// boot marker. Returns whether it appeared, and a human-readable detail. Always kills the probe
/// VM and removes its directory.
pub async fn probe_kvm(image: &GuestImage, scratch: &Path, timeout: Duration) -> Result<(bool, String)> {
    let dir = scratch.join(format!("kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(VmmError::io("create", &dir))?;
    let result = probe_in(image, &dir, timeout).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn probe_in(image: &GuestImage, dir: &Path, timeout: Duration) -> Result<(bool, String)> {
    let log = dir.join("console.log");
    let mut cmdline = "console=ttyS0 tsc=reliable blixard.name=kvm-probe".to_string();
    if let Some(khz) = crate::qemu::args::host_tsc_khz() {
        cmdline.push_str(&format!(" tsc_early_khz={khz}"));
    }
    let started = Instant::now();
    let mut child = tokio::process::Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-accel", "kvm", "-cpu", "qemu64,+arat", "-m", "128M", "-smp", "1"])
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
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| VmmError::Spawn { program: "qemu-system-x86_64".into(), source })?;
    let outcome = loop {
        let seen = std::fs::read_to_string(&log).is_ok_and(|s| s.contains(BOOT_MARKER));
        if seen {
            break (true, format!("a KVM guest booted in {} ms", started.elapsed().as_millis()));
        }
        if let Ok(Some(st)) = child.try_wait() {
            break (false, format!("QEMU under KVM exited ({st}) before the guest booted"));
        }
        if started.elapsed() > timeout {
            break (false, format!("a KVM guest printed no boot marker within {} ms", timeout.as_millis()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if let Some(pid) = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.kill().await;
    Ok(outcome)
}
