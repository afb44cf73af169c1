//! Random fault schedules (issue 15): from the seed, a nemesis ([`crate::nemesis`]) injects
//! faults one after another into a cluster of 5 nodes (4 to 7 as members join, leave and are
//! replaced) while 5 clients write keys and create, starts, stop and delete VMs, each mostly
//! through "its" node; then everything is healed and the cluster must settle. [`run`] returns
//! what the run saw ([`Outcome`]); each `tests/s4*.rs` file checks one invariant of it
//! ([`crate::invariants`]), `s50_all_invariants` all of them on one run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};

use crate::nemesis::{nemesis, DiskChecks, Faults};
use crate::running::Running;
use crate::{local_pairs, status, vms, wait_formed, Client, Cluster, Members, Write};

pub const NODES: u64 = 5;
/// A client write's deadline (retried through every node until then).
const OP_DEADLINE: Duration = Duration::from_secs(10);

/// What one node holds at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFinal {
    pub applied: u64,
    /// The members it knows, all voters.
    pub members: Vec<u64>,
    pub kv: BTreeMap<String, String>,
    /// Each VM's node and desired state.
    pub vms: BTreeMap<String, (u64, String)>,
}

/// What a run saw.
pub struct Outcome {
    /// Faults and client operations with their results, in order (the same seed gives the same).
    pub history: Vec<String>,
    /// Each key's values it may hold at the end (`None`: absent): its last acknowledged write,
    /// and after it any write whose outcome the client never learned (it writes the key no more).
    pub allowed: BTreeMap<String, Vec<Option<String>>>,
    /// Linearizable reads during the run that returned a value no write allowed.
    pub bad_reads: Vec<String>,
    /// Each key read linearizably after healing.
    pub read_back: BTreeMap<String, Option<String>>,
    /// Every node seen claiming leadership, by term (sampled every 50 ms).
    pub leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// Each node's state once the cluster settled, or why it did not settle in time.
    pub finals: Result<BTreeMap<u64, NodeFinal>, String>,
    pub view: Running,
    /// Host crashes, and the bytes written but not synced that they kept from the disk.
    pub disk_crashes: u64,
    pub disk_lost_bytes: u64,
    /// What the disk faults were expected to do, and did or did not.
    pub disk_checks: DiskChecks,
}

#[derive(Default)]
struct KeyState {
    allowed: Vec<Option<String>>,
    retired: bool,
}

/// One client: writes through node `c` first, its own keys and VMs only.
async fn client(
    c: u64,
    members: Members,
    stop: Arc<AtomicBool>,
    t0: tokio::time::Instant,
) -> (Vec<String>, BTreeMap<String, KeyState>, Vec<String>) {
    let mut cl = Client::over(0xC4A0_5000 + u128::from(c), members.clone());
    let mut log = Vec::new();
    let mut bad = Vec::new();
    let mut keys: BTreeMap<String, KeyState> =
        (0..4).map(|k| (format!("c{c}/k{k}"), KeyState { allowed: vec![None], retired: false })).collect();
    let names: Vec<String> = (0..2).map(|v| format!("c{c}-vm{v}")).collect();
    let mut exists = [false, false];
    let mut j = 0u64;
    while !stop.load(Ordering::Relaxed) {
        j += 1;
        // Mostly through its own node, or the next one while that is not a member.
        let via = if thread_rng().gen_bool(0.7) {
            members.after(c - 1)
        } else {
            let m = members.get();
            m[thread_rng().gen_range(0..m.len())]
        };
        let roll = thread_rng().gen_range(0..10);
        if roll < 5 {
            let live: Vec<String> = keys.iter().filter(|(_, s)| !s.retired).map(|(k, _)| k.clone()).collect();
            if live.is_empty() {
                continue;
            }
            let key = live[thread_rng().gen_range(0..live.len())].clone();
            let value = (roll < 4).then(|| format!("v{c}.{j}"));
            let w = match &value {
                Some(v) => Write::Put(&key, v),
                None => Write::Delete(&key),
            };
            let r = cl.write(via, w, OP_DEADLINE).await;
            let st = keys.get_mut(&key).expect("own key");
            match &r {
                Ok(_) => st.allowed = vec![value.clone()],
                Err(_) => {
                    st.allowed.push(value.clone());
                    st.retired = true;
                }
            }
            let op = if value.is_some() { "put" } else { "del" };
            log.push(format!("c{c} {j} @{} {op} {key} via {via}: {}", t0.elapsed().as_millis(), ok(&r)));
        } else if roll < 7 {
            let key = format!("c{c}/k{}", thread_rng().gen_range(0..4));
            if let Ok(got) = cl.get(via, &key, OP_DEADLINE).await {
                if !keys[&key].allowed.contains(&got) {
                    bad.push(format!("c{c} op {j}: {key} read {got:?}, allowed {:?}", keys[&key].allowed));
                }
            }
        } else {
            let v = thread_rng().gen_range(0..2);
            let name = names[v].clone();
            let (what, r) = if !exists[v] {
                ("create", cl.write(via, Write::VmCreate(&name), OP_DEADLINE).await)
            } else {
                match thread_rng().gen_range(0..4) {
                    0 => ("delete", cl.write(via, Write::VmDelete(&name), OP_DEADLINE).await),
                    1 => ("stop", cl.write(via, Write::VmStop(&name), OP_DEADLINE).await),
                    2 => ("restart", cl.write(via, Write::VmRestart(&name), OP_DEADLINE).await),
                    _ => ("start", cl.write(via, Write::VmStart(&name), OP_DEADLINE).await),
                }
            };
            // What the VM's existence is now, as far as the client can tell.
            exists[v] = match (&r, what) {
                (Ok(_), "delete") => false,
                (Ok(_), _) => true,
                (Err(e), "create") => e.contains("AlreadyExists"),
                (Err(e), _) => !e.contains("NotFound"),
            };
            log.push(format!("c{c} {j} @{} vm {what} {name} via {via}: {}", t0.elapsed().as_millis(), ok(&r)));
        }
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..200))).await;
    }
    (log, keys, bad)
}

fn ok(r: &Result<u64, String>) -> String {
    match r {
        Ok(i) => format!("ok {i}"),
        Err(e) => format!("unknown/failed ({})", e.split(':').next().unwrap_or(e)),
    }
}

/// Samples every node's role and term until `stop`.
async fn sample_leaders(leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>, members: Members, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut probes = Vec::new();
        for n in members.get() {
            probes.push(tokio::spawn(async move { status(n).await }));
        }
        for p in probes {
            if let Ok(Some(s)) = p.await {
                if s.role == "leader" {
                    leaders.lock().expect("lock").entry(s.term).or_default().insert(s.node_id);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn settle(cluster: &Cluster) -> Result<BTreeMap<u64, NodeFinal>, String> {
    let mut last = String::new();
    for _ in 0..300 {
        match finals(cluster).await {
            Ok(f) => return Ok(f),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("not settled after 60 s: {last}"))
}

/// Every node's state, if they all agree (and what runs is what they say).
async fn finals(cluster: &Cluster) -> Result<BTreeMap<u64, NodeFinal>, String> {
    let mut out = BTreeMap::new();
    let current = cluster.current();
    for &n in &current {
        let s = status(n).await.ok_or_else(|| match cluster.reg.stopped(n) {
            Some(why) => format!("node {n}: no status: it {why}"),
            None => format!("node {n}: no status"),
        })?;
        let members: Vec<u64> = s.members.iter().filter(|m| m.membership == "voter").map(|m| m.id).collect();
        if members.len() != s.members.len() {
            return Err(format!("node {n}: not every member is a voter: {:?}", s.members));
        }
        if members != current {
            return Err(format!("node {n} counts members {members:?}, the cluster is {current:?}"));
        }
        let applied = s.applied_index;
        let kv = local_pairs(n).await.ok_or(format!("node {n}: no keys"))?;
        let vms = vms(n).await.ok_or(format!("node {n}: no VMs"))?;
        let vms = vms.into_iter().map(|(k, v)| (k, (v.node, v.desired))).collect();
        out.insert(n, NodeFinal { applied, members, kv, vms });
    }
    let first = out.values().next().cloned().ok_or("no nodes")?;
    if let Some((n, f)) = out.iter().find(|(_, f)| **f != first) {
        return Err(format!("node {n} differs from node {}: {f:?} vs {first:?}", current[0]));
    }
    if let Err(e) = crate::vmload::check_running(&cluster.view, &first.vms) {
        // What the records say about the VMs that do not run as they should.
        let all = vms(current[0]).await.unwrap_or_default();
        let detail: Vec<String> = all
            .values()
            .filter(|v| e.contains(&format!("{} ", v.spec.as_ref().map_or("", |s| s.name.as_str()))))
            .map(|v| {
                let events: Vec<&str> = v.events.iter().rev().take(6).map(|e| e.what.as_str()).collect();
                format!(
                    "node {} handoff_from {} pending {:?} observed {:?} events (newest first) {events:?}",
                    v.node,
                    v.handoff_from,
                    v.pending,
                    v.observed.as_ref().map(|o| (&o.phase, &o.reason))
                )
            })
            .collect();
        return Err(format!("{e}; {}", detail.join("; ")));
    }
    Ok(out)
}

/// One run with `seed`'s schedule, drawing from `faults`.
pub async fn scenario(dir: std::path::PathBuf, faults: Faults) -> Outcome {
    let mut cluster = Cluster::start(NODES, &dir);
    let host = cluster.client_host();
    host.spawn(async move {
        let mut history = Vec::new();
        let leader = wait_formed(1, NODES as usize).await;
        crate::vmload::wait_ready(1, NODES as usize).await;
        history.push(format!("formed: leader {leader}"));
        let stop = Arc::new(AtomicBool::new(false));
        let leaders = Arc::new(Mutex::new(BTreeMap::new()));
        let sampler = tokio::spawn(sample_leaders(leaders.clone(), cluster.members.clone(), stop.clone()));
        let t0 = tokio::time::Instant::now();
        let clients: Vec<_> =
            (1..=NODES).map(|c| tokio::spawn(client(c, cluster.members.clone(), stop.clone(), t0))).collect();
        let disk_checks = nemesis(&mut cluster, &mut history, t0, faults).await;
        stop.store(true, Ordering::Relaxed);
        let mut allowed = BTreeMap::new();
        let mut bad_reads = Vec::new();
        for t in clients {
            let (log, keys, bad) = t.await.expect("client task");
            history.extend(log);
            allowed.extend(keys.into_iter().map(|(k, s)| (k, s.allowed)));
            bad_reads.extend(bad);
        }
        sampler.await.expect("sampler");
        history.push("clients done; healed".into());
        let mut reader = Client::over(0xC4A0_5FFF, cluster.members.clone());
        let mut read_back = BTreeMap::new();
        let first = cluster.current()[0];
        for k in allowed.keys() {
            if let Ok(v) = reader.get(first, k, Duration::from_secs(30)).await {
                read_back.insert(k.clone(), v);
            }
        }
        let finals = settle(&cluster).await;
        match &finals {
            Ok(f) => {
                let (n, f) = f.iter().next().expect("a node");
                history.push(format!("settled at applied index {} (node {n}), members {:?}", f.applied, f.members));
            }
            Err(e) => history.push(e.clone()),
        }
        history.extend(cluster.view.log());
        let leaders = leaders.lock().expect("lock").clone();
        let disk_crashes = cluster.disks.values().map(|d| d.crashes()).sum();
        let disk_lost_bytes = cluster.disks.values().map(|d| d.lost_bytes()).sum();
        history.push(format!("disks: {disk_crashes} crashes, {disk_lost_bytes} unsynced bytes lost"));
        Outcome {
            history,
            allowed,
            bad_reads,
            read_back,
            leaders,
            finals,
            view: cluster.view.clone(),
            disk_crashes,
            disk_lost_bytes,
            disk_checks,
        }
    })
    .await
    .expect("client host")
}

/// Runs the schedule of `seed`, every kind of fault (on a fresh thread, see [`crate::run`]).
pub fn run(seed: u64) -> Outcome {
    run_with(seed, Faults::All)
}

/// Runs the schedule of `seed` drawing from `faults`.
pub fn run_with(seed: u64, faults: Faults) -> Outcome {
    let out = Arc::new(Mutex::new(None));
    let o = out.clone();
    crate::run(seed, move |dir| async move {
        let r = scenario(dir, faults).await;
        let h = r.history.clone();
        *o.lock().expect("lock") = Some(r);
        h
    });
    let r = out.lock().expect("lock").take().expect("the run's outcome");
    r
}
