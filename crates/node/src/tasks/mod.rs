//! The task runner: on every node, run the task attempts the cluster assigned here and report
//! how they end through Raft (`TaskReport`, accepted only for the task's current attempt).
//!
//! Each pass reads this node's open attempts from the local replicated state and:
//! - starts an attempt that is not running here yet (after its backoff), but only while the
//!   node holds a valid lease ([`crate::liveness::lease`]), reporting `Started` first — a start
//!   the cluster refuses (stale) never runs;
//! - stops (SIGTERM, then SIGKILL after the grace) an attempt whose task was cancelled, and
//!   every attempt when the lease runs out or the attempt is no longer current (fenced);
//! - reports as `Lost` an attempt the cluster thinks started here but that this daemon does not
//!   watch (the daemon restarted): its leftover process group is killed first, and the cluster
//!   places a new attempt (a restart does not adopt running attempts).
//!
//! A pass never waits for Raft: every report is proposed by a task of its own, attempts start
//! and run side by side, and the answers come back as [`Event`]s, each followed by a pass. So an
//! attempt assigned here starts as soon as its assignment is applied, and the reports of all the
//! attempts of the node go to Raft together (one log append and fsync carries many), instead of
//! one round trip after another. A report that could not be proposed (no leader, a timeout) is
//! sent again after [`RETRY_AFTER`].

pub mod exec;
pub mod limits;
#[cfg(not(madsim))]
pub mod spawn;
#[cfg(all(test, not(madsim)))]
mod tests;
#[cfg(not(madsim))]
pub mod vm;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::sm::ReadView;
use blixard_consensus::Handle;
use blixard_core::{AttemptResult, Command, CommandError, NodeId, Query, QueryResult, TaskRecord, TaskUpdate};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use self::exec::{Executor, Finished, Job, Stop};
use crate::liveness::lease::Lease;

const PASS_EVERY: Duration = Duration::from_millis(250);
/// How long a report that could not be proposed waits before it is sent again.
pub const RETRY_AFTER: Duration = Duration::from_millis(100);

/// The directory of one attempt under the runner's directory.
pub fn attempt_dir(base: &std::path::Path, task: u64, attempt: u64) -> PathBuf {
    base.join(format!("t{task}-{attempt}"))
}

/// An attempt: (task, attempt id).
type Key = (u64, u64);

/// What comes back to the runner from the tasks it started.
enum Event {
    /// The cluster's answer to an attempt's `started` report: `Ok(false)` refused (stale).
    Started(Key, Result<bool, String>),
    /// The attempt ended.
    Exited(Key, Finished),
    /// The answer to its `finished` report (the result is kept to send it again on `Err`).
    Reported(Key, Finished, Result<bool, String>),
}

pub struct Runner {
    pub id: NodeId,
    pub raft: Handle,
    pub lease: Arc<Lease>,
    pub exec: Arc<dyn Executor>,
    /// `<data dir>/tasks`.
    pub dir: PathBuf,
    /// Attempts whose `started` report is in flight.
    starting: BTreeSet<Key>,
    running: BTreeMap<Key, watch::Sender<Stop>>,
    /// Results to report (not yet accepted by the cluster).
    unreported: BTreeMap<Key, Finished>,
    /// Attempts whose `finished` report is in flight.
    reporting: BTreeSet<Key>,
    /// Attempts whose last report could not be proposed: nothing is sent for them before then.
    hold: BTreeMap<Key, Instant>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    /// Attempt durations, for the node's metrics.
    work: Arc<crate::metrics::work::Work>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Proposes a report; `Ok(false)` when the cluster refused it (stale: drop it).
async fn report(raft: &Handle, node: NodeId, task: u64, attempt: u64, update: TaskUpdate) -> Result<bool, String> {
    let cmd = Command::TaskReport { id: task, attempt, node, update };
    match crate::internal::propose(raft, cmd).await {
        Ok((_, Ok(_))) => Ok(true),
        Ok((_, Err(CommandError::FailedPrecondition(m) | CommandError::NotFound(m)))) => {
            tracing::info!(task, attempt, "report refused: {m}");
            Ok(false)
        }
        Ok((_, Err(e))) => {
            tracing::warn!(task, attempt, "report refused: {e}");
            Ok(false)
        }
        Err(s) => Err(s.message().to_string()),
    }
}

impl Runner {
    pub fn new(id: NodeId, raft: Handle, lease: Arc<Lease>, exec: Arc<dyn Executor>, dir: PathBuf) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Runner {
            id,
            raft,
            lease,
            exec,
            dir,
            starting: BTreeSet::new(),
            running: BTreeMap::new(),
            unreported: BTreeMap::new(),
            reporting: BTreeSet::new(),
            hold: BTreeMap::new(),
            events_tx,
            events_rx,
            work: Default::default(),
        }
    }

    /// Counts its attempts into `work` (the node's metrics).
    pub fn with_work(mut self, work: Arc<crate::metrics::work::Work>) -> Self {
        self.work = work;
        self
    }

    pub async fn run(mut self) {
        let mut version = self.raft.watch_state_version();
        let mut lease = self.lease.watch();
        loop {
            while let Ok(e) = self.events_rx.try_recv() {
                self.handle(e);
            }
            if let Err(e) = self.pass().await {
                tracing::warn!("task pass failed: {e}");
            }
            tokio::select! {
                Some(e) = self.events_rx.recv() => self.handle(e),
                _ = version.changed() => {}
                _ = lease.changed() => {}
                _ = tokio::time::sleep(PASS_EVERY) => {}
            }
        }
    }

    fn open(&self) -> Result<Vec<TaskRecord>, String> {
        let view = ReadView::begin(self.raft.db()).map_err(|e| e.to_string())?;
        match blixard_core::state::query(&view, &Query::TasksOnNode { node: self.id }).map_err(|e| e.to_string())? {
            QueryResult::Tasks { tasks, .. } => Ok(tasks),
            _ => Ok(Vec::new()),
        }
    }

    /// The record of `task` when this node holds its lease and, in what it has applied (read
    /// after the lease check), attempt `attempt` of it is current here.
    fn still_current(&self, task: u64, attempt: u64) -> Option<TaskRecord> {
        if !self.lease.valid(self.raft.status().applied) {
            return None;
        }
        let view = ReadView::begin(self.raft.db()).ok()?;
        match blixard_core::state::query(&view, &Query::TaskGet { id: task }).ok()? {
            QueryResult::Task(Some(t)) if t.current().is_some_and(|a| a.id == attempt && a.node == self.id) => Some(*t),
            _ => None,
        }
    }

    /// Whether this runner is already doing something about attempt `key`.
    fn busy(&self, key: &Key) -> bool {
        self.starting.contains(key)
            || self.running.contains_key(key)
            || self.unreported.contains_key(key)
            || self.reporting.contains(key)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Started(key, answer) => {
                self.starting.remove(&key);
                match answer {
                    Ok(true) => self.start(key),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(task = key.0, "start not reported yet: {e}");
                        self.hold.insert(key, Instant::now() + RETRY_AFTER);
                    }
                }
            }
            Event::Exited(key, f) => {
                self.running.remove(&key);
                self.unreported.insert(key, f);
            }
            Event::Reported(key, f, answer) => {
                self.reporting.remove(&key);
                if let Err(e) = answer {
                    tracing::debug!(task = key.0, "result not reported yet: {e}");
                    self.unreported.insert(key, f);
                    self.hold.insert(key, Instant::now() + RETRY_AFTER);
                }
            }
        }
    }

    /// Starts attempt `key`, whose `started` report the cluster accepted.
    fn start(&mut self, key: Key) {
        let (task, attempt) = key;
        // The answer may come long after the report was applied (it waited out a partition,
        // during which this node may have been declared down and the task started elsewhere):
        // start only while the lease holds and the attempt is still current in what this node
        // has applied since. Otherwise it is not started; if it is still current, the next
        // pass reports it lost.
        let Some(rec) = self.still_current(task, attempt) else {
            tracing::info!(task, attempt, "not starting: no longer current here, or the lease ran out");
            return;
        };
        tracing::info!(
            task,
            attempt,
            command = %rec.spec.command,
            enforcement = self.exec.enforcement(&rec.spec).as_str(),
            "starting a task attempt"
        );
        let (tx, rx) = watch::channel(Stop::Run);
        let fut = self.exec.run(Job { spec: rec.spec, dir: attempt_dir(&self.dir, task, attempt) }, rx);
        let (events, work) = (self.events_tx.clone(), self.work.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let f = fut.await;
            work.task_attempt(&f.result, started.elapsed().as_secs_f64());
            let _ = events.send(Event::Exited(key, f));
        });
        self.running.insert(key, tx);
    }

    /// Proposes `update` for attempt `key` in a task of its own; the answer comes back as
    /// `answer(result)`.
    fn propose(
        &self,
        key: Key,
        update: TaskUpdate,
        answer: impl FnOnce(Result<bool, String>) -> Event + Send + 'static,
    ) {
        let (raft, node, events) = (self.raft.clone(), self.id, self.events_tx.clone());
        tokio::spawn(async move {
            let r = report(&raft, node, key.0, key.1, update).await;
            let _ = events.send(answer(r));
        });
    }

    async fn pass(&mut self) -> Result<(), String> {
        let now = Instant::now();
        self.hold.retain(|_, until| *until > now);
        let open = self.open()?;
        // Starting needs the lease and what the leader had committed when it granted it applied
        // here; what runs is stopped only when the lease runs out (a node behind the leader's
        // commit, as any busy one is for moments, once fenced every attempt it ran, and each
        // ended `cancelled`).
        let lease_ok = self.lease.valid(self.raft.status().applied);
        let held = self.lease.held();
        let current: BTreeMap<Key, &TaskRecord> =
            open.iter().filter_map(|t| t.current().map(|a| ((t.submit_index, a.id), t))).collect();
        for (key, stop) in &self.running {
            if !held || !current.contains_key(key) {
                stop.send_if_modified(|s| std::mem::replace(s, Stop::Fence) != Stop::Fence);
            } else if current[key].cancel_requested {
                stop.send_if_modified(|s| std::mem::replace(s, Stop::Cancel) == Stop::Run);
            }
        }
        for (&key, rec) in &current {
            if self.busy(&key) || self.hold.contains_key(&key) {
                continue;
            }
            let (task, attempt) = key;
            let Some(a) = rec.current() else { continue };
            if rec.cancel_requested {
                let f = Finished {
                    result: AttemptResult::Cancelled { killed: false },
                    stdout_tail: vec![],
                    stderr_tail: vec![],
                };
                self.unreported.insert(key, f);
            } else if a.started_ms.is_some() {
                #[cfg(not(madsim))]
                {
                    let d = attempt_dir(&self.dir, task, attempt);
                    let _ = tokio::task::spawn_blocking(move || exec::kill_leftover(&d)).await;
                }
                tracing::warn!(
                    task,
                    attempt,
                    "an attempt this daemon does not watch (it restarted): reporting it lost"
                );
                self.unreported
                    .insert(key, Finished { result: AttemptResult::Lost, stdout_tail: vec![], stderr_tail: vec![] });
            } else if lease_ok && now_ms() >= a.not_before_ms {
                let enforcement = self.exec.enforcement(&rec.spec);
                self.starting.insert(key);
                self.propose(key, TaskUpdate::Started { enforcement }, move |r| Event::Started(key, r));
            }
        }
        let due: Vec<Key> = self.unreported.keys().filter(|k| !self.hold.contains_key(k)).copied().collect();
        for key in due {
            let Some(f) = self.unreported.remove(&key) else { continue };
            let update = TaskUpdate::Finished {
                result: f.result.clone(),
                stdout_tail: f.stdout_tail.clone(),
                stderr_tail: f.stderr_tail.clone(),
            };
            self.reporting.insert(key);
            self.propose(key, update, move |r| Event::Reported(key, f, r));
        }
        Ok(())
    }
}
