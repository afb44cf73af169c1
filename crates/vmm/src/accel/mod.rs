//! Choosing the accelerator: KVM only if a real guest boots under it.
//!
//! On some hosts `/dev/kvm` opens and trivial KVM guests run, yet QEMU guests print nothing and
//! hang (QEMU-NOTES.md). Checking for the device is therefore not enough: the probe boots the real
//! guest image under `-accel kvm` and waits for its boot marker; if it does not appear in time,
//! TCG is used. The verdict is cached per host boot (`/proc/sys/kernel/random/boot_id`), since
//! the answer can change only with the host kernel or its modules.
//!
//! The probe's QEMU must not outlive the daemon: a hung KVM guest runs until killed, and a daemon
//! killed during its first seconds would leave it running for good. See [`probe`] for how it
//! dies with the daemon and how [`select`] reaps the ones that did not.

mod probe;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::image::GuestImage;
use crate::{Accel, Result, VmmError};

pub use probe::{pdeathsig_wrapper, probe_kvm, probe_owner, reap_leftover_probes, PROBE_ARG};

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
/// probe (whose verdict is cached in `cache_dir`). First, whatever the verdict's source, kills
/// probe QEMUs left behind by daemons that died (see [`reap_leftover_probes`]).
pub async fn select(image: &GuestImage, cache_dir: &Path) -> Result<AccelVerdict> {
    let dir = cache_dir.to_path_buf();
    tokio::task::spawn_blocking(move || reap_leftover_probes(&dir)).await.expect("reaping does not panic");
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
