//! Batch tasks under random faults: the schedule of [`crate::chaos`] (partitions, host and leader
//! crashes, a lossy network, short pauses) against a 5-node cluster whose nodes run attempts with
//! the fake executor ([`crate::tasks`]), while a client per node submits tasks (each through its
//! own node first, retried with the same session while the outcome is unknown) and reads them
//! back. Then everything is healed and every task must end. [`run`] returns what the run saw;
//! each `tests/s45*`–`s47*` file checks one invariant of it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blixard_proto::v1::task_service_client::TaskServiceClient;
use blixard_proto::v1::{ListTasksRequest, ReadOptions, TaskIdRequest};
use madsim::rand::{thread_rng, Rng};

use crate::chaos::NODES;
use crate::nemesis::{heal_everything, nemesis, Faults};
use crate::tasks::{work, TaskView};
use crate::{channel, wait_formed, Client, Cluster, Write};

const OP_DEADLINE: Duration = Duration::from_secs(10);
const TERMINAL: &[&str] = &["succeeded", "failed", "timed_out", "cancelled", "lost"];

/// A task as one node holds it at the end: its state and each attempt's result.
pub type TaskFinal = (String, Vec<String>);

/// What a run saw.
pub struct Outcome {
    pub history: Vec<String>,
    /// Submissions the cluster acknowledged: task id (submit index) → the client that made it.
    pub acked: BTreeMap<u64, u64>,
    /// A task read in a terminal state and later in another state.
    pub flips: Vec<String>,
    /// Each node's tasks once every task ended and the nodes agree, or why not in time.
    pub finals: Result<BTreeMap<u64, BTreeMap<u64, TaskFinal>>, String>,
    pub view: TaskView,
}

async fn get(via: u64, id: u64) -> Option<String> {
    let mut c = TaskServiceClient::new(channel(via));
    let req = TaskIdRequest { id: format!("t{id}"), read: Some(ReadOptions { stale: false }) };
    Some(tokio::time::timeout(Duration::from_secs(2), c.get_task(req)).await.ok()?.ok()?.into_inner().state)
}

/// Node `i`'s own view of every task (a stale read).
pub async fn tasks(i: u64) -> Option<BTreeMap<u64, TaskFinal>> {
    let mut c = TaskServiceClient::new(channel(i));
    let req = ListTasksRequest { limit: 10_000, read: Some(ReadOptions { stale: true }), ..Default::default() };
    let r = tokio::time::timeout(Duration::from_secs(2), c.list_tasks(req)).await.ok()?.ok()?.into_inner();
    Some(
        r.tasks
            .into_iter()
            .filter_map(|t| {
                let id = blixard_core::task::parse_id(&t.id).ok()?;
                Some((id, (t.state, t.attempts.into_iter().map(|a| a.result).collect())))
            })
            .collect(),
    )
}

/// One client: submits tasks through node `c` first and reads its acknowledged ones back.
async fn client(
    c: u64,
    stop: Arc<AtomicBool>,
    t0: tokio::time::Instant,
) -> (Vec<String>, BTreeMap<u64, u64>, Vec<String>) {
    let mut cl = Client::new(0x7A5C_0000 + u128::from(c), NODES);
    let mut log = Vec::new();
    let mut acked = BTreeMap::new();
    let mut terminal: BTreeMap<u64, String> = BTreeMap::new();
    let mut flips = Vec::new();
    let mut j = 0u64;
    while !stop.load(Ordering::Relaxed) {
        j += 1;
        let via = if thread_rng().gen_bool(0.7) { c } else { thread_rng().gen_range(1..=NODES) };
        if acked.is_empty() || thread_rng().gen_bool(0.5) {
            let ms = thread_rng().gen_range(50..3_000);
            let code = if thread_rng().gen_bool(0.8) { 0 } else { 1 };
            let spec = blixard_core::TaskSpec { retries: 1, backoff_ms: 100, backoff_cap_ms: 100, ..work(ms, code) };
            let r = cl.write(via, Write::Task(&spec), OP_DEADLINE).await;
            if let Ok(id) = r {
                acked.insert(id, c);
            }
            let what = r
                .as_ref()
                .map_or_else(|e| format!("unknown ({})", e.split(':').next().unwrap_or(e)), |i| format!("t{i}"));
            log.push(format!("c{c} {j} @{} submit {ms} ms exit {code} via {via}: {what}", t0.elapsed().as_millis()));
        } else {
            let ids: Vec<u64> = acked.keys().copied().collect();
            let id = ids[thread_rng().gen_range(0..ids.len())];
            if let Some(state) = get(via, id).await {
                match terminal.get(&id) {
                    Some(t) if *t != state => flips.push(format!("c{c}: t{id} was {t}, then read {state}")),
                    None if TERMINAL.contains(&state.as_str()) => {
                        terminal.insert(id, state);
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..300))).await;
    }
    (log, acked, flips)
}

/// Every node's tasks, once all are finished and every node holds the same.
async fn finals(cluster: &Cluster) -> Result<BTreeMap<u64, BTreeMap<u64, TaskFinal>>, String> {
    let mut out = BTreeMap::new();
    for n in 1..=cluster.size() {
        out.insert(n, tasks(n).await.ok_or(format!("node {n}: no task list"))?);
    }
    let first = out.values().next().cloned().ok_or("no nodes")?;
    if let Some((id, t)) = first.iter().find(|(_, t)| !TERMINAL.contains(&t.0.as_str())) {
        return Err(format!("t{id} is still {}", t.0));
    }
    if let Some((n, _)) = out.iter().find(|(_, f)| **f != first) {
        return Err(format!("node {n}'s tasks differ from node 1's"));
    }
    Ok(out)
}

async fn settle(cluster: &Cluster) -> Result<BTreeMap<u64, BTreeMap<u64, TaskFinal>>, String> {
    let mut last = String::new();
    // Tasks run up to 3 s, retried once; lost ones are placed again: 2 minutes is ample.
    for _ in 0..600 {
        match finals(cluster).await {
            Ok(f) => return Ok(f),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("not settled after 120 s: {last}"))
}

/// One run with `seed`'s schedule.
pub async fn scenario(dir: std::path::PathBuf) -> Outcome {
    let mut cluster = Cluster::start_with_tasks(NODES, &dir);
    let view = cluster.tasks.clone().expect("a task view");
    let host = cluster.client_host();
    host.spawn(async move {
        let mut history = Vec::new();
        let leader = wait_formed(1, NODES as usize).await;
        crate::vmload::wait_ready(1, NODES as usize).await;
        history.push(format!("formed: leader {leader}"));
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = tokio::time::Instant::now();
        let clients: Vec<_> = (1..=NODES).map(|c| tokio::spawn(client(c, stop.clone(), t0))).collect();
        nemesis(&mut cluster, &mut history, t0, Faults::Classic).await;
        stop.store(true, Ordering::Relaxed);
        heal_everything(&cluster);
        let mut acked = BTreeMap::new();
        let mut flips = Vec::new();
        for t in clients {
            let (log, a, f) = t.await.expect("client task");
            history.extend(log);
            acked.extend(a);
            flips.extend(f);
        }
        history.push("clients done; healed".into());
        let finals = settle(&cluster).await;
        match &finals {
            Ok(f) => history.push(format!("settled: {} tasks", f[&1].len())),
            Err(e) => history.push(e.clone()),
        }
        history.extend(view.log());
        Outcome { history, acked, flips, finals, view }
    })
    .await
    .expect("client host")
}

/// Runs the schedule of `seed` (on a fresh thread, see [`crate::run`]).
pub fn run(seed: u64) -> Outcome {
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    crate::run(seed, move |dir| async move {
        let r = scenario(dir).await;
        let h = r.history.clone();
        *o.lock().expect("lock") = Some(r);
        h
    });
    let r = out.lock().expect("lock").take().expect("the run's outcome");
    r
}
