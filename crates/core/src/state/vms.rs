//! VM commands: create (placed now, or pending until capacity appears), delete, start/stop
//! (stopped VMs release their resources; starting one re-checks and may move it), restart,
//! reports, moves with a handoff, and what happens to VMs when their node is lost.
//!
//! `Table::Placements` indexes which VMs are on which node (`node | 'p' | name`) and which are
//! moving away from it (`node | 'h' | name`), so a node's VMs are found without a scan.
//!
//! **A name runs on one node at a time.** A node may run a VM for a while after the cluster
//! moved it away (it applies the log late, or cannot hear at all, until its lease runs out), so
//! whenever a VM leaves a node that is still ready — moved by a drain, started again where it no
//! longer fits, or deleted — that node keeps a handoff mark (`node | 'h' | name`), and the VM's
//! next placement, under the same name, starts only once that node reported it stopped there
//! ([`handoff`]) or was declared down (which fenced it). A node that leaves the cluster while
//! ready keeps its marks, and gets them for the VMs placed on it, until the leader judges that
//! its lease has certainly run out, as it would declare it down ([`nodes::departed`]). For a
//! deleted VM the mark has a
//! reverse entry, `0 | 't' | name` → node (no node has id 0), so a create under the name finds
//! it without a scan.

use super::{count_placement, decode, encode, nodes, vm};
use crate::command::{CommandError, Outcome, Response};
use crate::placement::OnNodeLoss;
use crate::scheduler::{self, Kind, NodeState, PlacementOutcome as Placement, Plan};
use crate::spec::{validate_name, Observed, Phase, PowerState, RestartPolicy, VmRecord, VmSpec};
use crate::store::{ReadStore, Store, StoreError, Table};
use crate::NodeId;

/// Pending VMs tried per command that frees or adds capacity.
const PENDING_PER_APPLY: usize = 64;

fn key(node: NodeId, kind: u8, name: &str) -> Vec<u8> {
    let mut k = node.to_be_bytes().to_vec();
    k.push(kind);
    k.extend_from_slice(name.as_bytes());
    k
}

fn names(store: &impl ReadStore, node: NodeId, kind: u8) -> Result<Vec<String>, StoreError> {
    let mut prefix = node.to_be_bytes().to_vec();
    prefix.push(kind);
    Ok(store
        .scan(Table::Placements, &prefix, usize::MAX)?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[9..]).into_owned())
        .collect())
}

/// The VMs placed on `node`, by name.
pub fn on_node(store: &impl ReadStore, node: NodeId) -> Result<Vec<String>, StoreError> {
    names(store, node, b'p')
}

/// The VMs moving away from `node` (it has not yet stopped them).
pub fn handing_off_from(store: &impl ReadStore, node: NodeId) -> Result<Vec<String>, StoreError> {
    names(store, node, b'h')
}

fn put(store: &mut impl Store, rec: &VmRecord) -> Result<(), StoreError> {
    store.put(Table::Vms, rec.spec.name.as_bytes(), &encode(rec))
}

fn not_found(name: &str) -> Outcome {
    Err(CommandError::NotFound(format!("vm {name:?}")))
}

/// Puts `rec` on node `id` as a new incarnation (placed at `index`), reserving its resources if
/// it wants to run.
fn place_on(store: &mut impl Store, rec: &mut VmRecord, id: NodeId, index: u64) -> Result<(), StoreError> {
    rec.node = Some(id);
    rec.placed_index = index;
    rec.pending = None;
    // A new incarnation: what was observed of the old one says nothing about it.
    rec.observed = None;
    if rec.reserves() {
        if let Some(mut n) = nodes::get(store, id)? {
            n.add(&rec.spec);
            nodes::put(store, &n)?;
        }
    }
    store.put(Table::Placements, &key(id, b'p', &rec.spec.name), &[])
}

/// Takes `rec` off its node, releasing what it reserved there.
fn unplace(store: &mut impl Store, rec: &mut VmRecord) -> Result<(), StoreError> {
    let Some(id) = rec.node else { return Ok(()) };
    if rec.reserves() {
        if let Some(mut n) = nodes::get(store, id)? {
            n.release(&rec.spec);
            nodes::put(store, &n)?;
        }
    }
    store.delete(Table::Placements, &key(id, b'p', &rec.spec.name))?;
    rec.node = None;
    Ok(())
}

/// Whether node `id` may still run what it was given: it is registered and ready (not declared
/// down: a down node fenced itself), or it left the cluster and its lease may not have run out
/// yet ([`nodes::departed`]).
fn may_run(store: &impl ReadStore, id: NodeId) -> Result<bool, StoreError> {
    Ok(nodes::get(store, id)?.is_some_and(|n| n.state == NodeState::Ready) || nodes::departed(store, id)?)
}

/// `rec` leaves node `from`: unless it is still handing off from another node (so `from` never
/// started it), it starts elsewhere only once `from` stopped it, if `from` may still run it.
fn hand_off_from(store: &mut impl Store, rec: &mut VmRecord, from: NodeId) -> Result<(), StoreError> {
    if rec.handoff_from.is_none() && may_run(store, from)? {
        rec.handoff_from = Some(from);
        store.put(Table::Placements, &key(from, b'h', &rec.spec.name), &[])?;
    }
    Ok(())
}

/// The reverse entry of a deleted VM's handoff mark: its name → the node that may still run it.
fn tombstone_key(name: &str) -> Vec<u8> {
    key(0, b't', name)
}

fn pending_key(rec: &VmRecord) -> [u8; 8] {
    rec.create_index.to_be_bytes()
}

/// Makes `rec` wait for capacity, with the scheduler's reasons.
fn make_pending(store: &mut impl Store, rec: &mut VmRecord, why: String) -> Result<(), StoreError> {
    rec.node = None;
    rec.pending = Some(why);
    store.put(Table::Pending, &pending_key(rec), rec.spec.name.as_bytes())
}

fn plan_for(
    store: &impl ReadStore,
    spec: &VmSpec,
    pinned: Option<NodeId>,
    seed: u64,
    explain: bool,
) -> Result<Plan, StoreError> {
    Ok(scheduler::plan(&nodes::NodeTable::new(store)?, spec, pinned, seed, explain))
}

pub fn create(
    store: &mut impl Store,
    index: u64,
    now: u64,
    spec: &VmSpec,
    pinned: Option<NodeId>,
    start: bool,
    queue: bool,
) -> Result<Outcome, StoreError> {
    if let Err(e) = spec.validate() {
        return Ok(Err(e.into()));
    }
    if store.get(Table::Vms, spec.name.as_bytes())?.is_some() {
        return Ok(Err(CommandError::AlreadyExists(format!("vm {:?}", spec.name))));
    }
    let refuse =
        |why: String| Ok(Err(CommandError::FailedPrecondition(format!("cannot place vm {:?}: {why}", spec.name))));
    if let Some(p) = pinned {
        if nodes::get(store, p)?.is_none() {
            return refuse(format!("node {p} is not a registered node"));
        }
    }
    let plan = plan_for(store, spec, pinned, index, false)?;
    let mut rec = VmRecord {
        spec: spec.clone(),
        created_at_ms: now,
        create_index: index,
        desired: if start { PowerState::Running } else { PowerState::Stopped },
        node: None,
        placed_index: index,
        restart_generation: 0,
        observed: None,
        pending: None,
        handoff_from: None,
        lost: false,
        fresh_disk: false,
        events: Vec::new(),
    };
    // A VM of this name was deleted while its node may still run it: this one waits for it.
    let tombstone = store.get(Table::Placements, &tombstone_key(&spec.name))?;
    let tombstone = tombstone.map(|t| <[u8; 8]>::try_from(t.as_slice()).map(NodeId::from_be_bytes).ok());
    if let Some(Some(f)) = tombstone {
        if may_run(store, f)? {
            rec.handoff_from = Some(f);
        }
    }
    match plan.chosen {
        Some(id) => {
            count_placement(store, Kind::Vm, Placement::Placed, &plan);
            place_on(store, &mut rec, id, index)?;
            rec.event(now, index, format!("placed on node {id}"));
        }
        None => {
            let why = plan.why_not();
            let hopeless = pinned.is_none() && !scheduler::could_ever_fit(&nodes::NodeTable::new(store)?, spec);
            if !queue || hopeless {
                count_placement(store, Kind::Vm, Placement::Refused, &plan);
                return refuse(why);
            }
            count_placement(store, Kind::Vm, Placement::Pending, &plan);
            rec.event(now, index, format!("pending: {why}"));
            make_pending(store, &mut rec, why)?;
        }
    }
    if let Some(t) = tombstone {
        store.delete(Table::Placements, &tombstone_key(&spec.name))?;
        match (t, rec.handoff_from) {
            (Some(f), Some(_)) => {
                rec.event(now, index, format!("starts once node {f} stopped the VM deleted under this name"))
            }
            (Some(f), None) => {
                store.delete(Table::Placements, &key(f, b'h', &spec.name))?;
            }
            (None, _) => {}
        }
    }
    put(store, &rec)?;
    Ok(Ok(Response::Vm(Box::new(rec))))
}

pub fn delete(store: &mut impl Store, index: u64, now: u64, name: &str) -> Result<Outcome, StoreError> {
    if let Err(e) = validate_name(name) {
        return Ok(Err(e.into()));
    }
    let Some(mut rec) = vm(store, name)? else { return Ok(not_found(name)) };
    let node = rec.node;
    unplace(store, &mut rec)?;
    store.delete(Table::Pending, &pending_key(&rec))?;
    if let Some(n) = node {
        hand_off_from(store, &mut rec, n)?;
    }
    // The node that may still run it keeps its mark until it reports the VM stopped, and a VM
    // created under the name waits for that.
    if let Some(from) = rec.handoff_from {
        store.put(Table::Placements, &tombstone_key(name), &from.to_be_bytes())?;
    }
    store.delete(Table::Vms, name.as_bytes())?;
    if let Some(id) = node {
        nodes::drain_done_if_empty(store, id)?;
    }
    place_pending(store, index, now)?;
    Ok(Ok(Response::Deleted { existed: true }))
}

pub fn set_desired(
    store: &mut impl Store,
    index: u64,
    now: u64,
    name: &str,
    desired: PowerState,
) -> Result<Outcome, StoreError> {
    let Some(mut rec) = vm(store, name)? else { return Ok(not_found(name)) };
    if rec.desired == desired {
        return Ok(Ok(Response::Vm(Box::new(rec))));
    }
    match desired {
        PowerState::Stopped => {
            if rec.reserves() {
                if let Some(mut n) = rec.node.map(|id| nodes::get(store, id)).transpose()?.flatten() {
                    n.release(&rec.spec);
                    nodes::put(store, &n)?;
                }
            }
            rec.desired = PowerState::Stopped;
            put(store, &rec)?;
            place_pending(store, index, now)?;
            return Ok(Ok(Response::Vm(Box::new(vm(store, name)?.unwrap_or(rec)))));
        }
        PowerState::Running => {
            rec.desired = PowerState::Running;
            rec.lost = false;
            // It reserves nothing now: it fits where it is, or it is placed again.
            let here = rec.node.map(|id| nodes::get(store, id)).transpose()?.flatten();
            let fits = here.as_ref().is_some_and(|n| scheduler::stages::check_record(n, &rec.spec).is_ok());
            if let (true, Some(mut n)) = (fits, here) {
                n.add(&rec.spec);
                nodes::put(store, &n)?;
            } else if rec.pending.is_none() {
                let old = rec.node;
                rec.desired = PowerState::Stopped;
                unplace(store, &mut rec)?;
                rec.desired = PowerState::Running;
                let why = old.map_or("no node had room for it".to_string(), |o| format!("node {o} has no room for it"));
                replace(store, index, now, &mut rec, old, &why)?;
            }
        }
    }
    put(store, &rec)?;
    Ok(Ok(Response::Vm(Box::new(rec))))
}

/// Places `rec` (off any node now) again: elsewhere from a fresh disk, or pending.
fn replace(
    store: &mut impl Store,
    index: u64,
    now: u64,
    rec: &mut VmRecord,
    from: Option<NodeId>,
    why: &str,
) -> Result<(), StoreError> {
    let plan = plan_for(store, &rec.spec, None, index, false)?;
    if let Some(f) = from.filter(|f| plan.chosen != Some(*f)) {
        hand_off_from(store, rec, f)?;
    }
    match plan.chosen {
        Some(id) => {
            count_placement(store, Kind::Vm, Placement::Placed, &plan);
            place_on(store, rec, id, index)?;
            rec.fresh_disk = from.is_some_and(|f| f != id) || rec.fresh_disk;
            rec.event(now, index, format!("{why}; moved to node {id}"));
        }
        None => {
            count_placement(store, Kind::Vm, Placement::Pending, &plan);
            let w = plan.why_not();
            // Wherever it goes next, it starts from a fresh disk.
            rec.fresh_disk |= from.is_some();
            rec.event(now, index, format!("{why}; pending: {w}"));
            make_pending(store, rec, w)?;
        }
    }
    Ok(())
}

pub fn restart(store: &mut impl Store, name: &str) -> Result<Outcome, StoreError> {
    let Some(mut rec) = vm(store, name)? else { return Ok(not_found(name)) };
    if rec.desired != PowerState::Running {
        return Ok(Err(CommandError::FailedPrecondition(format!(
            "vm {name:?} is stopped; start it instead of restarting it"
        ))));
    }
    rec.restart_generation += 1;
    put(store, &rec)?;
    Ok(Ok(Response::Vm(Box::new(rec))))
}

pub fn report(
    store: &mut impl Store,
    index: u64,
    now: u64,
    name: &str,
    incarnation: u64,
    node: NodeId,
    observed: &Observed,
) -> Result<Outcome, StoreError> {
    let Some(mut rec) = vm(store, name)? else { return Ok(not_found(name)) };
    if rec.placed_index != incarnation || rec.node != Some(node) {
        return Ok(Err(CommandError::FailedPrecondition(format!("stale report for vm {name:?} from node {node}"))));
    }
    let was_running = rec.observed.as_ref().is_some_and(|o| o.phase == Phase::Running);
    if observed.phase == Phase::Running && !was_running {
        rec.event(now, index, format!("running on node {node}"));
    }
    let mut o = observed.clone();
    o.reported_at_ms = now;
    rec.observed = Some(o);
    put(store, &rec)?;
    Ok(Ok(Response::Done))
}

/// A drain's step: the VM goes elsewhere; its old node stops it first (a handoff).
pub fn move_vm(store: &mut impl Store, index: u64, now: u64, name: &str) -> Result<Outcome, StoreError> {
    let Some(mut rec) = vm(store, name)? else { return Ok(not_found(name)) };
    let Some(from) = rec.node else {
        return Ok(Err(CommandError::FailedPrecondition(format!("vm {name:?} is not placed on a node"))));
    };
    let plan = plan_for(store, &rec.spec, None, index, false)?;
    let Some(to) = plan.chosen.filter(|t| *t != from) else {
        count_placement(store, Kind::Vm, Placement::Refused, &plan);
        return Ok(Err(CommandError::FailedPrecondition(format!("vm {name:?} has nowhere to go: {}", plan.why_not()))));
    };
    count_placement(store, Kind::Vm, Placement::Placed, &plan);
    unplace(store, &mut rec)?;
    place_on(store, &mut rec, to, index)?;
    rec.fresh_disk = true;
    let from_up = nodes::get(store, from)?.is_some_and(|n| n.state == NodeState::Ready);
    if from_up {
        rec.handoff_from = Some(from);
        store.put(Table::Placements, &key(from, b'h', name), &[])?;
        rec.event(
            now,
            index,
            format!("moving from node {from} to node {to}; it starts there once node {from} stopped it"),
        );
    } else {
        rec.event(now, index, format!("moved from node {from} to node {to}"));
    }
    put(store, &rec)?;
    nodes::drain_done_if_empty(store, from)?;
    Ok(Ok(Response::Vm(Box::new(rec))))
}

/// The node a VM was moving from has stopped it (or was declared down, which fenced it).
pub fn handoff(store: &mut impl Store, index: u64, now: u64, name: &str, node: NodeId) -> Result<Outcome, StoreError> {
    let Some(mut rec) = vm(store, name)? else {
        // A deleted VM's mark: the name is free of `node` now.
        let t = store.get(Table::Placements, &tombstone_key(name))?;
        if t.as_deref() == Some(&node.to_be_bytes()[..]) {
            store.delete(Table::Placements, &tombstone_key(name))?;
        }
        store.delete(Table::Placements, &key(node, b'h', name))?;
        return Ok(Ok(Response::Done));
    };
    if rec.handoff_from != Some(node) {
        return Ok(Ok(Response::Done));
    }
    rec.handoff_from = None;
    store.delete(Table::Placements, &key(node, b'h', name))?;
    rec.event(now, index, format!("node {node} stopped it"));
    put(store, &rec)?;
    Ok(Ok(Response::Done))
}

/// Node `id` of `name` was declared down (or removed): per the VM's policies it moves, waits,
/// or is lost. A VM moved off a removed node that may still run it (its lease may not have run
/// out: [`nodes::departed`]) starts elsewhere only once that node is known to have stopped it.
pub fn node_lost(
    store: &mut impl Store,
    index: u64,
    now: u64,
    name: &str,
    id: NodeId,
    removed: bool,
) -> Result<(), StoreError> {
    let Some(mut rec) = vm(store, name)? else { return Ok(()) };
    let how = if removed { "left the cluster" } else { "is down" };
    if !rec.reserves() {
        if removed {
            unplace(store, &mut rec)?;
            replace(store, index, now, &mut rec, Some(id), &format!("node {id} {how}"))?;
            put(store, &rec)?;
        }
        return Ok(());
    }
    if rec.spec.restart_policy == RestartPolicy::Never {
        unplace(store, &mut rec)?;
        rec.node = if removed { None } else { Some(id) };
        if removed {
            // Started again later, it waits until the node that left cannot run it any more.
            hand_off_from(store, &mut rec, id)?;
        } else {
            store.put(Table::Placements, &key(id, b'p', name), &[])?;
        }
        rec.lost = true;
        rec.event(now, index, format!("node {id} {how}: lost (restart policy never)"));
    } else if rec.spec.placement.on_node_loss == OnNodeLoss::Wait && !removed {
        rec.event(now, index, format!("node {id} {how}: waiting for it to come back"));
    } else {
        unplace(store, &mut rec)?;
        replace(store, index, now, &mut rec, Some(id), &format!("node {id} {how}"))?;
    }
    put(store, &rec)
}

/// Tries the VMs waiting for capacity, oldest first (a bounded number per call).
pub fn place_pending(store: &mut impl Store, index: u64, now: u64) -> Result<(), StoreError> {
    let waiting = store.scan(Table::Pending, b"", PENDING_PER_APPLY)?;
    for (k, name) in waiting {
        let name = String::from_utf8_lossy(&name).into_owned();
        let Some(mut rec) = vm(store, &name)? else {
            store.delete(Table::Pending, &k)?;
            continue;
        };
        let plan = plan_for(store, &rec.spec, None, index ^ rec.create_index, false)?;
        if let Some(id) = plan.chosen {
            count_placement(store, Kind::Vm, Placement::Placed, &plan);
            store.delete(Table::Pending, &k)?;
            place_on(store, &mut rec, id, index)?;
            rec.event(now, index, format!("placed on node {id}"));
            put(store, &rec)?;
        } else {
            count_placement(store, Kind::Vm, Placement::Pending, &plan);
            let why = plan.why_not();
            if rec.pending.as_deref() != Some(why.as_str()) {
                rec.pending = Some(why);
                put(store, &rec)?;
            }
        }
    }
    // Tasks wait in their own queue, after the VMs.
    super::tasks::place_pending(store, index, now)
}

/// Every VM off its node and waiting (after a restore into a new cluster).
pub fn unplace_all(store: &mut impl Store) -> Result<(), StoreError> {
    store.clear(Table::Placements)?;
    for (k, v) in store.scan(Table::Vms, b"", usize::MAX)? {
        let mut rec: VmRecord = decode(Table::Vms, &k, &v)?;
        rec.node = None;
        rec.handoff_from = None;
        rec.fresh_disk = true;
        rec.pending = Some("restored from a backup; waiting for a node".into());
        store.put(Table::Pending, &pending_key(&rec), rec.spec.name.as_bytes())?;
        store.put(Table::Vms, &k, &encode(&rec))?;
    }
    Ok(())
}

/// Where `spec` would go now and why not elsewhere, every node looked at.
pub fn explain(store: &impl ReadStore, spec: &VmSpec, pinned: Option<NodeId>) -> Result<Plan, StoreError> {
    plan_for(store, spec, pinned, 0, true)
}
