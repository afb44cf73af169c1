//! Node records in the replicated state: registration, liveness transitions (proposed by the
//! leader), eligibility, drains and removal, and the dense slot order the scheduler samples from
//! (`Table::NodeSlots`: slot → id, kept dense by moving the last node into a removed one's slot).

use std::borrow::Cow;

use super::{decode, encode, tasks, vms};
use crate::command::{CommandError, DrainSpec, Outcome, Registration, Response};
use crate::scheduler::{Drain, NodeRecord, NodeState, Nodes};
use crate::spec::validate_labels;
use crate::store::{ReadStore, Store, StoreError, Table};
use crate::NodeId;

const META_NODE_COUNT: &[u8] = b"node_count";

pub fn get(store: &impl ReadStore, id: NodeId) -> Result<Option<NodeRecord>, StoreError> {
    match store.get(Table::Nodes, &id.to_be_bytes())? {
        None => Ok(None),
        Some(b) => decode(Table::Nodes, &id.to_be_bytes(), &b).map(Some),
    }
}

pub fn put(store: &mut impl Store, n: &NodeRecord) -> Result<(), StoreError> {
    store.put(Table::Nodes, &n.id.to_be_bytes(), &encode(n))
}

fn count(store: &impl ReadStore) -> Result<u32, StoreError> {
    Ok(store
        .get(Table::Meta, META_NODE_COUNT)?
        .and_then(|b| <[u8; 4]>::try_from(b.as_slice()).ok())
        .map_or(0, u32::from_be_bytes))
}

fn set_count(store: &mut impl Store, n: u32) -> Result<(), StoreError> {
    store.put(Table::Meta, META_NODE_COUNT, &n.to_be_bytes())
}

/// The registered nodes as the scheduler sees them: by slot, read only where it looks.
pub struct NodeTable<'a, S: ReadStore> {
    store: &'a S,
    count: usize,
}

impl<'a, S: ReadStore> NodeTable<'a, S> {
    pub fn new(store: &'a S) -> Result<Self, StoreError> {
        Ok(NodeTable { store, count: count(store)? as usize })
    }
}

impl<S: ReadStore> Nodes for NodeTable<'_, S> {
    fn count(&self) -> usize {
        self.count
    }

    fn at(&self, i: usize) -> Option<Cow<'_, NodeRecord>> {
        let id = self.store.get(Table::NodeSlots, &(i as u32).to_be_bytes()).ok()??;
        let id = u64::from_be_bytes(id.as_slice().try_into().ok()?);
        get(self.store, id).ok()?.map(Cow::Owned)
    }
}

fn not_found(id: NodeId) -> Outcome {
    Err(CommandError::NotFound(format!("node {id} is not a registered node")))
}

pub fn register(store: &mut impl Store, index: u64, now: u64, r: &Registration) -> Result<Outcome, StoreError> {
    if let Err(e) = validate_labels(&r.labels) {
        return Ok(Err(e.into()));
    }
    if store.get(Table::Members, &r.id.to_be_bytes())?.is_none() {
        return Ok(Err(CommandError::FailedPrecondition(format!("node {} is not a member of the cluster", r.id))));
    }
    record(store, index, now, r)?;
    vms::place_pending(store, index, now)?;
    Ok(Ok(Response::Done))
}

/// The first id of a simulated node (2^40): far above any member's id in practice, and a
/// simulated node is never a member.
pub const SIMULATED_NODE_IDS: NodeId = 1 << 40;
/// Simulated nodes registered by one command (so an entry stays small).
pub const MAX_SIMULATED_PER_COMMAND: usize = 1000;

/// Registers simulated nodes (benchmarks only, see [`crate::Command::NodeRegisterSimulated`]):
/// all of them or, when one breaks a rule, none.
pub fn register_simulated(
    store: &mut impl Store,
    index: u64,
    now: u64,
    regs: &[Registration],
) -> Result<Outcome, StoreError> {
    use crate::ValidationError;
    if regs.is_empty() || regs.len() > MAX_SIMULATED_PER_COMMAND {
        let rule = format!("must hold 1 to {MAX_SIMULATED_PER_COMMAND} nodes (got {})", regs.len());
        return Ok(Err(ValidationError::new("nodes", rule).into()));
    }
    for r in regs {
        if let Err(e) = validate_labels(&r.labels) {
            return Ok(Err(e.into()));
        }
        if r.id < SIMULATED_NODE_IDS {
            let rule = format!("a simulated node's id must be at least {SIMULATED_NODE_IDS} (got {})", r.id);
            return Ok(Err(ValidationError::new("id", rule).into()));
        }
        if store.get(Table::Members, &r.id.to_be_bytes())?.is_some() {
            return Ok(Err(CommandError::FailedPrecondition(format!("node {} is a member, not simulated", r.id))));
        }
    }
    for r in regs {
        record(store, index, now, r)?;
    }
    vms::place_pending(store, index, now)?;
    Ok(Ok(Response::Done))
}

/// Records (or updates) a registration; a node that was down is ready again.
fn record(store: &mut impl Store, index: u64, now: u64, r: &Registration) -> Result<(), StoreError> {
    let mut n = match get(store, r.id)? {
        Some(n) => n,
        None => {
            let slot = count(store)?;
            store.put(Table::NodeSlots, &slot.to_be_bytes(), &r.id.to_be_bytes())?;
            set_count(store, slot + 1)?;
            NodeRecord { id: r.id, slot, eligible: true, state_since_ms: now, ..Default::default() }
        }
    };
    n.vcpus = r.vcpus;
    n.memory_mib = r.memory_mib;
    n.disk_gib = r.disk_gib;
    n.accel = r.accel.clone();
    n.backend = r.backend.clone();
    n.labels = r.labels.clone();
    n.agent_version = r.agent_version.clone();
    let was_down = n.state == NodeState::Down;
    put(store, &n)?;
    // A node that left and registers again is a node like any other: its marks wait for its
    // reports, or for it to be declared down.
    store.delete(Table::Placements, &departed_key(r.id))?;
    if was_down {
        let _ = set_state(store, index, now, r.id, NodeState::Ready)?;
    }
    Ok(())
}

/// A liveness transition. Down: the node's VMs move (per their policy); for a node that left
/// ([`departed`]), what waited for it to stop may start. Ready: it takes work again, and
/// waiting VMs may go there.
pub fn set_state(
    store: &mut impl Store,
    index: u64,
    now: u64,
    id: NodeId,
    state: NodeState,
) -> Result<Outcome, StoreError> {
    let Some(mut n) = get(store, id)? else {
        if state == NodeState::Down && departed(store, id)? {
            departed_fenced(store, index, now, id)?;
            return Ok(Ok(Response::Done));
        }
        return Ok(not_found(id));
    };
    if n.state == state {
        return Ok(Ok(Response::Done));
    }
    n.state = state;
    n.state_since_ms = now;
    put(store, &n)?;
    match state {
        NodeState::Down => {
            for name in vms::on_node(store, id)? {
                vms::node_lost(store, index, now, &name, id, false)?;
            }
            for name in vms::handing_off_from(store, id)? {
                // A node declared down has fenced itself: it runs nothing any more.
                let _ = vms::handoff(store, index, now, &name, id)?;
            }
            tasks::node_lost(store, index, now, id)?;
            vms::place_pending(store, index, now)?;
        }
        NodeState::Ready => {
            vms::place_pending(store, index, now)?;
        }
    }
    Ok(Ok(Response::Done))
}

pub fn eligibility(
    store: &mut impl Store,
    index: u64,
    now: u64,
    id: NodeId,
    eligible: bool,
) -> Result<Outcome, StoreError> {
    let Some(mut n) = get(store, id)? else { return Ok(not_found(id)) };
    n.eligible = eligible;
    put(store, &n)?;
    if eligible {
        vms::place_pending(store, index, now)?;
    }
    Ok(Ok(Response::Done))
}

pub fn drain(
    store: &mut impl Store,
    index: u64,
    now: u64,
    id: NodeId,
    d: Option<DrainSpec>,
) -> Result<Outcome, StoreError> {
    let Some(mut n) = get(store, id)? else { return Ok(not_found(id)) };
    match d {
        Some(d) => {
            if d.parallel == 0 {
                return Ok(Err(crate::ValidationError::new("parallel", "must be at least 1 (got 0)").into()));
            }
            n.eligible = false;
            n.drain =
                Some(Drain { deadline_ms: now.saturating_add(d.deadline_ms), parallel: d.parallel, started_ms: now });
            put(store, &n)?;
            drain_done_if_empty(store, id)?;
        }
        None => {
            n.drain = None;
            put(store, &n)?;
        }
    }
    let _ = index;
    Ok(Ok(Response::Done))
}

/// A drain ends once nothing is placed on the node; it stays ineligible until enabled.
pub fn drain_done_if_empty(store: &mut impl Store, id: NodeId) -> Result<(), StoreError> {
    let Some(mut n) = get(store, id)? else { return Ok(()) };
    if n.drain.is_some() && vms::on_node(store, id)?.is_empty() {
        n.drain = None;
        put(store, &n)?;
    }
    Ok(())
}

/// The key of a node that left while it was ready: `0 | 'd' | id` in `Table::Placements` (no
/// node has id 0), so the leader finds them all with one small scan.
fn departed_key(id: NodeId) -> Vec<u8> {
    let mut k = 0u64.to_be_bytes().to_vec();
    k.push(b'd');
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Whether node `id` left the cluster while it was ready, and is not yet known to have stopped
/// what it ran: it was not declared down, so its lease may not have run out (it may not even
/// know it left). What it ran starts elsewhere only once the leader declares it down as it
/// would a silent member ([`set_state`]), a full `down_after` after it last heard from it.
pub fn departed(store: &impl ReadStore, id: NodeId) -> Result<bool, StoreError> {
    Ok(store.get(Table::Placements, &departed_key(id))?.is_some())
}

/// Every node that left and may still run what it was given ([`departed`]).
pub fn all_departed(store: &impl ReadStore) -> Result<Vec<NodeId>, StoreError> {
    let prefix = departed_key(0);
    let prefix = &prefix[..9];
    Ok(store
        .scan(Table::Placements, prefix, usize::MAX)?
        .into_iter()
        .filter_map(|(k, _)| <[u8; 8]>::try_from(&k[9..]).ok().map(NodeId::from_be_bytes))
        .collect())
}

/// A node that left is now known to run nothing (declared down): what waited for it may start.
fn departed_fenced(store: &mut impl Store, index: u64, now: u64, id: NodeId) -> Result<(), StoreError> {
    store.delete(Table::Placements, &departed_key(id))?;
    for name in vms::handing_off_from(store, id)? {
        let _ = vms::handoff(store, index, now, &name, id)?;
    }
    Ok(())
}

/// A member left: its record and slot go (the last node takes the slot), and its VMs move. If
/// it was ready, it may still run them until its lease runs out (it hears of its removal late
/// or never, and the leader answered its heartbeats until now): it stays [`departed`], and its
/// VMs start elsewhere only once it is declared down.
pub fn remove(store: &mut impl Store, index: u64, now: u64, id: NodeId) -> Result<(), StoreError> {
    let Some(n) = get(store, id)? else { return Ok(()) };
    let fenced = n.state == NodeState::Down;
    if !fenced {
        store.put(Table::Placements, &departed_key(id), &[])?;
    }
    // Its capacity row goes first: while its VMs and tasks move, it is no candidate for them.
    let last = count(store)?.saturating_sub(1);
    if n.slot != last {
        if let Some(moved) = store.get(Table::NodeSlots, &last.to_be_bytes())? {
            store.put(Table::NodeSlots, &n.slot.to_be_bytes(), &moved)?;
            let moved =
                u64::from_be_bytes(moved.as_slice().try_into().map_err(|_| StoreError("bad node slot".into()))?);
            if let Some(mut m) = get(store, moved)? {
                m.slot = n.slot;
                put(store, &m)?;
            }
        }
    }
    store.delete(Table::NodeSlots, &last.to_be_bytes())?;
    set_count(store, last)?;
    store.delete(Table::Nodes, &id.to_be_bytes())?;
    for name in vms::on_node(store, id)? {
        vms::node_lost(store, index, now, &name, id, true)?;
    }
    if fenced {
        for name in vms::handing_off_from(store, id)? {
            let _ = vms::handoff(store, index, now, &name, id)?;
        }
    }
    tasks::node_lost(store, index, now, id)
}

/// After a restore: no node is known yet; every VM waits to be placed again.
pub fn forget_all(store: &mut impl Store) -> Result<(), StoreError> {
    store.clear(Table::Nodes)?;
    store.clear(Table::NodeSlots)?;
    set_count(store, 0)?;
    vms::unplace_all(store)
}
