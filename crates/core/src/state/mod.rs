//! The replicated state machine: `apply` for writes, `query` for reads, and the snapshot format.
//!
//! `apply` is a pure function of (state, command, index): no clock, no randomness, no map-order
//! iteration. Every node applying the same log reaches byte-identical tables.
//!
//! Applying one command is three steps, so a membership change can ask raft-rs in between:
//! [`begin`] (cluster time, session sweep, the session's verdict: apply, answer a duplicate with
//! its recorded outcome, or refuse; the membership rules), [`run`] (the command itself) and
//! [`finish`] (the outcome recorded in the client's session). [`apply`] does all three for a
//! normal entry.

use serde::{Deserialize, Serialize};

use crate::command::{Applied, Command, CommandError, Envelope, Outcome, Query, QueryResult, Response};
use crate::membership::{self, MembershipChange};
pub use crate::membership::{members, Member};
mod nodes;
pub mod tasks;
pub mod tokens;
mod vms;

use crate::session::{self, Check};
use crate::spec::{validate_key, validate_value, VmRecord};
use crate::store::{ReadStore, Store, StoreError, Table};
pub use nodes::NodeTable;
pub use tasks::TaskUpdate;

/// Whether `id` is a registered node.
pub use nodes::{MAX_SIMULATED_PER_COMMAND, SIMULATED_NODE_IDS};

/// Whether node `id` is registered (its record is not decoded: every heartbeat asks).
pub fn node_exists(store: &impl ReadStore, id: crate::NodeId) -> Result<bool, StoreError> {
    Ok(store.get(Table::Nodes, &id.to_be_bytes())?.is_some())
}

/// Counts a placement attempt in the store's tally, if it keeps one.
pub(crate) fn count_placement(
    store: &mut impl Store,
    kind: crate::scheduler::Kind,
    outcome: crate::scheduler::PlacementOutcome,
    plan: &crate::scheduler::Plan,
) {
    if let Some(t) = store.tally() {
        t.count(kind, outcome, plan);
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

pub(crate) fn decode<T: for<'a> Deserialize<'a>>(table: Table, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| {
        StoreError(format!("undecodable record in {} at {:?}: {e}", table.name(), String::from_utf8_lossy(key)))
    })
}

/// Applies one committed normal entry's command at log `index`. The outer `Result` is a storage
/// failure (fatal for the node); the command's own, deterministic result is in [`Applied`].
pub fn apply(store: &mut impl Store, index: u64, env: &Envelope) -> Result<Applied, StoreError> {
    match begin(store, index, env, None)? {
        Begun::Done(a) => Ok(a),
        Begun::Go(p) => {
            let outcome = run(store, index, env)?;
            finish(store, index, env, p, outcome)
        }
    }
}

/// What [`begin`] found, for [`finish`]: the cluster time and the session it read.
#[derive(Debug)]
pub struct Pending {
    now: u64,
    prior: session::Prior,
}

/// What [`begin`] decided.
#[derive(Debug)]
pub enum Begun {
    /// Answered without running the command (a duplicate, or refused).
    Done(Applied),
    /// Run it ([`run`], or raft-rs's configuration change then [`run`]), then [`finish`].
    Go(Pending),
}

/// The checks before a command runs. `change` is the configuration change of the entry that
/// carries it (`None` for a normal entry).
pub fn begin(
    store: &mut impl Store,
    index: u64,
    env: &Envelope,
    change: Option<&MembershipChange>,
) -> Result<Begun, StoreError> {
    let now = session::advance(store, env.now_ms)?;
    let refused = |e: CommandError| Ok(Begun::Done(Applied { index, outcome: Err(e), duplicate: false }));
    if let Err(e) = membership::check_carrier(&env.command, change) {
        return refused(e);
    }
    let mut pending = Pending { now, prior: session::Prior::default() };
    if let Some(s) = &env.session {
        match session::check(store, s, now)? {
            Check::Apply(prior) => pending.prior = prior,
            Check::Duplicate { index, outcome } => return Ok(Begun::Done(Applied { index, outcome, duplicate: true })),
            Check::Refuse(e) => return refused(e),
        }
    }
    if change.is_some() {
        if let Err(e) = membership::validate(store, &env.command) {
            return finish(store, index, env, pending, Err(e)).map(Begun::Done);
        }
    }
    Ok(Begun::Go(pending))
}

/// Records the outcome in the client's session and returns it.
pub fn finish(
    store: &mut impl Store,
    index: u64,
    env: &Envelope,
    pending: Pending,
    outcome: Outcome,
) -> Result<Applied, StoreError> {
    if let Some(s) = &env.session {
        session::record(store, s, index, &outcome, pending.now, pending.prior)?;
    }
    Ok(Applied { index, outcome, duplicate: false })
}

fn put_member(store: &mut impl Store, m: &Member) -> Result<(), StoreError> {
    store.put(Table::Members, &m.id.to_be_bytes(), &encode(m))
}

/// Runs a command that [`begin`] let through.
pub fn run(store: &mut impl Store, index: u64, env: &Envelope) -> Result<Outcome, StoreError> {
    Ok(match &env.command {
        Command::Noop => Ok(Response::Done),
        Command::KvPut { key, value } => match validate_key(key).and_then(|()| validate_value(value)) {
            Err(e) => Err(e.into()),
            Ok(()) => {
                store.put(Table::Kv, key, value)?;
                Ok(Response::Done)
            }
        },
        Command::KvDelete { key } => match validate_key(key) {
            Err(e) => Err(e.into()),
            Ok(()) => Ok(Response::Deleted { existed: store.delete(Table::Kv, key)? }),
        },
        Command::VmCreate { spec, node, start, queue } => {
            vms::create(store, index, env.now_ms, spec, *node, *start, *queue)?
        }
        Command::VmDelete { name } => vms::delete(store, index, env.now_ms, name)?,
        Command::VmSetDesired { name, desired } => vms::set_desired(store, index, env.now_ms, name, *desired)?,
        Command::VmRestart { name } => vms::restart(store, name)?,
        Command::VmReport { name, incarnation, node, observed } => {
            vms::report(store, index, env.now_ms, name, *incarnation, *node, observed)?
        }
        Command::VmMove { name } => vms::move_vm(store, index, env.now_ms, name)?,
        Command::VmHandoff { name, node } => vms::handoff(store, index, env.now_ms, name, *node)?,
        Command::TaskSubmit { spec } => tasks::submit(store, index, env.now_ms, spec)?,
        Command::TaskReport { id, attempt, node, update } => {
            tasks::report(store, index, env.now_ms, *id, *attempt, *node, update)?
        }
        Command::TaskCancel { id } => tasks::cancel(store, index, env.now_ms, *id)?,
        Command::TaskPrune { keep } => tasks::prune(store, *keep)?,
        Command::NodeRegister { node } => nodes::register(store, index, env.now_ms, node)?,
        Command::NodeRegisterSimulated { nodes: ns } => nodes::register_simulated(store, index, env.now_ms, ns)?,
        Command::NodeSetState { id, state } => nodes::set_state(store, index, env.now_ms, *id, *state)?,
        Command::NodeEligibility { id, eligible } => nodes::eligibility(store, index, env.now_ms, *id, *eligible)?,
        Command::NodeDrain { id, drain } => nodes::drain(store, index, env.now_ms, *id, *drain)?,
        Command::Bootstrap { id, addr } => {
            put_member(store, &Member { id: *id, addr: addr.clone(), voter: true })?;
            Ok(Response::Done)
        }
        Command::AddLearner { id, addr } => {
            put_member(store, &Member { id: *id, addr: addr.clone(), voter: false })?;
            Ok(Response::Done)
        }
        Command::PromoteVoter { id } => {
            let Some(b) = store.get(Table::Members, &id.to_be_bytes())? else {
                return Ok(Err(CommandError::NotFound(format!("node {id}"))));
            };
            let mut m: Member = decode(Table::Members, &id.to_be_bytes(), &b)?;
            m.voter = true;
            put_member(store, &m)?;
            Ok(Response::Done)
        }
        Command::RemoveMember { id } => {
            // A member that left offers no capacity any more, and its VMs move.
            nodes::remove(store, index, env.now_ms, *id)?;
            Ok(Response::Deleted { existed: store.delete(Table::Members, &id.to_be_bytes())? })
        }
        Command::TokenCreate { name, role, hash, ttl_ms } => {
            let now = session::advance_clock(store, env.now_ms)?;
            tokens::create(store, now, name, role, hash, *ttl_ms)?
        }
        Command::TokenRevoke { which } => tokens::revoke(store, which)?,
    })
}

/// Makes restored state the state of a new one-node cluster: node `id` at `addr` is its only
/// member (a voter), and no node's capacity is known until it registers again. Everything else
/// (key/values, VMs, sessions) stays as it was.
pub fn rebase(store: &mut impl Store, id: crate::NodeId, addr: &str) -> Result<(), StoreError> {
    store.clear(Table::Members)?;
    nodes::forget_all(store)?;
    put_member(store, &Member { id, addr: addr.to_string(), voter: true })
}

/// Serves a read from the local state.
pub fn query(store: &impl ReadStore, q: &Query) -> Result<QueryResult, StoreError> {
    Ok(match q {
        Query::KvGet { key } => QueryResult::Value(store.get(Table::Kv, key)?),
        Query::KvList { prefix, start_after, limit } => {
            let page = store.scan_page(Table::Kv, prefix, start_after.as_deref(), *limit)?;
            QueryResult::Pairs { pairs: page.pairs, more: page.more }
        }
        Query::VmGet { name } => match store.get(Table::Vms, name.as_bytes())? {
            None => QueryResult::Vm(None),
            Some(b) => QueryResult::Vm(Some(Box::new(decode(Table::Vms, name.as_bytes(), &b)?))),
        },
        Query::VmList { start_after, limit } => {
            let page = store.scan_page(Table::Vms, b"", start_after.as_ref().map(|s| s.as_bytes()), *limit)?;
            let vms = page.pairs.iter().map(|(k, v)| decode(Table::Vms, k, v)).collect::<Result<_, _>>()?;
            QueryResult::Vms { vms, more: page.more }
        }
        Query::Members => QueryResult::Members(members(store)?),
        Query::Nodes => QueryResult::Nodes(nodes(store)?),
        Query::Tokens => QueryResult::Tokens(tokens::tokens(store)?),
        Query::Node { id } => QueryResult::Node(nodes::get(store, *id)?.map(Box::new)),
        Query::TaskGet { id } => QueryResult::Task(tasks::get(store, *id)?.map(Box::new)),
        Query::TaskList { state, start_after, limit } => {
            let (tasks, more) = tasks::list(store, *state, *start_after, *limit)?;
            QueryResult::Tasks { tasks, more }
        }
        Query::TasksOnNode { node } => {
            let mut out = Vec::new();
            for id in tasks::on_node(store, *node)? {
                out.extend(tasks::get(store, id)?);
            }
            QueryResult::Tasks { tasks: out, more: false }
        }
        Query::Explain { spec, pinned } => QueryResult::Plan(vms::explain(store, spec, *pinned)?),
    })
}

/// The VM names `node` holds a handoff mark for: VMs moved or deleted while it may still run
/// them, which start elsewhere (under their name) only once it reports them stopped.
pub fn handing_off(store: &impl ReadStore, node: crate::NodeId) -> Result<Vec<String>, StoreError> {
    vms::handing_off_from(store, node)
}

pub(crate) fn vm(store: &impl ReadStore, name: &str) -> Result<Option<VmRecord>, StoreError> {
    match store.get(Table::Vms, name.as_bytes())? {
        None => Ok(None),
        Some(b) => decode(Table::Vms, name.as_bytes(), &b).map(Some),
    }
}

/// The VM named `name`, if any.
pub fn vm_named(store: &impl ReadStore, name: &str) -> Result<Option<VmRecord>, StoreError> {
    vm(store, name)
}

/// The VMs placed on `node` (those whose record names it), by name, found through the
/// `Placements` index: a node's reconciler reads its own VMs, not every VM of the cluster.
pub fn vms_on(store: &impl ReadStore, node: crate::NodeId) -> Result<Vec<VmRecord>, StoreError> {
    let mut out = Vec::new();
    for name in vms::on_node(store, node)? {
        if let Some(r) = vm(store, &name)?.filter(|r| r.node == Some(node)) {
            out.push(r);
        }
    }
    Ok(out)
}

/// Every VM record, by name.
pub fn vms(store: &impl ReadStore) -> Result<Vec<VmRecord>, StoreError> {
    store.scan(Table::Vms, b"", usize::MAX)?.iter().map(|(k, v)| decode(Table::Vms, k, v)).collect()
}

/// Every registered node, by id.
/// The nodes that left the cluster while ready and may still run what they were given (the
/// leader declares each down, as a silent member, once its lease has certainly run out).
pub fn departed_nodes(store: &impl ReadStore) -> Result<Vec<crate::NodeId>, StoreError> {
    nodes::all_departed(store)
}

pub fn nodes(store: &impl ReadStore) -> Result<Vec<crate::scheduler::NodeRecord>, StoreError> {
    store.scan(Table::Nodes, b"", usize::MAX)?.iter().map(|(k, v)| decode(Table::Nodes, k, v)).collect()
}

/// The leading fields of a [`crate::scheduler::NodeRecord`] in postcard's layout, borrowed from
/// the stored bytes, up to its state: what the liveness monitor needs of every node, read
/// without building each node's record (its strings, label map, ports and groups).
#[derive(Deserialize)]
struct NodeHead<'a> {
    id: crate::NodeId,
    _vcpus: u32,
    _memory_mib: u64,
    _disk_gib: u64,
    #[serde(borrow)]
    _accel: &'a str,
    #[serde(borrow)]
    _backend: &'a str,
    /// A map in postcard is a length and the pairs, as a sequence of pairs is.
    #[serde(borrow)]
    _labels: Vec<(&'a str, &'a str)>,
    #[serde(borrow)]
    _agent_version: &'a str,
    state: crate::NodeState,
}

/// Every registered node's id and state (the liveness monitor reads this every 100 ms).
pub fn node_states(store: &impl ReadStore) -> Result<Vec<(crate::NodeId, crate::NodeState)>, StoreError> {
    let pairs = store.scan(Table::Nodes, b"", usize::MAX)?;
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs.iter() {
        let h: NodeHead<'_> = postcard::from_bytes(v).map_err(|e| {
            StoreError(format!(
                "undecodable record in {} at {:?}: {e}",
                Table::Nodes.name(),
                String::from_utf8_lossy(k)
            ))
        })?;
        out.push((h.id, h.state));
    }
    Ok(out)
}

/// The whole replicated state as one byte string (the Raft snapshot payload).
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    version: u32,
    tables: Vec<(String, crate::store::KvPairs)>,
}

const SNAPSHOT_VERSION: u32 = 1;

pub fn export(store: &impl ReadStore) -> Result<Vec<u8>, StoreError> {
    let mut tables = Vec::new();
    for t in Table::ALL {
        tables.push((t.name().to_string(), store.scan(t, b"", usize::MAX)?));
    }
    Ok(encode(&SnapshotData { version: SNAPSHOT_VERSION, tables }))
}

/// Checks that `data` is a snapshot [`import`] takes (it decodes, its version and its tables
/// are known), without changing anything: a snapshot from the network is checked before Raft
/// sees it, so one that does not decode can never stop the node that installs it.
pub fn check_snapshot(data: &[u8]) -> Result<(), StoreError> {
    let snap: SnapshotData =
        postcard::from_bytes(data).map_err(|e| StoreError(format!("undecodable snapshot: {e}")))?;
    if snap.version != SNAPSHOT_VERSION {
        return Err(StoreError(format!("snapshot version {} is not supported", snap.version)));
    }
    if let Some((name, _)) = snap.tables.iter().find(|(name, _)| Table::ALL.iter().all(|t| t.name() != name)) {
        return Err(StoreError(format!("snapshot has unknown table {name}")));
    }
    Ok(())
}

/// Replaces the whole state with a snapshot made by [`export`].
pub fn import(store: &mut impl Store, data: &[u8]) -> Result<(), StoreError> {
    let snap: SnapshotData =
        postcard::from_bytes(data).map_err(|e| StoreError(format!("undecodable snapshot: {e}")))?;
    if snap.version != SNAPSHOT_VERSION {
        return Err(StoreError(format!("snapshot version {} is not supported", snap.version)));
    }
    for t in Table::ALL {
        store.clear(t)?;
    }
    for (name, pairs) in snap.tables {
        let t = Table::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| StoreError(format!("snapshot has unknown table {name}")))?;
        for (k, v) in pairs {
            store.put(t, &k, &v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod leave_tests;
#[cfg(test)]
mod orchestration_tests;
#[cfg(test)]
mod tally_tests;
#[cfg(test)]
mod task_tests;
#[cfg(test)]
mod tests;
