//! Ranking feasible nodes: higher is better.
//!
//! - Strategy: bin-packing scores the node's fill after placement (vCPU and memory share,
//!   0..2), so VMs pack onto the fullest nodes that fit and whole nodes stay free; spreading
//!   scores the room left instead.
//! - Soft anti-affinity: −1 per VM of the group already on the node (hard anti-affinity is a
//!   feasibility stage, not a score).
//! - Spread over a label (`spread zone`): −1 × the share of the group's VMs (or all VMs, without
//!   a group) already on nodes with this node's value of the label; a node without the label
//!   counts as the fullest value.

use std::collections::BTreeMap;

use super::compact::{Compact, Query};
use super::record::NodeRecord;
use crate::placement::Strategy;
use crate::spec::VmSpec;

/// For a spread over a label: VMs (of the group, or all) per label value, counted once per
/// placement over the nodes.
#[derive(Debug, Default)]
pub struct SpreadCounts {
    key: Option<String>,
    per_value: BTreeMap<String, u64>,
    max: u64,
    total: u64,
}

impl SpreadCounts {
    pub fn of<N: super::Nodes + ?Sized>(nodes: &N, spec: &VmSpec) -> SpreadCounts {
        let Some(key) = &spec.placement.spread else { return SpreadCounts::default() };
        let group = spec.placement.group.as_ref();
        let mut per_value: BTreeMap<String, u64> = BTreeMap::new();
        let mut total = 0;
        for n in (0..nodes.count()).filter_map(|i| nodes.at(i)) {
            let c = match group {
                Some(g) => u64::from(n.groups.get(g).copied().unwrap_or(0)),
                None => u64::from(n.used.vms),
            };
            total += c;
            if let Some(v) = n.labels.get(key) {
                *per_value.entry(v.clone()).or_default() += c;
            }
        }
        let max = per_value.values().copied().max().unwrap_or(0);
        SpreadCounts { key: Some(key.clone()), per_value, max, total }
    }

    /// Whether the penalty needs the node's record (a spread over a label).
    pub fn needs_record(&self) -> bool {
        self.key.is_some() && self.total > 0
    }

    fn penalty(&self, n: Option<&NodeRecord>) -> f64 {
        let (Some(key), Some(n)) = (&self.key, n) else { return 0.0 };
        if self.total == 0 {
            return 0.0;
        }
        let c = n.labels.get(key).map_or(self.max, |v| self.per_value.get(v).copied().unwrap_or(0));
        c as f64 / self.total as f64
    }
}

fn share(used: u64, need: u64, cap: u64) -> f64 {
    if cap == 0 {
        return 1.0;
    }
    ((used + need) as f64 / cap as f64).min(1.0)
}

/// The score of node `n` for the query's VM; `record` is the node's record when the spread
/// needs it ([`SpreadCounts::needs_record`]); `group_here` the VMs of the query's group on the
/// node (read only for a soft group).
pub fn score(
    n: &Compact,
    q: &Query,
    spread: &SpreadCounts,
    record: Option<&NodeRecord>,
    group_here: impl FnOnce() -> u32,
) -> f64 {
    let spec = q.spec;
    let fill = share(n.used_memory_mib, u64::from(spec.memory_mib), n.memory_mib)
        + share(u64::from(n.used_vcpus), u64::from(spec.vcpus), u64::from(n.vcpus));
    let mut s = match spec.placement.strategy {
        Strategy::Binpack => fill,
        Strategy::Spread => 2.0 - fill,
    };
    let p = &spec.placement;
    if p.group.is_some() && !p.hard {
        s -= f64::from(group_here());
    }
    s - spread.penalty(record)
}
