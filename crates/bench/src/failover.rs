//! Leader failover: SIGKILL the leader, then write through every surviving endpoint until one put
//! succeeds. The figure is the time from the kill to that first success.
//!
//! Each survivor gets a new put every `probe_every` (each with its own short timeout), rather than
//! one put at a time: a server that holds a put while it has no leader (etcd does, until the
//! timeout) would otherwise only be probed once per timeout, and its figure rounded up to it.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustix::process::{kill_process, Pid, Signal};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::load::{key, value};
use crate::target::{find_leader, Target, Writer};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverResult {
    pub target: Target,
    pub killed_endpoint: String,
    pub killed_pid: i32,
    pub leader_id: u64,
    /// From the kill(2) call to the first successful put through a surviving node.
    pub failover_ms: f64,
    pub first_success_endpoint: String,
    /// Puts started through that endpoint since the kill, up to the successful one.
    pub attempts: u64,
}

pub struct FailoverConfig {
    /// Timeout of each put after the kill.
    pub per_request: Duration,
    /// How often a new put starts through each survivor (the figure's resolution).
    pub probe_every: Duration,
    pub give_up_after: Duration,
    pub value_size: usize,
    pub keys: u64,
    /// Client TLS for every connection (`None`: plaintext).
    pub tls: crate::tls::Tls,
}

/// Parses `HOST:PORT=PID,...`.
pub fn parse_pids(s: &str) -> anyhow::Result<HashMap<String, i32>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (ep, pid) = p.rsplit_once('=').with_context(|| format!("--pids entry {p:?}: expected ENDPOINT=PID"))?;
            let pid: i32 = pid.trim().parse().with_context(|| format!("--pids entry {p:?}: bad pid"))?;
            Ok((ep.trim().to_string(), pid))
        })
        .collect()
}

pub async fn run(
    target: Target,
    endpoints: &[String],
    pids: &HashMap<String, i32>,
    cfg: &FailoverConfig,
) -> anyhow::Result<FailoverResult> {
    let (leader_ep, leader_id) = find_leader(target, endpoints, &cfg.tls).await.context("cannot find the leader")?;
    let Some(&pid) = pids.get(&leader_ep) else { bail!("no pid given for the leader's endpoint {leader_ep}") };
    let survivors: Vec<String> = endpoints.iter().filter(|e| **e != leader_ep).cloned().collect();
    if survivors.is_empty() {
        bail!("no surviving endpoint: the leader {leader_ep} is the only one");
    }

    // Connect to the survivors and prove each can write before the kill, so neither connection
    // setup nor a cluster that was not healthy ends up in the figure.
    let mut rng = StdRng::seed_from_u64(leader_id);
    let val = value(&mut rng, cfg.value_size);
    let mut writers = Vec::new();
    for ep in &survivors {
        let mut w = Writer::connect(target, ep, &cfg.tls).await?;
        tokio::time::timeout(Duration::from_secs(5), w.put(key(0), val.clone()))
            .await
            .with_context(|| format!("warm-up put through {ep} timed out"))?
            .with_context(|| format!("warm-up put through {ep} failed"))?;
        writers.push((ep.clone(), w));
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let t0 = Instant::now();
    kill_process(Pid::from_raw(pid).context("pid must be positive")?, Signal::KILL)
        .with_context(|| format!("cannot kill pid {pid}"))?;
    let deadline = t0 + cfg.give_up_after;
    let mut loops = Vec::new();
    for (i, (ep, w)) in writers.into_iter().enumerate() {
        let (tx, val, per_request, every) = (tx.clone(), val.clone(), cfg.per_request, cfg.probe_every);
        let mut rng = StdRng::seed_from_u64(leader_id.wrapping_add(i as u64 + 1));
        let keys = cfg.keys;
        loops.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut attempts = 0u64;
            let mut inflight = tokio::task::JoinSet::new();
            while Instant::now() < deadline {
                tick.tick().await;
                // Reap what finished; never keep more than one timeout's worth of puts in flight.
                while inflight.try_join_next().is_some() {}
                if inflight.len() as u128 >= per_request.as_nanos() / every.as_nanos().max(1) {
                    continue;
                }
                attempts += 1;
                let (mut w, tx, ep, k, v, n) =
                    (w.clone(), tx.clone(), ep.clone(), key(rng.gen_range(0..keys)), val.clone(), attempts);
                inflight.spawn(async move {
                    if let Ok(Ok(_)) = tokio::time::timeout(per_request, w.put(k, v)).await {
                        let _ = tx.send((Instant::now(), ep, n));
                    }
                });
            }
            inflight.shutdown().await;
        }));
    }
    drop(tx);
    let first = rx.recv().await;
    // Every probe still trying stops now.
    for l in &loops {
        l.abort();
    }
    let Some((at, ep, attempts)) = first else {
        bail!("no put succeeded through {} within {:?} of killing the leader", survivors.join(","), cfg.give_up_after)
    };
    Ok(FailoverResult {
        target,
        killed_endpoint: leader_ep,
        killed_pid: pid,
        leader_id,
        failover_ms: at.duration_since(t0).as_secs_f64() * 1000.0,
        first_success_endpoint: ep,
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_parse() {
        let m = parse_pids("127.0.0.1:1=10, 127.0.0.1:2=20").unwrap();
        assert_eq!(m["127.0.0.1:1"], 10);
        assert_eq!(m["127.0.0.1:2"], 20);
        assert!(parse_pids("127.0.0.1:1").is_err());
        assert!(parse_pids("127.0.0.1:1=x").is_err());
    }
}
