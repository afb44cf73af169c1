//! A node set held in memory for many placements: the records, and beside them each node's
//! [`Compact`] view with its strings interned once (so a placement compiles the VM's few
//! strings and then compares small integers), and the VMs per group and node in one table
//! ([`GroupCounts`]). Adding or releasing a VM updates all three.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::compact::{Compact, Query};
use super::groups::GroupCounts;
use super::record::NodeRecord;
use super::{Nodes, View};
use crate::spec::VmSpec;
use crate::NodeId;

#[derive(Clone, Debug, Default)]
pub struct Cluster {
    records: Vec<NodeRecord>,
    views: Vec<Compact>,
    groups: GroupCounts,
    symbols: HashMap<String, u32, Fast>,
    by_id: HashMap<NodeId, usize, Fast>,
}

/// A multiply-rotate hash (as rustc's own maps use) for the interned strings and node ids: a
/// few nanoseconds where SipHash takes tens. The keys are node labels, group names and node
/// ids of an in-memory set; a crafted collision would slow its lookups, never change a result.
type Fast = BuildHasherDefault<FastHasher>;

#[derive(Default)]
pub struct FastHasher(u64);

impl FastHasher {
    fn mix(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.mix(u64::from_le_bytes(c.try_into().unwrap_or_default()));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(b));
        }
    }

    fn write_u8(&mut self, x: u8) {
        self.mix(u64::from(x));
    }

    fn write_u64(&mut self, x: u64) {
        self.mix(x);
    }

    fn write_usize(&mut self, x: usize) {
        self.mix(x as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Cluster {
    /// The nodes, in this (slot) order.
    pub fn new(records: Vec<NodeRecord>) -> Cluster {
        let mut c = Cluster::default();
        for n in records {
            let slot = c.records.len();
            c.by_id.insert(n.id, slot);
            let mut strings: Vec<&str> = n.labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]).collect();
            strings.extend(n.groups.keys().map(String::as_str));
            for s in strings {
                intern(&mut c.symbols, s);
            }
            let mut view = Compact::of(&n, |s| c.symbols[s], |_| true, true);
            for (g, count) in view.take_groups() {
                c.groups.add(g, slot as u32, count);
            }
            c.views.push(view);
            c.records.push(n);
        }
        c
    }

    pub fn records(&self) -> &[NodeRecord] {
        &self.records
    }

    /// Counts a VM placed on node `id` (as `apply` does); false if no such node.
    pub fn add(&mut self, id: NodeId, spec: &VmSpec) -> bool {
        let Some(&i) = self.by_id.get(&id) else { return false };
        if let Some(g) = spec.placement.group.as_deref() {
            let g = intern(&mut self.symbols, g);
            self.groups.add(g, i as u32, 1);
        }
        self.records[i].add(spec);
        self.views[i].add(spec);
        true
    }

    /// Releases a VM counted on node `id`; false if no such node.
    pub fn release(&mut self, id: NodeId, spec: &VmSpec) -> bool {
        let Some(&i) = self.by_id.get(&id) else { return false };
        if let Some(&g) = spec.placement.group.as_deref().and_then(|g| self.symbols.get(g)) {
            self.groups.release(g, i as u32);
        }
        self.records[i].release(spec);
        self.views[i].release(spec);
        true
    }
}

fn intern(symbols: &mut HashMap<String, u32, Fast>, s: &str) -> u32 {
    if let Some(&v) = symbols.get(s) {
        return v;
    }
    let v = symbols.len() as u32;
    symbols.insert(s.to_string(), v);
    v
}

impl Nodes for Cluster {
    fn count(&self) -> usize {
        self.records.len()
    }

    fn at(&self, i: usize) -> Option<Cow<'_, NodeRecord>> {
        self.records.get(i).map(Cow::Borrowed)
    }

    fn query<'s>(&self, spec: &'s VmSpec) -> Query<'s> {
        Query::interned(spec, |s| self.symbols.get(s).copied())
    }

    fn view(&self, i: usize, _: &Query) -> Option<View<'_>> {
        self.views.get(i).map(View::Held)
    }

    fn group(&self, i: usize, _: &Compact, q: &Query) -> u32 {
        self.groups.get(q.group, i as u32)
    }

    fn warm(&self, i: usize, q: &Query) {
        // A read of the view's first cache line that the optimiser keeps, of its second when
        // the query reads it (disk), and of the group's count here (its own address, so the
        // misses of the nodes warmed together overlap).
        if let Some(v) = self.views.get(i) {
            std::hint::black_box(v.status);
            if q.spec.disk_gib.unwrap_or(0) > 0 {
                std::hint::black_box(v.disk_gib);
            }
            if q.spec.placement.group.is_some() {
                std::hint::black_box(self.groups.get(q.group, i as u32));
            }
        }
    }
}
