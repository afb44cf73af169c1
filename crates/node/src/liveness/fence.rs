//! Fencing: the moment this node's lease runs out, every VM it runs is killed (the reconciler
//! starts none until a lease is held again). The lease's deadline is also written to
//! `<data-dir>/lease` (as `CLOCK_MONOTONIC` nanoseconds), for the watchdog process that kills the
//! VMs when the daemon itself is gone (`blixard fence-watch`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blixard_vmm::{VmDriver, VmState};
use tokio::time::Instant;

use super::lease::Lease;

/// The file the watchdog reads.
pub fn lease_file(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("lease")
}

/// `CLOCK_MONOTONIC` now, in nanoseconds (the clock every process on the host shares).
#[cfg(not(madsim))]
pub fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

/// Writes the lease's deadline for the watchdog (best effort: the daemon fences on its own too).
#[cfg(not(madsim))]
fn write_deadline(path: &std::path::Path, until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    let deadline = monotonic_ns().saturating_add(left.as_nanos() as u64);
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, deadline.to_string()).and_then(|_| std::fs::rename(&tmp, path)).is_err() {
        tracing::debug!("cannot write the lease file {}", path.display());
    }
}

/// Kills every running VM of this node; returns how many. Each is noted in the lease as fenced,
/// so the reconciler counts it as failed (restarted per its policy once a lease is held again),
/// not as a guest that powered itself off.
pub async fn kill_all(driver: &dyn VmDriver, lease: &Lease) -> usize {
    let Ok(all) = driver.list().await else { return 0 };
    let mut n = 0;
    for o in all.into_iter().filter(|o| o.state == VmState::Running) {
        lease.note_fenced(&o.instance);
        match driver.stop(&o.instance, Duration::ZERO).await {
            Ok(_) => n += 1,
            Err(e) => tracing::error!(vm = %o.instance, "fencing: cannot stop the VM: {e}"),
        }
    }
    n
}

/// Watches the lease for as long as the node runs: kills the VMs when it runs out.
pub async fn run(lease: Arc<Lease>, driver: Arc<dyn VmDriver>, data_dir: PathBuf) {
    let mut changed = lease.watch();
    let file = lease_file(&data_dir);
    let mut fenced = false;
    loop {
        let until = lease.until();
        #[cfg(not(madsim))]
        if let Some(u) = until {
            write_deadline(&file, u);
        }
        #[cfg(madsim)]
        let _ = &file;
        match until {
            Some(u) if Instant::now() < u => {
                if fenced {
                    tracing::info!("lease held again: VMs may run");
                    fenced = false;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(u) => {}
                    _ = changed.changed() => continue,
                }
            }
            // Never held: nothing may run yet, and nothing this daemon started does.
            None => {
                let _ = changed.changed().await;
                continue;
            }
            Some(_) => {}
        }
        if lease.until().is_some_and(|u| Instant::now() >= u) && !fenced {
            fenced = true;
            let n = kill_all(driver.as_ref(), &lease).await;
            tracing::warn!(killed = n, "lease ran out (the leader is unreachable): fenced, every VM here stopped");
        }
        let _ = changed.changed().await;
    }
}
