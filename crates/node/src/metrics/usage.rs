//! Per-VM usage: the CPU time and resident memory of the process of each VM this node runs
//! (QEMU or its runner), read from `/proc/PID` on demand: at scrape time for the metrics, and
//! for `vm get` and `node get` (answered here, or relayed here by the node the CLI talks to).

use blixard_consensus::sm::ReadView;
use blixard_consensus::Handle;
use blixard_core::spec::Phase;
use blixard_core::{NodeId, StoreError, VmRecord};

/// One running VM's usage.
#[derive(Clone, Debug, PartialEq)]
pub struct VmUsage {
    pub name: String,
    /// The instance measured (its placement's index).
    pub incarnation: u64,
    pub pid: u32,
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
}

/// The process node `id` observed for `v`, if `v` is placed there and starting or running.
pub fn process_of(id: NodeId, v: &VmRecord) -> Option<u32> {
    let o = v.observed.as_ref()?;
    (v.node == Some(id) && matches!(o.phase, Phase::Starting | Phase::Running)).then_some(o.pid).flatten()
}

/// The usage of `name`'s process `pid`, if it is alive and is that VM's (its command line
/// names the VM, so a reused pid is not taken for it).
pub fn read(name: &str, incarnation: u64, pid: u32) -> Option<VmUsage> {
    let s = super::process::read_pid(pid, name)?;
    Some(VmUsage {
        name: name.to_string(),
        incarnation,
        pid,
        cpu_seconds: s.cpu_seconds,
        resident_bytes: s.resident_bytes,
    })
}

/// The usage of the VMs node `id` runs per its replicated state (only `vm` when given).
pub fn local(id: NodeId, raft: &Handle, vm: Option<&str>) -> Result<Vec<VmUsage>, StoreError> {
    let view = ReadView::begin(raft.db())?;
    let records = match vm {
        Some(name) => match blixard_core::state::query(&view, &blixard_core::Query::VmGet { name: name.into() })? {
            blixard_core::QueryResult::Vm(Some(v)) => vec![*v],
            _ => vec![],
        },
        None => blixard_core::state::vms(&view)?,
    };
    Ok(records.iter().filter_map(|v| read(&v.spec.name, v.placed_index, process_of(id, v)?)).collect())
}
