//! `blixard cluster transfer-leader`: to a chosen voter and to "any", through a follower (which
//! forwards to the leader) and through the leader, and its refusals: an unknown id, a learner,
//! an unreachable voter (timed out) and a cluster without a quorum.

mod common;

use std::time::Duration;

use common::*;

fn leader_seen_by(c: &TestCluster, id: u64) -> Option<u64> {
    let st = c.status_via(id)?;
    (st["role"] == "leader").then(|| st["node_id"].as_u64()).flatten()
}

/// Runs transfer-leader through `via`; the command must fail, its stderr is returned.
fn refused(c: &TestCluster, via: u64, args: &[&str]) -> String {
    let mut a = vec!["cluster", "transfer-leader"];
    a.extend_from_slice(args);
    let o = cli(&c.node(via).addr, &a);
    assert!(!o.status.success(), "transfer-leader {args:?} succeeded: {}", stdout(&o));
    stderr(&o)
}

#[test]
fn leadership_moves_to_a_chosen_voter_and_to_any() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let followers: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    let (via, to) = (followers[0], followers[1]);

    // Through a follower, which forwards to the leader.
    let out = cli_json(&c.node(via).addr, &["cluster", "transfer-leader", "--to", &to.to_string()]);
    assert_eq!(out["previous_leader_id"], leader);
    assert_eq!(out["leader_id"], to);
    assert_eq!(out["leader_addr"], c.node(to).addr.as_str());
    assert!(out["term"].as_u64().unwrap() > 0);
    wait_until("the chosen node to report itself leader", Duration::from_secs(10), || {
        (leader_seen_by(&c, to) == Some(to)).then_some(())
    });

    // Without --to: any other voter, picked by the leader.
    let out = cli_json(&c.node(to).addr, &["cluster", "transfer-leader"]);
    assert_eq!(out["previous_leader_id"], to);
    let next = out["leader_id"].as_u64().unwrap();
    assert!(next != to && (1..=3).contains(&next), "{out}");
    wait_until("the picked node to report itself leader", Duration::from_secs(10), || {
        (leader_seen_by(&c, next) == Some(next)).then_some(())
    });

    // To the node that already leads: nothing to do, said so.
    let o = cli(&c.node(to).addr, &["cluster", "transfer-leader", "--to", &next.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("node {next} at")) && stdout(&o).contains("already leads"), "{}", stdout(&o));

    // The cluster still takes writes through every node.
    for id in 1..=3 {
        cli_json(&c.node(id).addr, &["kv", "put", &format!("after-transfer-{id}"), "ok"]);
    }
}

#[test]
fn transfer_leader_refuses_unknown_ids_learners_unreachable_voters_and_no_quorum() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let followers: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();

    let e = refused(&c, followers[0], &["--to", "9"]);
    assert!(e.contains("node 9 is not a member of the cluster"), "{e}");
    let e = refused(&c, leader, &["--to", "0"]);
    assert!(e.contains("--to") && e.contains("start at 1"), "{e}");

    // A member that never started stays a learner (it cannot catch up).
    let addr = format!("127.0.0.1:{}", free_port());
    cli_json(&c.node(leader).addr, &["cluster", "join", "--node-id", "4", "--node-addr", &addr]);
    let e = refused(&c, followers[0], &["--to", "4"]);
    assert!(e.contains("node 4 is a learner, not a voter"), "{e}");

    // A voter that is down: the leader gives up after its deadline and says so.
    let down = followers[1];
    c.node_mut(down).kill9();
    let e = refused(&c, followers[0], &["--to", &down.to_string()]);
    assert!(e.contains(&format!("timed out: leadership did not move to node {down}")), "{e}");
    // The leader kept leading and still takes writes.
    cli_json(&c.node(followers[0]).addr, &["kv", "put", "after-timeout", "ok"]);

    // One of three voters left: no quorum, whichever node is asked.
    c.node_mut(leader).kill9();
    let last = followers[0];
    wait_until("the last node to know no leader", Duration::from_secs(30), || {
        c.status_via(last).filter(|st| st["leader_id"].is_null()).map(|_| ())
    });
    let e = refused(&c, last, &["--to", &down.to_string()]);
    assert!(e.contains("no quorum") && e.contains("was not transferred"), "{e}");
}
