//! Multi-node clusters of real `blixard node` processes: formation, failover, catch-up,
//! snapshots after compaction, leave, and a 5-node cluster that loses two.

mod common;

use std::collections::BTreeMap;

use common::*;

/// Every key under `prefix` as node `addr` sees it (stale: its local state).
fn read_keys(addr: &str, prefix: &str, stale: bool) -> BTreeMap<String, String> {
    let mut args = vec!["kv", "list", prefix, "--limit", "10000"];
    if stale {
        args.push("--stale");
    }
    cli_json(addr, &args)["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap().to_string(), p["value"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn three_nodes_form_a_cluster_and_any_node_serves_reads_and_writes() {
    let c = TestCluster::start(3, &[]);
    let st = c.status_via(2).unwrap();
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for (i, m) in members.iter().enumerate() {
        assert_eq!(m["id"], i as u64 + 1);
        assert_eq!(m["addr"], c.node(i as u64 + 1).addr.as_str());
        assert_eq!(m["membership"], "voter");
        assert_eq!(m["reachable"], true);
    }
    // Writes through each node (followers forward), linearizable reads from each node.
    for n in 1..=3u64 {
        cli_json(&c.node(n).addr, &["kv", "put", &format!("from-{n}"), &n.to_string()]);
    }
    for n in 1..=3u64 {
        for k in 1..=3u64 {
            let v = cli_json(&c.node(n).addr, &["kv", "get", &format!("from-{k}")]);
            assert_eq!(v["value"], k.to_string(), "node {n} reading from-{k}");
        }
    }
    // A duplicate id or address is refused.
    let dup = cli(&c.node(1).addr, &["cluster", "join", "--node-id", "2", "--node-addr", "127.0.0.1:1"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(stderr(&dup).contains("node id 2 is already a member"), "{}", stderr(&dup));
    let dup = cli(&c.node(1).addr, &["cluster", "join", "--node-id", "9", "--node-addr", &c.node(3).addr]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(stderr(&dup).contains("is already used by node 3"), "{}", stderr(&dup));
}

#[test]
fn killing_the_leader_elects_another_and_loses_nothing_acknowledged() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let before = write_keys(&c.node(follower).addr, "a", 300);
    assert_eq!(before.len(), 300);

    c.node_mut(leader).kill9();
    let new_leader = c.wait_new_leader(leader);
    assert_ne!(new_leader, leader);
    let survivor = (1..=3).find(|&n| n != leader && n != new_leader).unwrap();
    let after = write_keys(&c.node(survivor).addr, "b", 100);
    assert_eq!(after.len(), 100, "writes continue on the majority");
    assert_eq!(read_keys(&c.node(survivor).addr, "a/", false), before);

    // The old leader comes back as a follower and catches up.
    c.node_mut(leader).spawn(&[]);
    c.wait_voters(3);
    let st = c.status_via(new_leader).unwrap();
    c.wait_applied(leader, st["commit_index"].as_u64().unwrap());
    assert_eq!(read_keys(&c.node(leader).addr, "a/", true), before);
    assert_eq!(read_keys(&c.node(leader).addr, "b/", true), after);
}

#[test]
fn losing_a_follower_keeps_the_cluster_writable_and_it_catches_up_on_restart() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    c.node_mut(follower).kill9();
    let written = write_keys(&c.node(leader).addr, "k", 200);
    assert_eq!(written.len(), 200);
    c.node_mut(follower).spawn(&[]);
    let st = c.status_via(leader).unwrap();
    c.wait_applied(follower, st["commit_index"].as_u64().unwrap());
    assert_eq!(read_keys(&c.node(follower).addr, "k/", true), written);
}

#[test]
fn a_node_joining_after_compaction_receives_the_state_as_a_snapshot() {
    let compact = ["--snapshot-entries", "50", "--keep-entries", "10"];
    let mut c = TestCluster::start(1, &compact);
    let written = write_keys(&c.node(1).addr, "s", 400);
    assert_eq!(written.len(), 400);
    cli_json(&c.node(1).addr, &["vm", "create", "kept", "--memory", "256"]);
    c.add(2, &compact);
    c.wait_voters(2);
    let st = c.status_via(1).unwrap();
    c.wait_applied(2, st["commit_index"].as_u64().unwrap());
    assert!(c.node(1).log().contains("snapshot sent"), "leader log: {}", c.node(1).log());
    assert!(c.node(2).log().contains("installing snapshot"));
    assert_eq!(read_keys(&c.node(2).addr, "s/", true), written);
    assert_eq!(cli_json(&c.node(2).addr, &["vm", "get", "kept", "--stale"])["memory_mib"], 256);
    // The new member is a full voter: with node 1 down... it cannot elect alone (2 voters), but
    // it serves linearizable reads while both are up.
    assert_eq!(read_keys(&c.node(2).addr, "s/", false), written);
}

#[test]
fn a_node_removed_while_down_cannot_disrupt_the_cluster_when_it_returns() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let gone = (1..=3).find(|&n| n != leader).unwrap();
    // Removed while down, it never learns of its removal and still believes it is a voter.
    c.node_mut(gone).kill9();
    let out = cli_json(&c.node(leader).addr, &["cluster", "leave", "--node-id", &gone.to_string()]);
    assert_eq!(out["node_id"], gone);
    let st = c.status_via(leader).unwrap();
    let ids: Vec<u64> = st["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert!(!ids.contains(&gone), "{ids:?}");
    let term = st["term"].as_u64().unwrap();

    let campaigns_before = c.node(gone).log().matches("became pre-candidate").count();
    c.node_mut(gone).spawn(&[]);
    wait_until("the removed node to campaign again", std::time::Duration::from_secs(20), || {
        (c.node(gone).log().matches("became pre-candidate").count() > campaigns_before + 2).then_some(())
    });
    let still = (1..=3).find(|&n| n != leader && n != gone).unwrap();
    cli_json(&c.node(still).addr, &["kv", "put", "after-leave", "ok"]);
    let st = c.status_via(leader).unwrap();
    assert_eq!(st["leader_id"], leader, "leadership did not move");
    assert_eq!(st["term"], term, "the removed node did not force a new term");

    let again = cli(&c.node(leader).addr, &["cluster", "leave", "--node-id", &gone.to_string()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("is not a member"));
}

#[test]
fn a_running_node_that_leaves_stops_taking_part() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let gone = (1..=3).find(|&n| n != leader).unwrap();
    cli_json(&c.node(leader).addr, &["cluster", "leave", "--node-id", &gone.to_string()]);
    wait_until("the removed node to notice", std::time::Duration::from_secs(10), || {
        c.node(gone).log().contains("this node was removed from the cluster").then_some(())
    });
    let still = (1..=3).find(|&n| n != leader && n != gone).unwrap();
    cli_json(&c.node(still).addr, &["kv", "put", "two-left", "ok"]);
    assert_eq!(c.status_via(leader).unwrap()["members"].as_array().unwrap().len(), 2);
}

#[test]
fn the_leader_can_leave_by_handing_over_leadership() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    cli_json(&c.node(leader).addr, &["cluster", "leave", "--node-id", &leader.to_string()]);
    let other = (1..=3).find(|&n| n != leader).unwrap();
    let st = c.status_via(other).unwrap();
    assert_ne!(st["leader_id"], leader);
    assert_eq!(st["members"].as_array().unwrap().len(), 2);
    cli_json(&c.node(other).addr, &["kv", "put", "x", "y"]);
}

#[test]
fn five_nodes_with_two_down_still_accept_writes() {
    let mut c = TestCluster::start(5, &[]);
    let leader = c.wait_voters(5);
    let down: Vec<u64> = (1..=5).filter(|&n| n != leader).take(2).collect();
    for &d in &down {
        c.node_mut(d).kill9();
    }
    let up = (1..=5).find(|n| *n != leader && !down.contains(n)).unwrap();
    let w = write_keys(&c.node(up).addr, "five", 50);
    assert_eq!(w.len(), 50);
    // And with the leader down too (three of five gone would be a minority; two gone is not):
    // bring one back, kill the leader, and the three remaining elect a new one.
    c.node_mut(down[0]).spawn(&[]);
    c.node_mut(leader).kill9();
    let nl = c.wait_new_leader(leader);
    assert!(!down[1..].contains(&nl));
    cli_json(&c.node(nl).addr, &["kv", "put", "still", "writable"]);
    assert_eq!(read_keys(&c.node(nl).addr, "five/", false), w);
}

/// Issue 11: a write sent to a follower at the instant the leader dies was forwarded to the dead
/// leader and lost; the follower used to answer "may or may not have been applied" after 8 s.
/// Now it proposes it again to the new leader and answers the one true outcome: the writes
/// succeed, and each was applied once (a VM create applied twice would answer "already exists"
/// to its retry; a put applied again after the delete that followed it would bring the key back).
#[test]
fn writes_to_a_follower_when_the_leader_dies_succeed_exactly_once() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let addr = c.node(follower).addr.clone();
    c.node_mut(leader).kill9();
    let spawn = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(["--addr", &addr, "-o", "json"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // All at once, while the follower still believes in the dead leader.
    let put = spawn(&["kv", "put", "failover", "v1"]);
    let create = spawn(&["vm", "create", "failover-vm", "--memory", "128"]);
    let (put, create) = (put.wait_with_output().unwrap(), create.wait_with_output().unwrap());
    assert!(put.status.success(), "put through a follower failed: {}", stderr(&put));
    assert!(create.status.success(), "vm create through a follower failed: {}", stderr(&create));
    let vm: serde_json::Value = serde_json::from_slice(&create.stdout).unwrap();
    assert_eq!(vm["name"], "failover-vm");
    cli_json(&addr, &["kv", "delete", "failover"]);
    // Every node that is up agrees, and the deleted key stays deleted.
    let survivor = (1..=3).find(|&n| n != leader && n != follower).unwrap();
    let st = c.status_via(follower).unwrap();
    c.wait_applied(survivor, st["commit_index"].as_u64().unwrap());
    for n in [follower, survivor] {
        let o = cli(&c.node(n).addr, &["kv", "get", "failover"]);
        assert_eq!(o.status.code(), Some(1), "node {n}: the deleted key came back: {}", stdout(&o));
        let v = cli_json(&c.node(n).addr, &["vm", "get", "failover-vm"]);
        assert_eq!(v["create_index"], vm["create_index"], "node {n}");
    }
}
