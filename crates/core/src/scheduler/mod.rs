//! Placement: which node runs a VM. Pure, deterministic, and explained — every node that cannot
//! take a VM says which stage rejected it and why, so "why is my VM pending?" has an answer.
//!
//! It runs inside `apply`, so the plan and the commit are one step: a stale plan can never
//! oversubscribe a node (Nomad re-checks plans on its leader for the same reason). Each node's
//! record carries the aggregates placement needs (resources in use, host ports taken, VMs per
//! anti-affinity group), kept up to date by `apply`, so a placement never scans the VMs.
//!
//! The pipeline ([`stages`]), cheapest checks first: the node is ready and eligible → the
//! pinned node, when asked → the features the VM requires (`kvm`) → its constraints on node
//! labels → its host ports are free there → vCPUs, memory and disk fit → hard anti-affinity
//! (no other VM of its group there). The feasible nodes are ranked ([`score`]): bin-packing
//! (default) or spreading, a penalty for sharing a node with members of a soft group, and one
//! for label values (`spread`) that already hold more of them; the best wins, the lowest id on
//! ties. With many nodes only a sample is ranked: nodes are visited in an order drawn from a
//! seed (the log index), and the search stops after [`sample_size`] feasible ones — the
//! ~log2(N) of Nomad, at least 8 — which keeps a placement cheap at thousands of nodes.

mod cluster;
pub mod compact;
mod groups;
mod record;
pub mod score;
pub mod stages;
#[cfg(test)]
mod tests;

pub use cluster::Cluster;
pub use compact::{Compact, Query};
pub use record::{Drain, NodeRecord, NodeState, Usage};

use std::borrow::Cow;

/// The nodes the scheduler chooses from, by position (a dense order): a slice in tests, the
/// replicated state's node table in `apply` (read only where the sample visits), a [`Cluster`]
/// in memory.
pub trait Nodes {
    fn count(&self) -> usize;
    fn at(&self, i: usize) -> Option<Cow<'_, NodeRecord>>;

    /// `spec` compiled to the numbering of [`Nodes::view`] (by default, its own).
    fn query<'s>(&self, spec: &'s VmSpec) -> Query<'s> {
        Query::local(spec)
    }

    /// The node at `i` as the stages read it, numbered as `q` (by default, built from its
    /// record for the query).
    fn view(&self, i: usize, q: &Query) -> Option<View<'_>> {
        self.at(i).map(|n| View::Owned(Box::new(q.view(&n))))
    }

    /// VMs of the query's group on the node at `i`, whose view is `n` (by default, as the view
    /// counts them).
    fn group(&self, _i: usize, n: &Compact, q: &Query) -> u32 {
        n.group(q.group)
    }

    /// A hint that the node at `i` is looked at soon for `q` (an in-memory set reads it now:
    /// the search calls it for several nodes in a row, so their cache misses overlap each other
    /// and the work on the nodes before them).
    fn warm(&self, _i: usize, _q: &Query) {}
}

/// A node's view as [`Nodes::view`] gives it: held by the node set, or built for the query (a
/// pointer either way, so the search moves no view around).
pub enum View<'a> {
    Held(&'a Compact),
    Owned(Box<Compact>),
}

impl std::ops::Deref for View<'_> {
    type Target = Compact;

    fn deref(&self) -> &Compact {
        match self {
            View::Held(v) => v,
            View::Owned(v) => v,
        }
    }
}

impl Nodes for [NodeRecord] {
    fn count(&self) -> usize {
        self.len()
    }

    fn at(&self, i: usize) -> Option<Cow<'_, NodeRecord>> {
        self.get(i).map(Cow::Borrowed)
    }
}
pub use stages::{Rejection, STAGES};

use crate::spec::VmSpec;
use crate::NodeId;

/// How a node fared for one VM.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    Feasible { score: f64 },
    Rejected(Rejection),
}

/// The scheduler's answer: the chosen node (if any), and what it found about each node it
/// looked at (all of them when asked to explain).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub chosen: Option<NodeId>,
    pub nodes: Vec<(NodeId, Verdict)>,
    /// Nodes not looked at (the sample was complete before them).
    pub unvisited: usize,
    /// Nodes rejected, by stage ([`STAGES`]), counted whether or not verdicts are recorded.
    pub rejected: [u32; STAGES.len()],
}

/// How a placement attempt ended, for [`Tally`] (the labels in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlacementOutcome {
    /// A node was chosen.
    Placed,
    /// None was; the VM (or task) waits for capacity (newly, or still after a retry).
    Pending,
    /// None was; the command was refused.
    Refused,
}

/// What is placed: a VM or a task's attempt (the labels in this order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Vm,
    Task,
}

/// The scheduler's work while commands applied, counted for the node's metrics: plain numbers
/// the store that `apply` writes into may collect ([`crate::Store::tally`]), never stored or
/// replicated, so apply stays a pure function of the state and the command.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Placement attempts by kind (VM, task) and outcome (placed, pending, refused).
    pub placements: [[u64; 3]; 2],
    /// Nodes found unfit, by the stage that rejected them ([`STAGES`]).
    pub rejections: [u64; STAGES.len()],
}

impl Tally {
    /// Counts one attempt and the rejections its plan met.
    pub fn count(&mut self, kind: Kind, outcome: PlacementOutcome, plan: &Plan) {
        self.placements[kind as usize][outcome as usize] += 1;
        for (t, n) in self.rejections.iter_mut().zip(plan.rejected) {
            *t += u64::from(n);
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Tally::default()
    }

    /// Adds `other`'s counts.
    pub fn add(&mut self, other: &Tally) {
        for (a, b) in self.placements.iter_mut().flatten().zip(other.placements.iter().flatten()) {
            *a += b;
        }
        for (a, b) in self.rejections.iter_mut().zip(other.rejections) {
            *a += b;
        }
    }
}

/// The label values of [`Kind`] and [`PlacementOutcome`], in order.
pub const KINDS: [&str; 2] = ["vm", "task"];
pub const OUTCOMES: [&str; 3] = ["placed", "pending", "refused"];

impl Plan {
    /// Why no node was chosen, one clause per node looked at (bounded), for errors and `vm get`.
    pub fn why_not(&self) -> String {
        const SHOWN: usize = 8;
        let rejected: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|(id, v)| match v {
                Verdict::Rejected(r) => Some(format!("node {id}: {r}")),
                Verdict::Feasible { .. } => None,
            })
            .collect();
        if rejected.is_empty() {
            return "no node has registered its capacity yet".into();
        }
        let mut s = rejected.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("; ");
        if rejected.len() > SHOWN {
            s.push_str(&format!("; and {} more", rejected.len() - SHOWN));
        }
        s
    }
}

/// How many feasible nodes to rank among `n`: about log2(n) (Nomad's limit), and every one of
/// a small cluster (up to 8).
pub fn sample_size(n: usize) -> usize {
    ((usize::BITS - n.leading_zeros()) as usize).max(8)
}

/// [`Nodes::warm`] is told about the nodes to visit this many at a time, a batch ahead of the
/// one looked at.
const WARM_BATCH: usize = 8;

/// A deterministic visiting order of `n` nodes from `seed`: a start and a stride coprime with
/// `n`, so every node is visited once, without allocating. Node `i` of the order is
/// `(start + i * stride) % n` ([`start_stride`]); replicas of every version must visit alike,
/// since the order decides the choice inside `apply`.
fn order(n: usize, seed: u64) -> impl Iterator<Item = usize> {
    let (start, stride) = start_stride(n, seed);
    // Computed by adding (start and stride are below n, or both 0 and 1 for n ≤ 1, so one
    // subtraction wraps it): no division per node.
    let mut at = start;
    (0..n).map(move |_| {
        let i = at;
        at += stride;
        if at >= n {
            at -= n;
        }
        i
    })
}

/// The start and stride of [`order`].
fn start_stride(n: usize, seed: u64) -> (usize, usize) {
    let mut x = seed ^ 0x9E37_79B9_7F4A_7C15;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let start = if n == 0 { 0 } else { (x % n as u64) as usize };
    let mut stride = if n <= 1 { 1 } else { 1 + ((x >> 32) % (n as u64 - 1)) as usize };
    while gcd(stride, n.max(1)) != 1 {
        stride += 1;
    }
    (start, stride)
}

/// Binary GCD (no division: a placement computes one or a few).
fn gcd(mut a: usize, mut b: usize) -> usize {
    if a == 0 || b == 0 {
        return a | b;
    }
    let shift = (a | b).trailing_zeros();
    a >>= a.trailing_zeros();
    loop {
        b >>= b.trailing_zeros();
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        b -= a;
        if b == 0 {
            return a << shift;
        }
    }
}

/// Places `spec` among `nodes` (by id). `pinned` restricts it to one node; `explain` looks at
/// every node instead of a sample; `seed` draws the visiting order.
///
/// A placement that finds a node records no verdicts unless asked to explain (the hot path
/// allocates nothing); one that finds none looks again, recording why each node refused.
pub fn plan<N: Nodes + ?Sized>(nodes: &N, spec: &VmSpec, pinned: Option<NodeId>, seed: u64, explain: bool) -> Plan {
    let p = search(nodes, spec, pinned, seed, explain, explain);
    if p.chosen.is_none() && !explain {
        return search(nodes, spec, pinned, seed, false, true);
    }
    p
}

fn search<N: Nodes + ?Sized>(
    nodes: &N,
    spec: &VmSpec,
    pinned: Option<NodeId>,
    seed: u64,
    explain: bool,
    record: bool,
) -> Plan {
    let mut out = Plan { chosen: None, nodes: Vec::new(), unvisited: 0, rejected: [0; STAGES.len()] };
    let spread = score::SpreadCounts::of(nodes, spec);
    let q = nodes.query(spec);
    let total = nodes.count();
    let limit = if explain || pinned.is_some() { usize::MAX } else { sample_size(total) };
    let mut feasible = 0;
    let mut best: Option<(f64, NodeId)> = None;
    let mut visited = 0;
    let mut ahead = order(total, seed);
    for (k, i) in order(total, seed).enumerate() {
        if k % WARM_BATCH == 0 {
            let batches = if k == 0 { 2 } else { 1 };
            for j in ahead.by_ref().take(batches * WARM_BATCH) {
                nodes.warm(j, &q);
            }
        }
        let Some(n) = nodes.view(i, &q) else { continue };
        if pinned.is_some_and(|p| p != n.id) {
            continue;
        }
        visited += 1;
        let group_here = || nodes.group(i, &n, &q);
        match stages::check_counted(&n, &q, group_here) {
            Err(w) => {
                out.rejected[w.stage_index()] += 1;
                if record {
                    out.nodes.push((n.id, Verdict::Rejected(w.rejection(spec))));
                }
            }
            Ok(()) => {
                let full = if spread.needs_record() { nodes.at(i) } else { None };
                let s = score::score(&n, &q, &spread, full.as_deref(), group_here);
                if record {
                    out.nodes.push((n.id, Verdict::Feasible { score: s }));
                }
                if best.is_none_or(|(b, id)| s > b || (s == b && n.id < id)) {
                    best = Some((s, n.id));
                }
                feasible += 1;
                if feasible >= limit {
                    break;
                }
            }
        }
    }
    out.unvisited = if pinned.is_some() { 0 } else { total - visited };
    out.chosen = best.map(|(_, id)| id);
    out.nodes.sort_by_key(|(id, _)| *id);
    out
}

/// Whether some node could hold `spec` at all, were it empty (else the VM is refused, not
/// queued as pending).
pub fn could_ever_fit<N: Nodes + ?Sized>(nodes: &N, spec: &VmSpec) -> bool {
    let n = nodes.count();
    n == 0 || (0..n).any(|i| nodes.at(i).is_some_and(|r| stages::fits_capacity(&r, spec)))
}
