//! `cluster leave` of a node that runs VMs, without draining it first (issue 13's leave bug,
//! found by the random fault schedules: seeds 3, 5 and 101 of their first version, seed 41 of
//! `s43`). The node that left may still run its VMs until its lease runs out — it hears of its
//! removal late or never, and the leader answered its heartbeats until then — so its VMs must
//! start elsewhere only once the leader has declared it down, as it would a silent member.
//! Checked from the fake driver's global view: at no instant do two nodes run one VM; the node
//! that left runs nothing once its lease ran out (its heartbeats are refused: it fences); its
//! VMs run elsewhere within a bound; the cluster ends converged.
//!
//! The node that leaves keeps running (a real daemon is not killed by its removal): a follower;
//! a follower that cannot hear (so it never learns it left); the leader (which hands leadership
//! over first). The seed picks the node and the timings.
#![cfg(madsim)]

use std::time::Duration;

use blixard_sim::vmload::{create, wait_converged, wait_fenced, wait_ready, wait_running};
use blixard_sim::*;
use madsim::rand::{thread_rng, Rng};

/// The VMs of the node that left run elsewhere within this much simulated time (its lease runs
/// out, the leader declares it down after 3 s of silence, then placement and a reconciler pass).
const BOUND: Duration = Duration::from_secs(10);
/// The node that left runs nothing once its lease ran out: 2 s from its last answered
/// heartbeat, plus the fencer's own turn.
const FENCE_BOUND: Duration = Duration::from_millis(3_000);

#[derive(Clone, Copy, Debug)]
enum Who {
    Follower,
    /// A follower that cannot hear: it never learns that it left.
    Deaf,
    Leader,
}

async fn leave(dir: std::path::PathBuf, seed: u64, who: Who) -> Vec<String> {
    let cluster = Cluster::start(4, &dir);
    let host = cluster.client_host();
    host.spawn(async move {
        let mut h = Vec::new();
        let leader = wait_formed(1, 4).await;
        wait_ready(1, 4).await;
        let followers: Vec<u64> = (1..=4).filter(|&x| x != leader).collect();
        let victim = match who {
            Who::Leader => leader,
            _ => followers[thread_rng().gen_range(0..followers.len())],
        };
        let rest: Vec<u64> = (1..=4).filter(|&x| x != victim).collect();
        h.push(format!("formed: leader {leader}; node {victim} ({who:?}) will leave"));
        let pinned: Vec<String> = (0..4).map(|i| format!("pin-{i}")).collect();
        let free: Vec<String> = (0..4).map(|i| format!("free-{i}")).collect();
        let mut client = Client::new(0x1EA7, 4);
        h.extend(create(&mut client, rest[0], &pinned, Some(victim)).await);
        h.extend(create(&mut client, rest[1], &free, None).await);
        let all: Vec<String> = pinned.iter().chain(&free).cloned().collect();
        wait_running(&cluster.view, &all, &[], BOUND, seed).await;
        h.push(format!("all 8 VMs running: {:?}", cluster.view.snapshot()));
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(0..1_000))).await;
        if matches!(who, Who::Deaf) {
            cluster.cut_inbound(victim);
        }
        let via = rest[thread_rng().gen_range(0..rest.len())];
        let r = client.write(via, Write::Leave(victim), Duration::from_secs(30)).await;
        let at = r.unwrap_or_else(|e| panic!("seed {seed}: leave of {victim}: {e}"));
        h.push(format!("node {victim} left at {at} (through node {via}), not drained, still running"));
        let fenced = wait_fenced(&cluster.view, victim, FENCE_BOUND, seed).await;
        h.push(format!("node {victim} runs nothing {} ms after the leave", fenced.as_millis()));
        let took = wait_running(&cluster.view, &all, &[victim], BOUND, seed).await;
        h.push(format!("its VMs run elsewhere {} ms later", took.as_millis()));
        // It never starts anything again, however long it runs.
        for _ in 0..30 {
            cluster.view.assert_ok(seed);
            assert!(
                cluster.view.snapshot().values().all(|on| !on.contains(&victim)),
                "seed {seed}: node {victim} runs a VM after it left: {:?}",
                cluster.view.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.heal(victim);
        let placed = wait_converged(&cluster.view, &rest, seed).await;
        h.push(format!("converged on {rest:?}: {placed:?}"));
        cluster.kill(victim);
        cluster.view.assert_ok(seed);
        h.push(format!("{} starts checked, no VM ever ran on two nodes", cluster.view.starts()));
        h.extend(cluster.view.log());
        h
    })
    .await
    .expect("client host")
}

fn go(who: Who) {
    let seed = seed();
    let h = run(seed, move |d| leave(d, seed, who));
    eprintln!(
        "leave {who:?} seed {seed}:\n  {}",
        h.iter().filter(|l| !l.starts_with(char::is_numeric)).cloned().collect::<Vec<_>>().join("\n  ")
    );
}

#[test]
fn a_follower_that_leaves_undrained_never_runs_a_vm_another_node_runs() {
    go(Who::Follower);
}

#[test]
fn a_follower_that_cannot_hear_of_its_leave_fences_before_its_vms_run_elsewhere() {
    go(Who::Deaf);
}

#[test]
fn a_leader_that_leaves_undrained_never_runs_a_vm_another_node_runs() {
    go(Who::Leader);
}
