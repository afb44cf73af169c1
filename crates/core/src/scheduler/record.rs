//! A node as the replicated state knows it: what it offers (as it registered), its liveness and
//! eligibility (decided by the cluster), and the aggregates of the VMs placed on it that
//! reserve resources (kept by `apply`, so placement never scans the VMs).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::spec::VmSpec;
use crate::NodeId;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// Heartbeating the leader (or registered, and not yet judged).
    #[default]
    Ready,
    /// Missed its heartbeats for the down timeout: its VMs were moved (per their policy).
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// Resources taken on a node by the VMs that reserve them there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub vms: u32,
}

/// A drain in progress: the node's VMs move elsewhere, `parallel` at a time, all of them at the
/// latest by `deadline_ms` (cluster time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    pub deadline_ms: u64,
    pub parallel: u32,
    pub started_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// Schedulable vCPUs (host cores times the node's overcommit ratio).
    pub vcpus: u32,
    /// Schedulable memory in MiB (host memory less the node's reserve).
    pub memory_mib: u64,
    /// Schedulable disk for VM disks, in GiB.
    pub disk_gib: u64,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// `qemu` or `microvm-nix`.
    pub backend: String,
    pub labels: BTreeMap<String, String>,
    pub agent_version: String,
    pub state: NodeState,
    /// Cluster time of the last state change.
    pub state_since_ms: u64,
    /// Whether new work may be placed here (an operator's switch; a drain turns it off).
    pub eligible: bool,
    pub drain: Option<Drain>,
    pub used: Usage,
    /// Host ports forwarded by the VMs placed here.
    pub ports: BTreeSet<u16>,
    /// VMs placed here per anti-affinity group.
    pub groups: BTreeMap<String, u32>,
    /// Its position in the dense order the scheduler samples from (`Table::NodeSlots`).
    pub slot: u32,
}

impl NodeRecord {
    /// Whether the node offers nothing to new work.
    pub fn accepts_work(&self) -> bool {
        self.state == NodeState::Ready && self.eligible && self.drain.is_none()
    }

    /// Counts a VM placed here that reserves resources.
    pub fn add(&mut self, spec: &VmSpec) {
        self.used.vcpus += spec.vcpus;
        self.used.memory_mib += u64::from(spec.memory_mib);
        self.used.disk_gib += u64::from(spec.disk_gib.unwrap_or(0));
        self.used.vms += 1;
        self.ports.extend(spec.ports.iter().map(|p| p.host));
        if let Some(g) = &spec.placement.group {
            // Looked up first: the name is copied only for a group new here.
            match self.groups.get_mut(g) {
                Some(n) => *n += 1,
                None => {
                    self.groups.insert(g.clone(), 1);
                }
            }
        }
    }

    /// Releases what [`NodeRecord::add`] counted.
    pub fn release(&mut self, spec: &VmSpec) {
        self.used.vcpus = self.used.vcpus.saturating_sub(spec.vcpus);
        self.used.memory_mib = self.used.memory_mib.saturating_sub(u64::from(spec.memory_mib));
        self.used.disk_gib = self.used.disk_gib.saturating_sub(u64::from(spec.disk_gib.unwrap_or(0)));
        self.used.vms = self.used.vms.saturating_sub(1);
        for p in &spec.ports {
            self.ports.remove(&p.host);
        }
        if let Some(g) = &spec.placement.group {
            if let Some(n) = self.groups.get_mut(g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.groups.remove(g);
                }
            }
        }
    }
}
