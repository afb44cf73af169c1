//! Random fault schedules (issue 15): from the seed, a nemesis injects faults one after another
//! into a 5-node cluster while a client per node writes keys and creates, starts, stops and
//! deletes VMs; then everything is healed and the cluster must settle. [`run`] returns what the
//! run saw ([`Outcome`]); each `tests/s4*.rs` file checks one invariant of it.
//!
//! The faults (one at a time, each held for a random while): one node cut off both ways; a node
//! that cannot send; a node that cannot hear; a split of two nodes from three; a host crash
//! (restarted later from its data dir); the leader's crash; a lossy, slow network (10 % of
//! packets lost and retransmitted, up to 150 ms latency); a paused daemon (shorter than its
//! lease: a longer pause is the job of the `fence-watch` watchdog process, which the simulation
//! does not run). A majority always remains.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::net::NetSim;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;

use crate::running::Running;
use crate::{local_pairs, status, vms, wait_formed, Client, Cluster, Write};

pub const NODES: u64 = 5;
const ROUNDS: usize = 8;
/// A client write's deadline (retried through every node until then).
const OP_DEADLINE: Duration = Duration::from_secs(10);

/// What one node holds at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFinal {
    pub applied: u64,
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
}

#[derive(Default)]
struct KeyState {
    allowed: Vec<Option<String>>,
    retired: bool,
}

/// One client: writes through node `c` first, its own keys and VMs only.
async fn client(
    c: u64,
    stop: Arc<AtomicBool>,
    t0: tokio::time::Instant,
) -> (Vec<String>, BTreeMap<String, KeyState>, Vec<String>) {
    let mut cl = Client::new(0xC4A0_5000 + u128::from(c), NODES);
    let mut log = Vec::new();
    let mut bad = Vec::new();
    let mut keys: BTreeMap<String, KeyState> =
        (0..4).map(|k| (format!("c{c}/k{k}"), KeyState { allowed: vec![None], retired: false })).collect();
    let names: Vec<String> = (0..2).map(|v| format!("c{c}-vm{v}")).collect();
    let mut exists = [false, false];
    let mut j = 0u64;
    while !stop.load(Ordering::Relaxed) {
        j += 1;
        let via = if thread_rng().gen_bool(0.7) { c } else { thread_rng().gen_range(1..=NODES) };
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
async fn sample_leaders(leaders: Arc<Mutex<BTreeMap<u64, BTreeSet<u64>>>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let mut probes = Vec::new();
        for n in 1..=NODES {
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

/// Injects `ROUNDS` random faults, each healed before the next.
pub(crate) async fn nemesis(cluster: &Cluster, h: &mut Vec<String>, t0: tokio::time::Instant) {
    let net = NetSim::current();
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(300..2_000))).await;
        let victim = thread_rng().gen_range(1..=NODES);
        let hold = Duration::from_millis(thread_rng().gen_range(500..6_000));
        let what = match thread_rng().gen_range(0..8) {
            0 => {
                cluster.isolate(victim);
                format!("isolate {victim}")
            }
            1 => {
                cluster.cut_outbound(victim);
                format!("cut {victim} outbound")
            }
            2 => {
                cluster.cut_inbound(victim);
                format!("cut {victim} inbound")
            }
            3 => {
                let other = victim % NODES + 1;
                cluster.split(&[victim, other]);
                format!("split {victim},{other} from the rest")
            }
            4 => {
                cluster.kill(victim);
                format!("crash {victim}")
            }
            5 => {
                let leader = status(victim).await.map_or(0, |s| s.leader_id);
                if leader == 0 {
                    "no leader known to crash".to_string()
                } else {
                    cluster.kill(leader);
                    format!("crash leader {leader}")
                }
            }
            6 => {
                net.update_config(|c| {
                    c.packet_loss_rate = 0.1;
                    c.send_latency = Duration::from_millis(1)..Duration::from_millis(150);
                });
                "lossy slow network".to_string()
            }
            _ => {
                let pause = Duration::from_millis(thread_rng().gen_range(100..1_500));
                Handle::current().pause(cluster.ids[&victim]);
                tokio::time::sleep(pause).await;
                Handle::current().resume(cluster.ids[&victim]);
                format!("paused {victim} for {} ms", pause.as_millis())
            }
        };
        h.push(format!("round {round}: {what}, held {} ms (at {} ms)", hold.as_millis(), t0.elapsed().as_millis()));
        tokio::time::sleep(hold).await;
        heal_everything(cluster);
    }
}

pub(crate) fn heal_everything(cluster: &Cluster) {
    cluster.heal_all();
    NetSim::current().update_config(|c| *c = madsim::net::Config::default());
    for id in cluster.dead() {
        cluster.restart(id);
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
    for n in 1..=cluster.size() {
        let applied = status(n).await.ok_or(format!("node {n}: no status"))?.applied_index;
        let kv = local_pairs(n).await.ok_or(format!("node {n}: no keys"))?;
        let vms = vms(n).await.ok_or(format!("node {n}: no VMs"))?;
        let vms = vms.into_iter().map(|(k, v)| (k, (v.node, v.desired))).collect();
        out.insert(n, NodeFinal { applied, kv, vms });
    }
    let first = out.values().next().cloned().ok_or("no nodes")?;
    if let Some((n, f)) = out.iter().find(|(_, f)| **f != first) {
        return Err(format!("node {n} differs from node 1: {f:?} vs {first:?}"));
    }
    if let Err(e) = crate::vmload::check_running(&cluster.view, &first.vms) {
        // What the records say about the VMs that do not run as they should.
        let all = vms(1).await.unwrap_or_default();
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

/// One run with `seed`'s schedule.
pub async fn scenario(dir: std::path::PathBuf) -> Outcome {
    let cluster = Cluster::start(NODES, &dir);
    let host = cluster.client_host();
    host.spawn(async move {
        let mut history = Vec::new();
        let leader = wait_formed(1, NODES as usize).await;
        crate::vmload::wait_ready(1, NODES as usize).await;
        history.push(format!("formed: leader {leader}"));
        let stop = Arc::new(AtomicBool::new(false));
        let leaders = Arc::new(Mutex::new(BTreeMap::new()));
        let sampler = tokio::spawn(sample_leaders(leaders.clone(), stop.clone()));
        let t0 = tokio::time::Instant::now();
        let clients: Vec<_> = (1..=NODES).map(|c| tokio::spawn(client(c, stop.clone(), t0))).collect();
        nemesis(&cluster, &mut history, t0).await;
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
        let mut reader = Client::new(0xC4A0_5FFF, NODES);
        let mut read_back = BTreeMap::new();
        for k in allowed.keys() {
            if let Ok(v) = reader.get(1, k, Duration::from_secs(30)).await {
                read_back.insert(k.clone(), v);
            }
        }
        let finals = settle(&cluster).await;
        match &finals {
            Ok(f) => history.push(format!("settled at applied index {}", f[&1].applied)),
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
        }
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
