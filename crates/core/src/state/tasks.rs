//! Task commands: submit (placed now, or pending FIFO until capacity appears), reports from the
//! node running an attempt (accepted only for the current attempt, so a fenced node's late
//! result is refused), cancel, what happens when a node is lost, and retention.
//!
//! Tables: `Tasks` (submit index → record), `TaskQueue` (submit index: pending, oldest first),
//! `TaskPlacements` (`node | submit index`: open attempts per node) and `TaskDone`
//! (`finished index | submit index`: finished tasks, oldest first, for retention).

use super::{decode, encode, nodes, vms};
use crate::command::{CommandError, Outcome, Response};
use crate::scheduler::{self, PlacementOutcome as Placement};
use crate::store::{ReadStore, Store, StoreError, Table};
use crate::task::{
    format_id, Attempt, AttemptResult, Enforcement, TaskRecord, TaskSpec, TaskState, MAX_ATTEMPTS, MAX_TAIL,
};
use crate::NodeId;
use serde::{Deserialize, Serialize};

/// Finished tasks kept; the oldest beyond this are pruned as others finish.
pub const MAX_FINISHED: u64 = 10_000;
/// Pending tasks tried per command that frees or adds capacity.
const PENDING_PER_APPLY: usize = 64;
const META_DONE: &[u8] = b"tasks_done";

/// What the node running an attempt reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskUpdate {
    /// About to start it, holding it to its resources this way.
    Started {
        enforcement: Enforcement,
    },
    Finished {
        result: AttemptResult,
        stdout_tail: Vec<u8>,
        stderr_tail: Vec<u8>,
    },
}

pub fn get(store: &impl ReadStore, id: u64) -> Result<Option<TaskRecord>, StoreError> {
    match store.get(Table::Tasks, &id.to_be_bytes())? {
        None => Ok(None),
        Some(b) => decode(Table::Tasks, &id.to_be_bytes(), &b).map(Some),
    }
}

fn put(store: &mut impl Store, rec: &TaskRecord) -> Result<(), StoreError> {
    store.put(Table::Tasks, &rec.submit_index.to_be_bytes(), &encode(rec))
}

fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&a.to_be_bytes());
    k[8..].copy_from_slice(&b.to_be_bytes());
    k
}

fn not_found(id: u64) -> Outcome {
    Err(CommandError::NotFound(format!("task {}", format_id(id))))
}

fn done_count(store: &impl ReadStore) -> Result<u64, StoreError> {
    Ok(store
        .get(Table::Meta, META_DONE)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_be_bytes))
}

/// The submit indexes of the tasks with an open attempt on `node`.
pub fn on_node(store: &impl ReadStore, node: NodeId) -> Result<Vec<u64>, StoreError> {
    Ok(store
        .scan(Table::TaskPlacements, &node.to_be_bytes(), usize::MAX)?
        .into_iter()
        .filter_map(|(k, _)| k.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes))
        .collect())
}

/// Places `rec` (no open attempt) now, or queues it with the scheduler's reasons.
fn place(store: &mut impl Store, index: u64, now: u64, rec: &mut TaskRecord) -> Result<(), StoreError> {
    let vm = rec.spec.as_vm(&rec.id);
    let plan = scheduler::plan(&nodes::NodeTable::new(store)?, &vm, None, index ^ rec.submit_index, false);
    let outcome = if plan.chosen.is_some() { Placement::Placed } else { Placement::Pending };
    super::count_placement(store, scheduler::Kind::Task, outcome, &plan);
    match plan.chosen {
        Some(node) => {
            if let Some(mut n) = nodes::get(store, node)? {
                n.add(&vm);
                nodes::put(store, &n)?;
            }
            store.put(Table::TaskPlacements, &pair(node, rec.submit_index), &[])?;
            store.delete(Table::TaskQueue, &rec.submit_index.to_be_bytes())?;
            rec.attempts.push(Attempt {
                number: rec.attempts.len() as u32 + 1,
                id: index,
                node,
                assigned_ms: now,
                not_before_ms: rec.not_before_ms,
                started_ms: None,
                ended_ms: None,
                result: None,
                stdout_tail: Vec::new(),
                stderr_tail: Vec::new(),
                enforcement: None,
            });
            rec.pending = None;
            rec.state = TaskState::Assigned;
        }
        None => {
            rec.pending = Some(plan.why_not());
            rec.state = TaskState::Pending;
            store.put(Table::TaskQueue, &rec.submit_index.to_be_bytes(), &[])?;
        }
    }
    Ok(())
}

pub fn submit(store: &mut impl Store, index: u64, now: u64, spec: &TaskSpec) -> Result<Outcome, StoreError> {
    if let Err(e) = spec.validate() {
        return Ok(Err(e.into()));
    }
    let mut rec = TaskRecord {
        id: format_id(index),
        spec: spec.clone(),
        submit_index: index,
        submitted_ms: now,
        state: TaskState::Pending,
        attempts: Vec::new(),
        pending: None,
        not_before_ms: 0,
        cancel_requested: false,
        retries_used: 0,
        finished_ms: None,
        finished_index: None,
    };
    place(store, index, now, &mut rec)?;
    put(store, &rec)?;
    Ok(Ok(Response::Task(Box::new(rec))))
}

/// Ends `rec` in `state`, recording it for retention (and pruning the oldest beyond the bound).
fn finish(
    store: &mut impl Store,
    index: u64,
    now: u64,
    rec: &mut TaskRecord,
    state: TaskState,
) -> Result<(), StoreError> {
    rec.state = state;
    rec.pending = None;
    rec.finished_ms = Some(now);
    rec.finished_index = Some(index);
    store.delete(Table::TaskQueue, &rec.submit_index.to_be_bytes())?;
    store.put(Table::TaskDone, &pair(index, rec.submit_index), &[])?;
    let count = done_count(store)? + 1;
    store.put(Table::Meta, META_DONE, &count.to_be_bytes())?;
    if count > MAX_FINISHED {
        prune_oldest(store, (count - MAX_FINISHED) as usize, Some(rec.submit_index))?;
    }
    Ok(())
}

/// Deletes up to `n` of the oldest finished tasks (never `keep`); returns how many went.
fn prune_oldest(store: &mut impl Store, n: usize, keep: Option<u64>) -> Result<u64, StoreError> {
    let mut gone = 0u64;
    for (k, _) in store.scan(Table::TaskDone, b"", n.saturating_add(1))? {
        if gone as usize == n {
            break;
        }
        let Some(id) = k.get(8..16).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes) else {
            continue;
        };
        if Some(id) == keep {
            continue;
        }
        store.delete(Table::TaskDone, &k)?;
        store.delete(Table::Tasks, &id.to_be_bytes())?;
        gone += 1;
    }
    let count = done_count(store)?.saturating_sub(gone);
    store.put(Table::Meta, META_DONE, &count.to_be_bytes())?;
    Ok(gone)
}

/// Records how the current attempt ended and decides what follows: the final state, or another
/// attempt (a retry per the policy; a lost attempt without counting against it).
fn end_attempt(
    store: &mut impl Store,
    index: u64,
    now: u64,
    rec: &mut TaskRecord,
    result: AttemptResult,
    stdout_tail: Vec<u8>,
    stderr_tail: Vec<u8>,
) -> Result<(), StoreError> {
    let vm = rec.spec.as_vm(&rec.id);
    let Some(a) = rec.attempts.last_mut() else { return Ok(()) };
    if let Some(mut n) = nodes::get(store, a.node)? {
        n.release(&vm);
        nodes::put(store, &n)?;
    }
    store.delete(Table::TaskPlacements, &pair(a.node, rec.submit_index))?;
    a.ended_ms = Some(now);
    a.result = Some(result.clone());
    a.stdout_tail = stdout_tail;
    a.stderr_tail = stderr_tail;
    let final_state = match &result {
        AttemptResult::Exited { code: 0 } => Some(TaskState::Succeeded),
        _ if rec.cancel_requested => Some(TaskState::Cancelled),
        AttemptResult::Cancelled { .. } => Some(TaskState::Cancelled),
        AttemptResult::Lost if rec.attempts.len() >= MAX_ATTEMPTS => Some(TaskState::Lost),
        AttemptResult::Lost => None,
        _ if rec.retries_used < rec.spec.retries && rec.attempts.len() < MAX_ATTEMPTS => {
            rec.retries_used += 1;
            rec.not_before_ms = now.saturating_add(rec.spec.backoff(rec.retries_used));
            None
        }
        AttemptResult::TimedOut { .. } => Some(TaskState::TimedOut),
        _ => Some(TaskState::Failed),
    };
    match final_state {
        Some(s) => finish(store, index, now, rec, s),
        None => place(store, index, now, rec),
    }
}

fn bounded(tail: &[u8]) -> Vec<u8> {
    tail[tail.len().saturating_sub(MAX_TAIL)..].to_vec()
}

pub fn report(
    store: &mut impl Store,
    index: u64,
    now: u64,
    id: u64,
    attempt: u64,
    node: NodeId,
    update: &TaskUpdate,
) -> Result<Outcome, StoreError> {
    let Some(mut rec) = get(store, id)? else { return Ok(not_found(id)) };
    let stale = || {
        Ok(Err(CommandError::FailedPrecondition(format!(
            "stale report for task {} attempt {attempt} from node {node}",
            rec.id
        ))))
    };
    let Some(cur) = rec.current() else { return stale() };
    if cur.id != attempt || cur.node != node {
        return stale();
    }
    match update {
        TaskUpdate::Started { enforcement } => {
            if let Some(a) = rec.attempts.last_mut() {
                a.started_ms.get_or_insert(now);
                a.enforcement.get_or_insert(*enforcement);
            }
            rec.state = TaskState::Running;
        }
        TaskUpdate::Finished { result, stdout_tail, stderr_tail } => {
            if let Err(e) = result.validate() {
                return Ok(Err(e.into()));
            }
            end_attempt(store, index, now, &mut rec, result.clone(), bounded(stdout_tail), bounded(stderr_tail))?;
            put(store, &rec)?;
            vms::place_pending(store, index, now)?;
            return Ok(Ok(Response::Task(Box::new(get(store, id)?.unwrap_or(rec)))));
        }
    }
    put(store, &rec)?;
    Ok(Ok(Response::Task(Box::new(rec))))
}

pub fn cancel(store: &mut impl Store, index: u64, now: u64, id: u64) -> Result<Outcome, StoreError> {
    let Some(mut rec) = get(store, id)? else { return Ok(not_found(id)) };
    if rec.state.is_finished() {
        return Ok(Ok(Response::Task(Box::new(rec))));
    }
    if rec.current().is_some() {
        // Its node stops it and reports; a node declared down meanwhile makes it cancelled.
        rec.cancel_requested = true;
    } else {
        finish(store, index, now, &mut rec, TaskState::Cancelled)?;
    }
    put(store, &rec)?;
    Ok(Ok(Response::Task(Box::new(rec))))
}

/// Deletes the finished tasks beyond the newest `keep`.
pub fn prune(store: &mut impl Store, keep: u64) -> Result<Outcome, StoreError> {
    let count = done_count(store)?;
    let n = count.saturating_sub(keep) as usize;
    Ok(Ok(Response::Pruned { count: prune_oldest(store, n, None)? }))
}

/// Node `id` was declared down or left: its open attempts are lost and placed again.
pub fn node_lost(store: &mut impl Store, index: u64, now: u64, node: NodeId) -> Result<(), StoreError> {
    for id in on_node(store, node)? {
        let Some(mut rec) = get(store, id)? else {
            store.delete(Table::TaskPlacements, &pair(node, id))?;
            continue;
        };
        end_attempt(store, index, now, &mut rec, AttemptResult::Lost, Vec::new(), Vec::new())?;
        put(store, &rec)?;
    }
    Ok(())
}

/// Tries the pending tasks, oldest first (a bounded number per call).
pub fn place_pending(store: &mut impl Store, index: u64, now: u64) -> Result<(), StoreError> {
    for (k, _) in store.scan(Table::TaskQueue, b"", PENDING_PER_APPLY)? {
        let Some(id) = <[u8; 8]>::try_from(k.as_slice()).ok().map(u64::from_be_bytes) else { continue };
        let Some(mut rec) = get(store, id)? else {
            store.delete(Table::TaskQueue, &k)?;
            continue;
        };
        let before = rec.pending.clone();
        place(store, index, now, &mut rec)?;
        if rec.state != TaskState::Pending || rec.pending != before {
            put(store, &rec)?;
        }
    }
    Ok(())
}

/// Tasks in submit order after `start_after`, with the state when given (a bounded scan).
pub fn list(
    store: &impl ReadStore,
    state: Option<TaskState>,
    start_after: Option<u64>,
    limit: usize,
) -> Result<(Vec<TaskRecord>, bool), StoreError> {
    const SCAN_PAGE: usize = 256;
    let mut out = Vec::new();
    let mut after = start_after.map(u64::to_be_bytes);
    loop {
        let page = store.scan_page(
            Table::Tasks,
            b"",
            after.as_ref().map(|a| a.as_slice()),
            crate::PageLimit { count: SCAN_PAGE, bytes: usize::MAX },
        )?;
        for (k, v) in &page.pairs {
            let rec: TaskRecord = decode(Table::Tasks, k, v)?;
            if state.is_none_or(|s| s == rec.state) {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(rec);
            }
        }
        match page.pairs.last() {
            Some((k, _)) if page.more => after = <[u8; 8]>::try_from(k.as_slice()).ok(),
            _ => return Ok((out, false)),
        }
    }
}

/// Tasks by state (in [`TaskState::ALL`]'s order), for metrics, without reading every record at
/// each call: the open tasks (queued or with an attempt on a node) are read; a finished task never
/// changes, so its state is read once into `finished` (submit index → state), which keeps only
/// the finished tasks still retained.
pub fn count_by_state(
    store: &impl ReadStore,
    finished: &mut std::collections::BTreeMap<u64, TaskState>,
) -> Result<[u64; TaskState::ALL.len()], StoreError> {
    let mut out = [0u64; TaskState::ALL.len()];
    let mut count = |s: TaskState| {
        if let Some(i) = TaskState::ALL.iter().position(|x| *x == s) {
            out[i] += 1;
        }
    };
    let id_at = |k: &[u8], at: usize| k.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
    let mut open: Vec<u64> =
        store.scan(Table::TaskQueue, b"", usize::MAX)?.iter().filter_map(|(k, _)| id_at(k, 0)).collect();
    open.extend(store.scan(Table::TaskPlacements, b"", usize::MAX)?.iter().filter_map(|(k, _)| id_at(k, 8)));
    open.sort_unstable();
    open.dedup();
    for id in open {
        // A finished one is counted below, with the finished tasks.
        if let Some(rec) = get(store, id)?.filter(|r| !r.state.is_finished()) {
            count(rec.state);
        }
    }
    let mut kept = std::collections::BTreeMap::new();
    for (k, _) in store.scan(Table::TaskDone, b"", usize::MAX)? {
        let Some(id) = id_at(&k, 8) else { continue };
        let state = match finished.get(&id) {
            Some(s) => *s,
            None => match get(store, id)? {
                Some(rec) => rec.state,
                None => continue,
            },
        };
        count(state);
        kept.insert(id, state);
    }
    *finished = kept;
    Ok(out)
}
