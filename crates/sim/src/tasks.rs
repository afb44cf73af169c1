//! The fake task executor and its global view: which node runs which attempt of which task at
//! every simulated instant.
//!
//! Every host of a task scenario runs the unmodified node (its task runner included) with a
//! [`FakeExecutor`] instead of real processes: an attempt "runs" for the time its spec says
//! (`sim-work MS CODE`: `MS` ms, then exit code `CODE`), stops at once when fenced and shortly
//! after a cancel, and tells one [`TaskView`], shared by all hosts, when it starts and ends. A
//! host's death ends its attempts at that instant. The invariant is checked on every start:
//! **never two attempts of one task running at the same instant** (on any nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blixard_core::{AttemptResult, Enforcement, TaskSpec};
use blixard_node::tasks::exec::{Executor, Finished, Job, Stop};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::time::Instant;

/// The command the fake runs (any other fails to start).
pub const WORK: &str = "sim-work";

#[derive(Default)]
struct Inner {
    t0: Option<Instant>,
    /// Running attempts: task → {(attempt, node)}.
    on: BTreeMap<u64, BTreeSet<(u64, u64)>>,
    log: Vec<String>,
    violations: Vec<String>,
    starts: u64,
}

impl Inner {
    fn ms(&mut self) -> u128 {
        self.t0.get_or_insert_with(Instant::now).elapsed().as_millis()
    }
}

/// See the module docs. Cheap to clone (one view shared by every host of a simulation).
#[derive(Clone, Default)]
pub struct TaskView {
    inner: Arc<Mutex<Inner>>,
}

impl TaskView {
    pub fn new() -> TaskView {
        let v = TaskView::default();
        v.lock().t0 = Some(Instant::now());
        v
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` starts attempt `attempt` of `task`: checks the invariant.
    fn started(&self, node: u64, task: u64, attempt: u64) {
        let mut i = self.lock();
        let ms = i.ms();
        i.starts += 1;
        let others: Vec<String> =
            i.on.get(&task).into_iter().flatten().map(|(a, n)| format!("attempt {a} on node {n}")).collect();
        if !others.is_empty() {
            let v =
                format!("at {ms} ms node {node} started t{task} attempt {attempt} while {} runs", others.join(", "));
            i.violations.push(v);
        }
        i.on.entry(task).or_default().insert((attempt, node));
        i.log.push(format!("{ms} n{node} start t{task}-{attempt}"));
    }

    fn ended(&self, node: u64, task: u64, attempt: u64, how: &str) {
        let mut i = self.lock();
        let ms = i.ms();
        let gone = i.on.get_mut(&task).is_some_and(|s| s.remove(&(attempt, node)));
        if gone {
            i.log.push(format!("{ms} n{node} end t{task}-{attempt} {how}"));
        }
    }

    /// The host died: its attempts end now.
    pub fn host_died(&self, node: u64) {
        let mut i = self.lock();
        let ms = i.ms();
        let mut ended = Vec::new();
        for (t, s) in i.on.iter_mut() {
            let of: Vec<(u64, u64)> = s.iter().filter(|(_, n)| *n == node).copied().collect();
            for x in of {
                s.remove(&x);
                ended.push(format!("{ms} n{node} end t{t}-{} host died", x.0));
            }
        }
        i.log.extend(ended);
    }

    pub fn starts(&self) -> u64 {
        self.lock().starts
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }
}

/// Ends the attempt in the view when its future ends or is dropped (its host died).
struct Running {
    view: TaskView,
    node: u64,
    task: u64,
    attempt: u64,
    how: &'static str,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.view.ended(self.node, self.task, self.attempt, self.how);
    }
}

/// `t<task>-<attempt>` of an attempt directory.
fn ids(dir: &Path) -> Option<(u64, u64)> {
    let name = dir.file_name()?.to_str()?;
    let (t, a) = name.strip_prefix('t')?.split_once('-')?;
    Some((t.parse().ok()?, a.parse().ok()?))
}

/// The spec of a fake attempt that runs `ms` and exits with `code`.
pub fn work(ms: u64, code: i32) -> TaskSpec {
    TaskSpec { command: WORK.into(), args: vec![ms.to_string(), code.to_string()], ..Default::default() }
}

/// The fake executor of node `node`.
pub struct FakeExecutor {
    pub node: u64,
    pub view: TaskView,
}

impl Executor for FakeExecutor {
    fn enforcement(&self, _spec: &TaskSpec) -> Enforcement {
        Enforcement::None
    }

    fn run(&self, job: Job, mut stop: watch::Receiver<Stop>) -> BoxFuture<'static, Finished> {
        let (view, node) = (self.view.clone(), self.node);
        Box::pin(async move {
            let done = |result| Finished { result, stdout_tail: Vec::new(), stderr_tail: Vec::new() };
            let (Some((task, attempt)), true) = (ids(&job.dir), job.spec.command == WORK) else {
                return done(AttemptResult::StartFailed { error: "not a sim-work attempt".into() });
            };
            let arg = |i: usize| job.spec.args.get(i).and_then(|a| a.parse::<i64>().ok()).unwrap_or(0);
            let (ms, code) = (arg(0).max(0) as u64, arg(1) as i32);
            view.started(node, task, attempt);
            let mut running = Running { view, node, task, attempt, how: "exited" };
            let stopped = async {
                while *stop.borrow_and_update() == Stop::Run {
                    if stop.changed().await.is_err() {
                        futures::future::pending::<()>().await;
                    }
                }
                *stop.borrow()
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(ms)) => done(AttemptResult::Exited { code }),
                s = stopped => {
                    if s == Stop::Fence {
                        running.how = "fenced";
                        done(AttemptResult::Cancelled { killed: true })
                    } else {
                        // A process that takes a moment to exit on SIGTERM.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        running.how = "cancelled";
                        done(AttemptResult::Cancelled { killed: false })
                    }
                }
            }
        })
    }
}
