//! Simulated nodes, for measuring a cluster with thousands of them: `simulated-nodes`
//! registers capacity-only nodes through Raft (`NodeService/RegisterSimulatedNodes`, an admin
//! method; they are no members and run nothing), and `heartbeats` makes them heartbeat the
//! leader as real nodes do while the leader's CPU is read from /proc.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use blixard_proto::v1::node_service_client::NodeServiceClient;
use blixard_proto::v1::{HeartbeatRequest, RegisterSimulatedNodesRequest};
use tokio::time::Instant;

use crate::target::{blixard_channel, find_leader, Target};
use crate::tls::TlsArgs;

/// Simulated nodes registered per request (the server's limit per command).
const PER_REQUEST: u32 = 1000;
/// The id of simulated node 0 (`blixard_core::state::SIMULATED_NODE_IDS`).
const FIRST_ID: u64 = blixard_core::state::SIMULATED_NODE_IDS;

#[derive(clap::Args)]
pub struct RegisterArgs {
    /// A blixard node's API (HOST:PORT).
    #[arg(long)]
    endpoint: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// How many nodes, numbered from 0 (ids 2^40 + number).
    #[arg(long, default_value_t = 10_000)]
    nodes: u32,
    #[arg(long, default_value_t = 64)]
    vcpus: u32,
    #[arg(long, default_value_t = 256 * 1024)]
    memory_mib: u64,
    #[arg(long, default_value_t = 1024)]
    disk_gib: u64,
    /// Each node gets the label zone=zN, N its number's block of 1000 modulo this (0: none).
    #[arg(long, default_value_t = 3)]
    zones: u32,
}

pub async fn register(a: RegisterArgs) -> anyhow::Result<()> {
    let tls = a.tls.load()?;
    let mut c = NodeServiceClient::new(blixard_channel(&a.endpoint, &tls).await?);
    let t = std::time::Instant::now();
    let mut first = 0;
    while first < a.nodes {
        let count = PER_REQUEST.min(a.nodes - first);
        let block = first / PER_REQUEST;
        let labels = if a.zones == 0 {
            HashMap::new()
        } else {
            HashMap::from([("zone".to_string(), format!("z{}", block % a.zones))])
        };
        let req = RegisterSimulatedNodesRequest {
            first: u64::from(first),
            count,
            vcpus: a.vcpus,
            memory_mib: a.memory_mib,
            disk_gib: a.disk_gib,
            labels,
        };
        c.register_simulated_nodes(req)
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
            .with_context(|| format!("registering simulated nodes {first}.."))?;
        first += count;
    }
    eprintln!("registered {} simulated nodes in {:.2} s", a.nodes, t.elapsed().as_secs_f64());
    Ok(())
}

#[derive(clap::Args)]
pub struct HeartbeatArgs {
    /// The cluster's API endpoints (HOST:PORT), comma-separated: the heartbeats go to the leader's.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Which process serves which endpoint: ENDPOINT=PID, comma-separated (the leader's CPU is read).
    #[arg(long, required = true)]
    pids: String,
    /// Simulated nodes 0..N heartbeat (registered before with `simulated-nodes`); 0 measures
    /// the leader without them (a baseline).
    #[arg(long, default_value_t = 1000)]
    nodes: u32,
    /// Each node's heartbeat interval (the daemon's default is 500 ms).
    #[arg(long, default_value = "500ms", value_parser = crate::parse_duration)]
    interval: Duration,
    /// Measured window.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// Heartbeats before the window (nodes registered just now are first declared down, then
    /// ready again when heard: those transitions go through Raft here).
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    warmup: Duration,
    /// HTTP/2 connections the heartbeats share (a real node has its own).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// `stream`: one long-lived `Heartbeats` stream per node, as nodes heartbeat now; `unary`:
    /// one `Heartbeat` call per heartbeat, as they did before (for before/after pairs).
    #[arg(long, default_value = "stream", value_parser = ["stream", "unary"])]
    mode: String,
}

/// One simulated node's heartbeats from `start` until `end`, on one stream (as a node does):
/// each answer is counted (when in the window from `measure_from` on) as answered; a stream
/// refused or ended early counts once as failed, and a new one is opened at the next tick.
#[allow(clippy::too_many_arguments)]
async fn stream_node(
    c: NodeServiceClient<tonic::transport::Channel>,
    node_id: u64,
    start: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) {
    use futures::StreamExt;
    let mut tick = tokio::time::interval_at(start, interval);
    let mut seq = 0;
    let mut tx: Option<futures::channel::mpsc::Sender<HeartbeatRequest>> = None;
    let mut reader: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let at = tick.tick().await;
        if at >= end {
            break;
        }
        seq += 1;
        let req = HeartbeatRequest { node_id, seq };
        if reader.as_ref().is_some_and(|r| r.is_finished()) {
            tx = None;
        }
        if let Some(t) = tx.as_mut() {
            if t.try_send(req).is_ok() {
                continue;
            }
        }
        let (mut t, rx) = futures::channel::mpsc::channel(16);
        let _ = t.try_send(req);
        match c.clone().heartbeats(rx).await {
            Ok(r) => {
                let mut answers = r.into_inner();
                let (ok, failed) = (ok.clone(), failed.clone());
                reader = Some(tokio::spawn(async move {
                    while let Some(a) = answers.next().await {
                        let counter = if a.is_ok() { &ok } else { &failed };
                        if Instant::now() >= measure_from && Instant::now() < end {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
                tx = Some(t);
            }
            Err(_) => {
                if at >= measure_from {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    drop(tx);
    if let Some(r) = reader {
        r.abort();
    }
}

pub async fn heartbeats(a: HeartbeatArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.connections > 0, "--connections must be at least 1");
    let tls = a.tls.load()?;
    let pids = crate::failover::parse_pids(&a.pids)?;
    let (leader, leader_id) = find_leader(Target::Blixard, &a.endpoints, &tls).await?;
    let pid = *pids.get(&leader).with_context(|| format!("--pids names no process for the leader {leader}"))?;
    let mut clients = Vec::new();
    for _ in 0..a.connections {
        clients.push(NodeServiceClient::new(blixard_channel(&leader, &tls).await?));
    }
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let tasks: Vec<_> = (0..a.nodes)
        .map(|i| {
            let mut c = clients[i as usize % clients.len()].clone();
            let (ok, failed) = (ok.clone(), failed.clone());
            // Spread over the interval, as independent nodes are.
            let offset = a.interval.mul_f64(f64::from(i) / f64::from(a.nodes));
            let interval = a.interval;
            let node_id = FIRST_ID + u64::from(i);
            if a.mode == "stream" {
                return tokio::spawn(stream_node(c, node_id, start + offset, interval, measure_from, end, ok, failed));
            }
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(start + offset, interval);
                let mut seq = 0;
                loop {
                    let at = tick.tick().await;
                    if at >= end {
                        break;
                    }
                    seq += 1;
                    let r = c.heartbeat(HeartbeatRequest { node_id, seq }).await;
                    let counter = if r.is_ok() { &ok } else { &failed };
                    if at >= measure_from {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from).await;
    let cpu0 = crate::cpu::process_busy(&pid.to_string());
    let t0 = std::time::Instant::now();
    tokio::time::sleep_until(end).await;
    let cpu = crate::cpu::process_busy(&pid.to_string()).saturating_sub(cpu0);
    let secs = t0.elapsed().as_secs_f64();
    for t in tasks {
        t.await.context("a heartbeat task panicked")?;
    }
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let share = cpu as f64 / ticks / secs;
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "{} simulated nodes heartbeating node {leader_id} (the leader, pid {pid}) every {:?} ({}): {:.0} heartbeats/s \
         answered, {failed} failed; over {secs:.1} s the leader used {:.3} CPU s: {:.2} % of a core \
         ({:.1} µs per heartbeat)",
        a.nodes,
        a.interval,
        if a.mode == "stream" { "a stream per node" } else { "a call per heartbeat" },
        ok as f64 / secs,
        cpu as f64 / ticks,
        share * 100.0,
        if ok > 0 { cpu as f64 / ticks * 1e6 / ok as f64 } else { f64::NAN },
    );
    anyhow::ensure!(failed == 0, "{failed} heartbeats failed");
    Ok(())
}
