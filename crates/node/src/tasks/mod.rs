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

pub mod exec;
pub mod limits;
#[cfg(all(test, not(madsim)))]
mod tests;
#[cfg(not(madsim))]
pub mod vm;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::sm::ReadView;
use blixard_consensus::Handle;
use blixard_core::{AttemptResult, Command, CommandError, NodeId, Query, QueryResult, TaskRecord, TaskUpdate};
use tokio::sync::{mpsc, watch};

use self::exec::{Executor, Finished, Job, Stop};
use crate::liveness::lease::Lease;

const PASS_EVERY: Duration = Duration::from_millis(250);

/// The directory of one attempt under the runner's directory.
pub fn attempt_dir(base: &std::path::Path, task: u64, attempt: u64) -> PathBuf {
    base.join(format!("t{task}-{attempt}"))
}

pub struct Runner {
    pub id: NodeId,
    pub raft: Handle,
    pub lease: Arc<Lease>,
    pub exec: Arc<dyn Executor>,
    /// `<data dir>/tasks`.
    pub dir: PathBuf,
    running: BTreeMap<(u64, u64), watch::Sender<Stop>>,
    /// Results not yet accepted by the cluster (retried each pass).
    unreported: BTreeMap<(u64, u64), Finished>,
    done_tx: mpsc::UnboundedSender<((u64, u64), Finished)>,
    done_rx: mpsc::UnboundedReceiver<((u64, u64), Finished)>,
    /// Attempt durations, for the node's metrics.
    work: Arc<crate::metrics::work::Work>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Runner {
    pub fn new(id: NodeId, raft: Handle, lease: Arc<Lease>, exec: Arc<dyn Executor>, dir: PathBuf) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let (running, unreported, work) = (BTreeMap::new(), BTreeMap::new(), Default::default());
        Runner { id, raft, lease, exec, dir, running, unreported, done_tx, done_rx, work }
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
            if let Err(e) = self.pass().await {
                tracing::warn!("task pass failed: {e}");
            }
            tokio::select! {
                Some((key, f)) = self.done_rx.recv() => {
                    self.running.remove(&key);
                    self.unreported.insert(key, f);
                }
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

    /// Whether this node holds its lease and, in what it has applied (read after the lease
    /// check), attempt `attempt` of `task` is current here.
    fn still_current(&self, task: u64, attempt: u64) -> bool {
        if !self.lease.valid(self.raft.status().applied) {
            return false;
        }
        self.open().is_ok_and(|open| {
            open.iter()
                .any(|t| t.submit_index == task && t.current().is_some_and(|a| a.id == attempt && a.node == self.id))
        })
    }

    /// Proposes a report; `Ok(false)` when the cluster refused it (stale: drop it).
    async fn report(&self, task: u64, attempt: u64, update: TaskUpdate) -> Result<bool, String> {
        let cmd = Command::TaskReport { id: task, attempt, node: self.id, update };
        match crate::internal::propose(&self.raft, cmd).await {
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

    async fn pass(&mut self) -> Result<(), String> {
        while let Ok((key, f)) = self.done_rx.try_recv() {
            self.running.remove(&key);
            self.unreported.insert(key, f);
        }
        for (key, f) in std::mem::take(&mut self.unreported) {
            let update = TaskUpdate::Finished {
                result: f.result.clone(),
                stdout_tail: f.stdout_tail.clone(),
                stderr_tail: f.stderr_tail.clone(),
            };
            if let Err(e) = self.report(key.0, key.1, update).await {
                tracing::debug!(task = key.0, "result not reported yet: {e}");
                self.unreported.insert(key, f);
            }
        }
        let open = self.open()?;
        let lease_ok = self.lease.valid(self.raft.status().applied);
        let current: BTreeMap<(u64, u64), &TaskRecord> =
            open.iter().filter_map(|t| t.current().map(|a| ((t.submit_index, a.id), t))).collect();
        for (key, stop) in &self.running {
            if !lease_ok || !current.contains_key(key) {
                stop.send_if_modified(|s| std::mem::replace(s, Stop::Fence) != Stop::Fence);
            } else if current[key].cancel_requested {
                stop.send_if_modified(|s| std::mem::replace(s, Stop::Cancel) == Stop::Run);
            }
        }
        for (&(task, attempt), rec) in &current {
            let key = (task, attempt);
            if self.running.contains_key(&key) || self.unreported.contains_key(&key) {
                continue;
            }
            let Some(a) = rec.current() else { continue };
            let dir = attempt_dir(&self.dir, task, attempt);
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
                    let d = dir.clone();
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
                if !self.report(task, attempt, TaskUpdate::Started { enforcement }).await? {
                    continue;
                }
                // The answer may come long after the report was applied (it waited out a
                // partition, during which this node may have been declared down and the task
                // started elsewhere): start only while the lease holds and the attempt is still
                // current in what this node has applied since. Otherwise it is not started; if
                // it is still current, the next pass reports it lost.
                if !self.still_current(task, attempt) {
                    tracing::info!(task, attempt, "not starting: no longer current here, or the lease ran out");
                    continue;
                }
                tracing::info!(
                    task,
                    attempt,
                    command = %rec.spec.command,
                    enforcement = enforcement.as_str(),
                    "starting a task attempt"
                );
                let (tx, rx) = watch::channel(Stop::Run);
                let fut = self.exec.run(Job { spec: rec.spec.clone(), dir }, rx);
                let (done, work) = (self.done_tx.clone(), self.work.clone());
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let f = fut.await;
                    work.task_attempt(&f.result, started.elapsed().as_secs_f64());
                    let _ = done.send((key, f));
                });
                self.running.insert(key, tx);
            }
        }
        Ok(())
    }
}
