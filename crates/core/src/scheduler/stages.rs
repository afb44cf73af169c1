//! The feasibility stages, cheapest first. Each is a small function that says why a node
//! cannot take a VM; [`check`] runs them in order and stops at the first rejection. A rejection
//! is data (no string is built on the hot path), turned into words only when shown.

use std::fmt;

use super::compact::{Compact, Query, Status};
use super::record::NodeRecord;
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

/// A rejection as the hot path finds it: plain data, no allocation (the constraint or feature
/// by its position in the spec), made a [`Rejection`] only when it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    Down,
    Ineligible,
    Draining,
    Missing(usize),
    Constraint(usize),
    PortTaken(u16),
    Vcpus { need: u32, free: u32 },
    Memory { need: u64, free: u64 },
    Disk { need: u64, free: u64 },
    Group,
}

impl Why {
    /// The stage's position in [`STAGES`].
    pub fn stage_index(self) -> usize {
        match self {
            Why::Down | Why::Ineligible | Why::Draining => 0,
            Why::Missing(_) => 1,
            Why::Constraint(_) => 2,
            Why::PortTaken(_) => 3,
            Why::Vcpus { .. } | Why::Memory { .. } | Why::Disk { .. } => 4,
            Why::Group => 5,
        }
    }

    /// The full rejection, for `spec`.
    pub fn rejection(self, spec: &VmSpec) -> Rejection {
        let p = &spec.placement;
        match self {
            Why::Down => Rejection::Down,
            Why::Ineligible => Rejection::Ineligible,
            Why::Draining => Rejection::Draining,
            Why::Missing(i) => Rejection::Missing(p.require[i].clone()),
            Why::Constraint(i) => Rejection::Constraint(p.constraints[i].clone()),
            Why::PortTaken(port) => Rejection::PortTaken(port),
            Why::Vcpus { need, free } => Rejection::Vcpus { need, free },
            Why::Memory { need, free } => Rejection::Memory { need, free },
            Why::Disk { need, free } => Rejection::Disk { need, free },
            Why::Group => Rejection::Group(p.group.clone().unwrap_or_default()),
        }
    }
}

pub fn status(n: &Compact) -> Result<(), Why> {
    match n.status {
        Status::Open => Ok(()),
        Status::Down => Err(Why::Down),
        Status::Draining => Err(Why::Draining),
        Status::Ineligible => Err(Why::Ineligible),
    }
}

pub fn features(n: &Compact, q: &Query) -> Result<(), Why> {
    for (i, r) in q.spec.placement.require.iter().enumerate() {
        let has = match r.as_str() {
            "kvm" => n.kvm,
            _ => false,
        };
        if !has {
            return Err(Why::Missing(i));
        }
    }
    Ok(())
}

pub fn constraints(n: &Compact, q: &Query) -> Result<(), Why> {
    match q.failed_constraint(n) {
        Some(i) => Err(Why::Constraint(i)),
        None => Ok(()),
    }
}

pub fn ports(n: &Compact, q: &Query) -> Result<(), Why> {
    match q.spec.ports.iter().find(|p| n.port_taken(p.host)) {
        Some(p) => Err(Why::PortTaken(p.host)),
        None => Ok(()),
    }
}

pub fn resources(n: &Compact, spec: &VmSpec) -> Result<(), Why> {
    let free_cpu = n.vcpus.saturating_sub(n.used_vcpus);
    if free_cpu < spec.vcpus {
        return Err(Why::Vcpus { need: spec.vcpus, free: free_cpu });
    }
    let free_mem = n.memory_mib.saturating_sub(n.used_memory_mib);
    if free_mem < u64::from(spec.memory_mib) {
        return Err(Why::Memory { need: u64::from(spec.memory_mib), free: free_mem });
    }
    // A VM without a disk fits any node's disk (read only when asked: it is off the first
    // cache line of the view).
    let need_disk = u64::from(spec.disk_gib.unwrap_or(0));
    if need_disk > 0 {
        let free_disk = n.disk_gib.saturating_sub(n.used_disk_gib);
        if need_disk > free_disk {
            return Err(Why::Disk { need: need_disk, free: free_disk });
        }
    }
    Ok(())
}

/// `group_here` gives the VMs of the query's group on the node (read only for a hard group).
pub fn anti_affinity(q: &Query, group_here: impl FnOnce() -> u32) -> Result<(), Why> {
    let p = &q.spec.placement;
    if p.group.is_some() && p.hard && group_here() > 0 {
        return Err(Why::Group);
    }
    Ok(())
}

/// Every stage, in order, the group's count read from the view.
pub fn check(n: &Compact, q: &Query) -> Result<(), Why> {
    check_counted(n, q, || n.group(q.group))
}

/// Every stage, in order, the group's count on the node from `group_here` (a node set may keep
/// the counts beside its views).
pub fn check_counted(n: &Compact, q: &Query, group_here: impl FnOnce() -> u32) -> Result<(), Why> {
    status(n)?;
    features(n, q)?;
    constraints(n, q)?;
    ports(n, q)?;
    resources(n, q.spec)?;
    anti_affinity(q, group_here)
}

/// Every stage, for one node's record.
pub fn check_record(n: &NodeRecord, spec: &VmSpec) -> Result<(), Rejection> {
    let q = Query::local(spec);
    check(&q.view(n), &q).map_err(|w| w.rejection(spec))
}

/// Whether the node's whole capacity could hold the VM.
pub fn fits_capacity(n: &NodeRecord, spec: &VmSpec) -> bool {
    n.vcpus >= spec.vcpus
        && n.memory_mib >= u64::from(spec.memory_mib)
        && n.disk_gib >= u64::from(spec.disk_gib.unwrap_or(0))
}
