//! A node set held in memory for many placements: the records, and beside them each node's
//! [`Compact`] view with its strings interned once (so a placement compiles the VM's few
//! strings and then compares small integers). Adding or releasing a VM updates both.

use std::borrow::Cow;
use std::collections::HashMap;

use super::compact::{Compact, Query};
use super::record::NodeRecord;
use super::Nodes;
use crate::spec::VmSpec;
use crate::NodeId;

#[derive(Clone, Debug, Default)]
pub struct Cluster {
    records: Vec<NodeRecord>,
    views: Vec<Compact>,
    symbols: HashMap<String, u32>,
    by_id: HashMap<NodeId, usize>,
}

impl Cluster {
    /// The nodes, in this (slot) order.
    pub fn new(records: Vec<NodeRecord>) -> Cluster {
        let mut c = Cluster::default();
        for n in records {
            c.by_id.insert(n.id, c.records.len());
            let mut strings: Vec<&str> = n.labels.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]).collect();
            strings.extend(n.groups.keys().map(String::as_str));
            for s in strings {
                intern(&mut c.symbols, s);
            }
            let view = Compact::of(&n, |s| c.symbols[s], |_| true, true);
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
        let g = spec.placement.group.as_deref().map(|g| intern(&mut self.symbols, g));
        self.records[i].add(spec);
        self.views[i].add(spec, g);
        true
    }

    /// Releases a VM counted on node `id`; false if no such node.
    pub fn release(&mut self, id: NodeId, spec: &VmSpec) -> bool {
        let Some(&i) = self.by_id.get(&id) else { return false };
        let g = spec.placement.group.as_deref().and_then(|g| self.symbols.get(g).copied());
        self.records[i].release(spec);
        self.views[i].release(spec, g);
        true
    }
}

fn intern(symbols: &mut HashMap<String, u32>, s: &str) -> u32 {
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

    fn view(&self, i: usize, _: &Query) -> Option<Cow<'_, Compact>> {
        self.views.get(i).map(Cow::Borrowed)
    }

    fn warm(&self, i: usize, q: &Query) {
        // A read of the view's first cache line that the optimiser keeps, and of its second
        // when the query reads it (a group, or disk).
        if let Some(v) = self.views.get(i) {
            std::hint::black_box(v.status);
            if q.reads_second_line() {
                std::hint::black_box(v.disk_gib);
                // A group's count may be in the spill: looked up now, it is in the cache when
                // the stages or the score need it.
                if q.spec.placement.group.is_some() {
                    std::hint::black_box(v.group(q.group));
                }
            }
        }
    }
}
