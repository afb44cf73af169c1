//! A node that joins and registers long after the leader was elected (more than the down
//! timeout later) is never declared down while it heartbeats: the leader judges a node from
//! when it first saw it registered, not from its own election (the bug behind the stopped
//! second run of `scripts/bench/host-death.sh`: node 3 of a fresh cluster was marked down at
//! once, and a VM placed on it moved).
#![cfg(madsim)]

use std::time::Duration;

use blixard_sim::vmload::node_states;
use blixard_sim::*;

/// Node 3 boots this long after the others (the down timeout is 3 s).
const LATE_BY: Duration = Duration::from_secs(6);
/// How long after node 3 is first seen registered the states are watched (more than the down
/// timeout, so a node judged from the election would have been declared down by then).
const WATCH: Duration = Duration::from_secs(5);

#[test]
fn a_node_registered_long_after_the_election_is_not_declared_down() {
    let seed = seed();
    let h = run(seed, move |dir| async move {
        let cluster = Cluster::start_late(3, &dir, LATE_BY);
        let host = cluster.client_host();
        host.spawn(async move {
            let mut h = Vec::new();
            let leader = wait_formed(1, 2).await;
            h.push(format!("nodes 1 and 2 formed, leader {leader}"));
            // Every 50 ms of simulated time, node 1's view of every node's state (a down node
            // stays down until its next heartbeat is heard, ≥ 100s of ms: no flap is missed).
            let mut registered = None;
            for _ in 0..2_000 {
                if let Some(states) = node_states(1).await {
                    if let Some((id, _)) = states.iter().find(|(_, s)| *s == "down") {
                        panic!(
                            "seed {seed}: node {id} was declared down while it heartbeats: {states:?}\n{}\n\
                             replay: scripts/sim.sh {seed} --test s31_late_join",
                            h.join("\n")
                        );
                    }
                    if registered.is_none() && states.contains_key(&3) {
                        registered = Some(tokio::time::Instant::now());
                        h.push(format!("node 3 registered: {states:?}"));
                    }
                }
                if registered.is_some_and(|t| t.elapsed() > WATCH) {
                    return h;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("seed {seed}: node 3 did not register: {}", h.join("\n"));
        })
        .await
        .expect("client host")
    });
    eprintln!("seed {seed}:\n  {}", h.join("\n  "));
}
