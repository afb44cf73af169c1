//! The scheduler's hot path reads a node as a [`Compact`] view: plain numbers in one small
//! block, its labels, ports and groups as small integers (symbols) held inline, so a node looked
//! at costs a cache line or two instead of a walk through `BTreeMap` nodes and heap strings.
//!
//! Symbols are exact, never hashes: a [`Query`] compiles a VM's constraint keys and values and
//! its group into the same numbering as the nodes' views. Two numberings exist:
//!
//! - *local* (the default of [`super::Nodes`]): the VM's own strings, numbered in the query;
//!   a node's string that the VM does not name becomes [`NODE_OTHER`] (and is dropped where
//!   only the VM's strings are ever looked up), so a view is built for one query.
//! - *interned* ([`super::Cluster`]): every string the node set holds, numbered once when a
//!   node registers or a VM is counted; a VM's string no node holds becomes [`SPEC_ABSENT`].
//!
//! The two sentinels differ, so an unknown string of a node never equals one of the VM.

use super::record::{NodeRecord, NodeState};
use crate::placement::Op;
use crate::spec::VmSpec;
use crate::NodeId;

/// A node's string the query does not name (local numbering).
pub const NODE_OTHER: u32 = u32::MAX;
/// A query's string that no node holds (interned numbering).
pub const SPEC_ABSENT: u32 = u32::MAX - 1;

/// Why a node takes no new work, if it does not (the status stage), as a small code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    #[default]
    Open,
    Down,
    Draining,
    Ineligible,
}

/// Labels kept in a view's first cache line; more go to its [`Spill`].
const INLINE_LABELS: usize = 3;
/// Groups kept in a view's second cache line; more go to its [`Spill`].
const INLINE_GROUPS: usize = 4;

/// A node as the scheduler's stages and score read it, in two cache lines. The first holds what
/// every node looked at needs: its status, id, vCPUs and memory, and its first labels; the
/// second its first groups (a view built for one query holds at most its group; an in-memory
/// [`super::Cluster`] counts groups beside the views instead) and its disk, read only for a VM
/// asking for disk. Further labels and groups, and the host ports taken, are in a [`Spill`]
/// behind a pointer, read only when the VM or the node has any.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[repr(C, align(64))]
pub struct Compact {
    pub status: Status,
    pub kvm: bool,
    labels_len: u8,
    /// Groups inline (the first `groups_len` of `groups`).
    groups_len: u8,
    pub vcpus: u32,
    pub used_vcpus: u32,
    _pad: u32,
    pub id: NodeId,
    pub memory_mib: u64,
    pub used_memory_mib: u64,
    /// (key, value) symbols, the first [`INLINE_LABELS`].
    labels: [(u32, u32); INLINE_LABELS],
    // The second cache line.
    /// (group symbol, VMs of the group here), in no order; more in the spill.
    groups: [(u32, u32); INLINE_GROUPS],
    pub disk_gib: u64,
    pub used_disk_gib: u64,
    spill: Option<Box<Spill>>,
}

/// What does not fit a view's two cache lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Spill {
    labels: Vec<(u32, u32)>,
    /// Host ports taken.
    ports: Vec<u16>,
    /// Groups beyond the inline ones, by symbol.
    groups: Vec<(u32, u32)>,
}

impl Compact {
    /// The view of `n`, numbering strings with `sym`; with `keep_unknown` false, labels and
    /// groups whose symbol is [`NODE_OTHER`] and ports for which `port` says no are left out
    /// (a local view, for one query).
    pub fn of(n: &NodeRecord, sym: impl Fn(&str) -> u32, port: impl Fn(u16) -> bool, keep_unknown: bool) -> Compact {
        let status = if n.state == NodeState::Down {
            Status::Down
        } else if n.drain.is_some() {
            Status::Draining
        } else if !n.eligible {
            Status::Ineligible
        } else {
            Status::Open
        };
        let mut c = Compact {
            id: n.id,
            status,
            kvm: n.accel == "kvm",
            vcpus: n.vcpus,
            used_vcpus: n.used.vcpus,
            memory_mib: n.memory_mib,
            used_memory_mib: n.used.memory_mib,
            disk_gib: n.disk_gib,
            used_disk_gib: n.used.disk_gib,
            ..Default::default()
        };
        for (k, v) in &n.labels {
            let k = sym(k);
            if keep_unknown || k != NODE_OTHER {
                c.push_label(k, sym(v));
            }
        }
        let ports: Vec<u16> = n.ports.iter().copied().filter(|p| keep_unknown || port(*p)).collect();
        if !ports.is_empty() {
            c.spill_mut().ports = ports;
        }
        for (g, count) in &n.groups {
            let g = sym(g);
            if keep_unknown || g != NODE_OTHER {
                c.add_group(g, *count);
            }
        }
        c
    }

    /// Takes the groups out of the view (a node set that counts them beside the views).
    pub fn take_groups(&mut self) -> Vec<(u32, u32)> {
        let mut out = self.groups[..self.groups_len as usize].to_vec();
        self.groups = Default::default();
        self.groups_len = 0;
        if let Some(s) = self.spill.as_deref_mut() {
            out.append(&mut s.groups);
        }
        out
    }

    fn spill_mut(&mut self) -> &mut Spill {
        self.spill.get_or_insert_with(Default::default)
    }

    fn push_label(&mut self, k: u32, v: u32) {
        match self.labels.get_mut(self.labels_len as usize) {
            Some(slot) => {
                *slot = (k, v);
                self.labels_len += 1;
            }
            None => self.spill_mut().labels.push((k, v)),
        }
    }

    pub fn label(&self, key: u32) -> Option<u32> {
        let inline = &self.labels[..self.labels_len as usize];
        let found = |ls: &[(u32, u32)]| ls.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
        // The spill is read only when the label is not inline.
        found(inline).or_else(|| self.spill.as_deref().and_then(|s| found(&s.labels)))
    }

    /// Whether host port `p` is taken here.
    pub fn port_taken(&self, p: u16) -> bool {
        self.spill.as_deref().is_some_and(|s| s.ports.contains(&p))
    }

    /// VMs of group `g` here.
    pub fn group(&self, g: u32) -> u32 {
        if let Some((_, c)) = self.groups[..self.groups_len as usize].iter().find(|(s, _)| *s == g) {
            return *c;
        }
        match self.spill.as_deref() {
            Some(s) if !s.groups.is_empty() => {
                s.groups.binary_search_by_key(&g, |(s, _)| *s).map_or(0, |i| s.groups[i].1)
            }
            _ => 0,
        }
    }

    /// Adds `count` VMs of group `g` here.
    fn add_group(&mut self, g: u32, count: u32) {
        let n = self.groups_len as usize;
        if let Some((_, c)) = self.groups[..n].iter_mut().find(|(s, _)| *s == g) {
            *c += count;
        } else if n < INLINE_GROUPS && self.spill.as_deref().is_none_or(|s| s.groups.is_empty()) {
            self.groups[n] = (g, count);
            self.groups_len += 1;
        } else {
            let more = &mut self.spill_mut().groups;
            match more.binary_search_by_key(&g, |(s, _)| *s) {
                Ok(i) => more[i].1 += count,
                Err(i) => more.insert(i, (g, count)),
            }
        }
    }

    /// Counts a VM placed here: its resources and ports (its group is counted by the node set,
    /// [`super::Cluster`]).
    pub fn add(&mut self, spec: &VmSpec) {
        self.used_vcpus += spec.vcpus;
        self.used_memory_mib += u64::from(spec.memory_mib);
        self.used_disk_gib += u64::from(spec.disk_gib.unwrap_or(0));
        if !spec.ports.is_empty() {
            let ports = &mut self.spill_mut().ports;
            for p in &spec.ports {
                if !ports.contains(&p.host) {
                    ports.push(p.host);
                }
            }
        }
    }

    /// Releases what [`Compact::add`] counted.
    pub fn release(&mut self, spec: &VmSpec) {
        self.used_vcpus = self.used_vcpus.saturating_sub(spec.vcpus);
        self.used_memory_mib = self.used_memory_mib.saturating_sub(u64::from(spec.memory_mib));
        self.used_disk_gib = self.used_disk_gib.saturating_sub(u64::from(spec.disk_gib.unwrap_or(0)));
        if let Some(s) = self.spill.as_deref_mut() {
            s.ports.retain(|q| !spec.ports.iter().any(|p| p.host == *q));
        }
    }
}

/// A VM's strings as symbols: per constraint its key and values, in one sequence
/// (`key, n, v1..vn` per constraint, in the spec's order), and its group.
#[derive(Clone, Debug)]
pub struct Query<'s> {
    pub spec: &'s VmSpec,
    syms: Syms,
    pub group: u32,
    /// Local numbering: the strings, by symbol.
    local: Vec<&'s str>,
}

impl<'s> Query<'s> {
    /// Compiles `spec` with the node set's numbering `sym` (interned: [`SPEC_ABSENT`] for a
    /// string no node holds).
    pub fn interned(spec: &'s VmSpec, sym: impl Fn(&str) -> Option<u32>) -> Query<'s> {
        Query::build(spec, |s| sym(s).unwrap_or(SPEC_ABSENT), Vec::new())
    }

    /// Compiles `spec` with its own numbering (for node views built by [`Query::view`]).
    pub fn local(spec: &'s VmSpec) -> Query<'s> {
        let mut local: Vec<&'s str> = Vec::new();
        let p = &spec.placement;
        for c in &p.constraints {
            local.push(&c.key);
            local.extend(op_values(&c.op).iter().map(String::as_str));
        }
        local.extend(p.group.as_deref());
        local.sort_unstable();
        local.dedup();
        let find = |s: &str| local.binary_search(&s).map_or(SPEC_ABSENT, |i| i as u32);
        let q = Query::build(spec, find, Vec::new());
        Query { local, ..q }
    }

    fn build(spec: &'s VmSpec, sym: impl Fn(&str) -> u32, local: Vec<&'s str>) -> Query<'s> {
        let p = &spec.placement;
        let mut syms = Syms::default();
        for c in &p.constraints {
            syms.push(sym(&c.key));
            let vals = op_values(&c.op);
            syms.push(vals.len() as u32);
            for v in vals {
                syms.push(sym(v));
            }
        }
        let group = p.group.as_deref().map_or(SPEC_ABSENT, &sym);
        Query { spec, syms, group, local }
    }

    /// A node's view in this query's local numbering.
    pub fn view(&self, n: &NodeRecord) -> Compact {
        let sym = |s: &str| self.local.binary_search(&s).map_or(NODE_OTHER, |i| i as u32);
        Compact::of(n, sym, |p| self.spec.ports.iter().any(|f| f.host == p), false)
    }

    /// The first constraint that does not hold on `n`, by position.
    pub fn failed_constraint(&self, n: &Compact) -> Option<usize> {
        let syms = self.syms.as_slice();
        let mut at = 0;
        for (i, c) in self.spec.placement.constraints.iter().enumerate() {
            let key = syms[at];
            let len = syms[at + 1] as usize;
            let vals = &syms[at + 2..at + 2 + len];
            at += 2 + len;
            let v = n.label(key);
            let holds = match c.op {
                Op::Eq(_) => v == Some(vals[0]),
                Op::Ne(_) => v != Some(vals[0]),
                Op::In(_) => v.is_some_and(|v| vals.contains(&v)),
                Op::NotIn(_) => !v.is_some_and(|v| vals.contains(&v)),
                Op::Exists => v.is_some(),
                Op::Missing => v.is_none(),
            };
            if !holds {
                return Some(i);
            }
        }
        None
    }
}

/// Symbols a query holds without allocating: a few constraints' worth (a VM has at most 16
/// constraints of at most 32 values each; beyond this they go to the heap).
const INLINE_SYMS: usize = 14;

#[derive(Clone, Debug)]
enum Syms {
    Inline { len: u8, buf: [u32; INLINE_SYMS] },
    Heap(Vec<u32>),
}

impl Default for Syms {
    fn default() -> Syms {
        Syms::Inline { len: 0, buf: [0; INLINE_SYMS] }
    }
}

impl Syms {
    fn push(&mut self, x: u32) {
        match self {
            Syms::Inline { len, buf } if (*len as usize) < INLINE_SYMS => {
                buf[*len as usize] = x;
                *len += 1;
            }
            Syms::Inline { len, buf } => {
                let mut v = buf[..*len as usize].to_vec();
                v.push(x);
                *self = Syms::Heap(v);
            }
            Syms::Heap(v) => v.push(x),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            Syms::Inline { len, buf } => &buf[..*len as usize],
            Syms::Heap(v) => v,
        }
    }
}

fn op_values(op: &Op) -> &[String] {
    match op {
        Op::Eq(v) | Op::Ne(v) => std::slice::from_ref(v),
        Op::In(vs) | Op::NotIn(vs) => vs,
        Op::Exists | Op::Missing => &[],
    }
}
