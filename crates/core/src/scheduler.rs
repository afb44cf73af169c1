//! Placement: which node runs a VM. Pure, deterministic, and explained: every node that cannot
//! take the VM says why, so "why is my VM not placed?" has an answer.
//!
//! The pipeline, cheapest checks first: the node is registered (it reported its capacity) →
//! it is the pinned node, when one is asked for → enough free memory → enough free vCPUs (with
//! the node's overcommit) → score: most free memory wins (spreads load), lowest id breaks ties.
//! It runs inside `apply`, so the plan and the commit are one step: a stale plan cannot
//! oversubscribe a node.

use serde::{Deserialize, Serialize};

use crate::spec::{VmRecord, VmSpec};
use crate::NodeId;

/// What a node offers, as it reported itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResources {
    pub id: NodeId,
    /// Schedulable vCPUs (host cores times the node's overcommit ratio).
    pub vcpus: u32,
    /// Schedulable memory in MiB (host memory less the node's reserve).
    pub memory_mib: u64,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// `qemu` or `microvm-nix`.
    pub backend: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub vcpus: u32,
    pub memory_mib: u64,
}

/// Resources taken on `node` by the VMs placed there.
pub fn usage(node: NodeId, vms: &[VmRecord]) -> Usage {
    let mut u = Usage { vcpus: 0, memory_mib: 0 };
    for v in vms.iter().filter(|v| v.node == node) {
        u.vcpus += v.spec.vcpus;
        u.memory_mib += u64::from(v.spec.memory_mib);
    }
    u
}

/// Picks a node for `spec`, or explains per node why none fits.
pub fn place(
    nodes: &[NodeResources],
    vms: &[VmRecord],
    spec: &VmSpec,
    pinned: Option<NodeId>,
) -> Result<NodeId, String> {
    if let Some(p) = pinned {
        if !nodes.iter().any(|n| n.id == p) {
            return Err(format!("node {p} is not a registered node"));
        }
    }
    if nodes.is_empty() {
        return Err("no node has registered its capacity yet".into());
    }
    let mut reasons = Vec::new();
    let mut best: Option<(u64, NodeId)> = None;
    for n in nodes {
        if pinned.is_some_and(|p| p != n.id) {
            continue;
        }
        let u = usage(n.id, vms);
        let free_mem = n.memory_mib.saturating_sub(u.memory_mib);
        let free_cpu = n.vcpus.saturating_sub(u.vcpus);
        if free_mem < u64::from(spec.memory_mib) {
            reasons.push(format!("node {}: needs {} MiB memory, {free_mem} MiB free", n.id, spec.memory_mib));
            continue;
        }
        if free_cpu < spec.vcpus {
            reasons.push(format!("node {}: needs {} vcpus, {free_cpu} free", n.id, spec.vcpus));
            continue;
        }
        if best.is_none_or(|(m, _)| free_mem > m) {
            best = Some((free_mem, n.id));
        }
    }
    best.map(|(_, id)| id).ok_or_else(|| reasons.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::PowerState;

    fn node(id: NodeId, vcpus: u32, memory_mib: u64) -> NodeResources {
        NodeResources { id, vcpus, memory_mib, accel: "tcg".into(), backend: "qemu".into() }
    }

    fn vm(name: &str, node: NodeId, vcpus: u32, memory_mib: u32) -> VmRecord {
        VmRecord {
            spec: VmSpec { name: name.into(), vcpus, memory_mib, ..Default::default() },
            created_at_ms: 0,
            create_index: 1,
            desired: PowerState::Running,
            node,
            restart_generation: 0,
            observed: None,
        }
    }

    fn spec(vcpus: u32, memory_mib: u32) -> VmSpec {
        VmSpec { name: "x".into(), vcpus, memory_mib, ..Default::default() }
    }

    #[test]
    fn picks_the_node_with_most_free_memory_and_lowest_id_on_ties() {
        let nodes = [node(1, 8, 4096), node(2, 8, 4096), node(3, 8, 2048)];
        assert_eq!(place(&nodes, &[], &spec(1, 128), None), Ok(1));
        let vms = [vm("a", 1, 1, 1024)];
        assert_eq!(place(&nodes, &vms, &spec(1, 128), None), Ok(2));
    }

    #[test]
    fn a_vm_bigger_than_any_node_is_refused_with_reasons_per_node() {
        let nodes = [node(1, 8, 4096), node(2, 2, 8192)];
        let e = place(&nodes, &[], &spec(4, 6000), None).unwrap_err();
        assert_eq!(e, "node 1: needs 6000 MiB memory, 4096 MiB free; node 2: needs 4 vcpus, 2 free");
    }

    #[test]
    fn placed_vms_use_up_capacity() {
        let nodes = [node(1, 4, 1024)];
        let vms = [vm("a", 1, 2, 512), vm("b", 1, 1, 256)];
        assert_eq!(place(&nodes, &vms, &spec(1, 256), None), Ok(1));
        assert!(place(&nodes, &vms, &spec(1, 257), None).unwrap_err().contains("256 MiB free"));
        assert!(place(&nodes, &vms, &spec(2, 64), None).unwrap_err().contains("1 free"));
    }

    #[test]
    fn a_pinned_node_is_used_or_the_reason_given() {
        let nodes = [node(1, 8, 4096), node(2, 8, 512)];
        assert_eq!(place(&nodes, &[], &spec(1, 256), Some(2)), Ok(2));
        assert_eq!(
            place(&nodes, &[], &spec(1, 1024), Some(2)).unwrap_err(),
            "node 2: needs 1024 MiB memory, 512 MiB free"
        );
        assert_eq!(place(&nodes, &[], &spec(1, 64), Some(9)).unwrap_err(), "node 9 is not a registered node");
    }

    #[test]
    fn no_registered_node_means_no_placement() {
        assert_eq!(place(&[], &[], &spec(1, 64), None).unwrap_err(), "no node has registered its capacity yet");
    }
}
