//! Commands a node proposes on its own behalf (capacity registration, observed VM state), from
//! whichever node it runs on: a follower's proposal reaches the leader through Raft itself.

use std::time::Duration;

use blixard_consensus::Handle;
use blixard_core::{Command, Outcome};
use tonic::Status;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Proposes `cmd` and waits until it is applied here. Returns the entry index and the command's
/// own outcome.
pub async fn propose(raft: &Handle, cmd: Command) -> Result<(u64, Outcome), Status> {
    let a = raft.propose_own(cmd, TIMEOUT).await.map_err(|e| crate::status::propose(e, None))?;
    Ok((a.index, a.outcome))
}

/// This host's schedulable capacity.
pub fn host_capacity(overcommit: u32, reserve_mib: u64, memory_override: Option<u64>) -> (u32, u64) {
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    let mem = memory_override.unwrap_or_else(|| total_mib.saturating_sub(reserve_mib));
    (cores * overcommit.max(1), mem)
}

/// Free space of the file system holding `dir`, in GiB (0 when it cannot be read).
pub fn free_disk_gib(dir: &std::path::Path) -> u64 {
    #[cfg(not(madsim))]
    if let Ok(st) = rustix::fs::statvfs(dir) {
        return st.f_bavail.saturating_mul(st.f_frsize) >> 30;
    }
    #[cfg(madsim)]
    let _ = dir;
    // Under simulation, or when unknown: room for a few small disks.
    64
}
