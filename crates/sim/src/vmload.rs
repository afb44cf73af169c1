//! VM workloads for the scenarios: create VMs, wait for them to run (by the fake driver's global
//! view, [`crate::running`]), and wait for the cluster to agree with what runs.

use std::collections::BTreeMap;
use std::time::Duration;

use blixard_proto::v1::node_service_client::NodeServiceClient;
use blixard_proto::v1::{ListNodesRequest, ReadOptions};
use tokio::time::Instant;

use crate::running::Running;
use crate::{channel, vms, Client, Write};

/// Node `i`'s view of every node's status (`ready` | `down`), stale.
pub async fn node_states(i: u64) -> Option<BTreeMap<u64, String>> {
    let mut c = NodeServiceClient::new(channel(i));
    let req = ListNodesRequest { read: Some(ReadOptions { stale: true }) };
    let r = tokio::time::timeout(Duration::from_secs(2), c.list_nodes(req)).await.ok()?.ok()?.into_inner();
    Some(r.nodes.into_iter().map(|n| (n.id, n.status)).collect())
}

/// Waits until node `via` sees `n` registered nodes, all ready.
pub async fn wait_ready(via: u64, n: usize) {
    crate::wait("every node registered and ready", || async {
        let s = node_states(via).await?;
        (s.len() == n && s.values().all(|st| st == "ready")).then_some(())
    })
    .await
}

/// Creates and starts each VM (pinned to `pin` if given), through node `via` first.
pub async fn create(client: &mut Client, via: u64, names: &[String], pin: Option<u64>) -> Vec<String> {
    let mut log = Vec::new();
    for name in names {
        let r = client.write_vm_create(via, name, pin, Duration::from_secs(30)).await;
        let idx = r.unwrap_or_else(|e| panic!("creating {name}: {e}"));
        log.push(format!("created {name} @{idx}"));
    }
    log
}

/// Waits (polling every 100 ms) until every VM of `names` runs on exactly one node, none of them
/// in `not_on`, and returns how long that took; panics past `bound`, or at a violation.
pub async fn wait_running(view: &Running, names: &[String], not_on: &[u64], bound: Duration, seed: u64) -> Duration {
    let t0 = Instant::now();
    loop {
        view.assert_ok(seed);
        let ok = names.iter().all(|n| {
            let on = view.nodes_running(n);
            on.len() == 1 && !not_on.contains(&on[0])
        });
        if ok {
            return t0.elapsed();
        }
        if t0.elapsed() > bound {
            panic!("seed {seed}: not every VM runs once outside {not_on:?} within {bound:?}: {:?}", view.snapshot());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node in `nodes` holds the same VM records (name, node, desired), and what
/// runs is exactly what they say: each VM desired running runs once, on its node, and nothing
/// else runs. Returns the agreed `name → node`.
pub async fn wait_converged(view: &Running, nodes: &[u64], seed: u64) -> BTreeMap<String, u64> {
    let mut last = String::new();
    for _ in 0..600 {
        view.assert_ok(seed);
        match converged(view, nodes).await {
            Ok(m) => return m,
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("seed {seed}: the VMs did not converge in 60 s: {last}");
}

async fn converged(view: &Running, nodes: &[u64]) -> Result<BTreeMap<String, u64>, String> {
    let mut first: Option<BTreeMap<String, (u64, String)>> = None;
    for &n in nodes {
        let all = vms(n).await.ok_or(format!("node {n} does not answer"))?;
        let m: BTreeMap<String, (u64, String)> = all.into_iter().map(|(k, v)| (k, (v.node, v.desired))).collect();
        match &first {
            None => first = Some(m),
            Some(f) if *f != m => return Err(format!("node {n} has {m:?}, node {} has {f:?}", nodes[0])),
            Some(_) => {}
        }
    }
    let recs = first.unwrap_or_default();
    check_running(view, &recs)?;
    Ok(recs.into_iter().map(|(k, (n, _))| (k, n)).collect())
}

/// What runs is exactly what the records (name → node, desired) say: each VM desired running
/// runs once, on its node, and nothing else runs.
pub fn check_running(view: &Running, recs: &BTreeMap<String, (u64, String)>) -> Result<(), String> {
    let running = view.snapshot();
    for (name, (node, desired)) in recs {
        let on = running.get(name).cloned().unwrap_or_default();
        let want: Vec<u64> = if desired == "running" && *node != 0 { vec![*node] } else { vec![] };
        if on != want {
            return Err(format!("{name} (on node {node}, desired {desired}) runs on {on:?}"));
        }
    }
    if let Some(stray) = running.keys().find(|k| !recs.contains_key(*k)) {
        return Err(format!("{stray} runs but has no record"));
    }
    Ok(())
}

impl Client {
    /// Creates and starts a VM (128 MiB, 1 vCPU), on `pin` if given.
    pub async fn write_vm_create(
        &mut self,
        via: u64,
        name: &str,
        pin: Option<u64>,
        deadline: Duration,
    ) -> Result<u64, String> {
        match pin {
            None => self.write(via, Write::VmCreate(name), deadline).await,
            Some(node) => self.write(via, Write::VmCreateOn(name, node), deadline).await,
        }
    }
}

/// Waits until `node` runs no VM (it fenced itself, or died); returns how long that took.
pub async fn wait_fenced(view: &Running, node: u64, bound: Duration, seed: u64) -> Duration {
    let t0 = Instant::now();
    loop {
        view.assert_ok(seed);
        if view.snapshot().values().all(|on| !on.contains(&node)) {
            return t0.elapsed();
        }
        if t0.elapsed() > bound {
            panic!("seed {seed}: node {node} still runs VMs {bound:?} after it was cut off: {:?}", view.snapshot());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
