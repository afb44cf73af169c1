//! The feasibility stages, cheapest first. Each is a small function that says why a node
//! cannot take a VM; [`check`] runs them in order and stops at the first rejection. A rejection
//! is data (no string is built on the hot path), turned into words only when shown.

use std::fmt;

use super::record::{NodeRecord, NodeState};
use crate::placement::Constraint;
use crate::spec::VmSpec;

/// Which stage rejected a node, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    Down,
    Ineligible,
    Draining,
    /// A required feature the node lacks (`kvm`).
    Missing(String),
    Constraint(Constraint),
    PortTaken(u16),
    Vcpus {
        need: u32,
        free: u32,
    },
    Memory {
        need: u64,
        free: u64,
    },
    Disk {
        need: u64,
        free: u64,
    },
    /// Hard anti-affinity: a VM of the group is already there.
    Group(String),
}

/// The stages' names, in pipeline order.
pub const STAGES: [&str; 6] = ["status", "features", "constraints", "ports", "resources", "anti-affinity"];

impl Rejection {
    /// The stage's name, for `vm explain` and metrics.
    pub fn stage(&self) -> &'static str {
        STAGES[self.stage_index()]
    }

    /// The stage's position in [`STAGES`].
    pub fn stage_index(&self) -> usize {
        match self {
            Rejection::Down | Rejection::Ineligible | Rejection::Draining => 0,
            Rejection::Missing(_) => 1,
            Rejection::Constraint(_) => 2,
            Rejection::PortTaken(_) => 3,
            Rejection::Vcpus { .. } | Rejection::Memory { .. } | Rejection::Disk { .. } => 4,
            Rejection::Group(_) => 5,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Down => write!(f, "node is down"),
            Rejection::Ineligible => write!(f, "node is not eligible for new work"),
            Rejection::Draining => write!(f, "node is draining"),
            Rejection::Missing(x) => write!(f, "needs {x}, the node has none"),
            Rejection::Constraint(c) => write!(f, "constraint {c} does not hold"),
            Rejection::PortTaken(p) => write!(f, "host port {p} is taken by another VM"),
            Rejection::Vcpus { need, free } => write!(f, "needs {need} vcpus, {free} free"),
            Rejection::Memory { need, free } => write!(f, "needs {need} MiB memory, {free} MiB free"),
            Rejection::Disk { need, free } => write!(f, "needs {need} GiB disk, {free} GiB free"),
            Rejection::Group(g) => write!(f, "a VM of group {g:?} is already there (hard anti-affinity)"),
        }
    }
}

pub fn status(n: &NodeRecord) -> Result<(), Rejection> {
    if n.state == NodeState::Down {
        return Err(Rejection::Down);
    }
    if n.drain.is_some() {
        return Err(Rejection::Draining);
    }
    if !n.eligible {
        return Err(Rejection::Ineligible);
    }
    Ok(())
}

pub fn features(n: &NodeRecord, spec: &VmSpec) -> Result<(), Rejection> {
    for r in &spec.placement.require {
        let has = match r.as_str() {
            "kvm" => n.accel == "kvm",
            _ => false,
        };
        if !has {
            return Err(Rejection::Missing(r.clone()));
        }
    }
    Ok(())
}

pub fn constraints(n: &NodeRecord, spec: &VmSpec) -> Result<(), Rejection> {
    match spec.placement.constraints.iter().find(|c| !c.holds(&n.labels)) {
        Some(c) => Err(Rejection::Constraint(c.clone())),
        None => Ok(()),
    }
}

pub fn ports(n: &NodeRecord, spec: &VmSpec) -> Result<(), Rejection> {
    match spec.ports.iter().find(|p| n.ports.contains(&p.host)) {
        Some(p) => Err(Rejection::PortTaken(p.host)),
        None => Ok(()),
    }
}

pub fn resources(n: &NodeRecord, spec: &VmSpec) -> Result<(), Rejection> {
    let free_cpu = n.vcpus.saturating_sub(n.used.vcpus);
    if free_cpu < spec.vcpus {
        return Err(Rejection::Vcpus { need: spec.vcpus, free: free_cpu });
    }
    let free_mem = n.memory_mib.saturating_sub(n.used.memory_mib);
    if free_mem < u64::from(spec.memory_mib) {
        return Err(Rejection::Memory { need: u64::from(spec.memory_mib), free: free_mem });
    }
    let need_disk = u64::from(spec.disk_gib.unwrap_or(0));
    let free_disk = n.disk_gib.saturating_sub(n.used.disk_gib);
    if need_disk > free_disk {
        return Err(Rejection::Disk { need: need_disk, free: free_disk });
    }
    Ok(())
}

pub fn anti_affinity(n: &NodeRecord, spec: &VmSpec) -> Result<(), Rejection> {
    let p = &spec.placement;
    match &p.group {
        Some(g) if p.hard && n.groups.get(g).is_some_and(|c| *c > 0) => Err(Rejection::Group(g.clone())),
        _ => Ok(()),
    }
}

/// Every stage, in order.
pub fn check(n: &NodeRecord, spec: &VmSpec) -> Result<(), Rejection> {
    status(n)?;
    features(n, spec)?;
    constraints(n, spec)?;
    ports(n, spec)?;
    resources(n, spec)?;
    anti_affinity(n, spec)
}

/// Whether the node's whole capacity could hold the VM.
pub fn fits_capacity(n: &NodeRecord, spec: &VmSpec) -> bool {
    n.vcpus >= spec.vcpus
        && n.memory_mib >= u64::from(spec.memory_mib)
        && n.disk_gib >= u64::from(spec.disk_gib.unwrap_or(0))
}
