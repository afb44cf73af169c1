use super::*;
use raft::eraftpb::Entry;

/// Node 1 of {1, 2, 3}, following leader 2 at term 5, its log 1..=10 of term 5, committed 8.
fn with<R>(f: impl FnOnce(&Local) -> R) -> R {
    let member = |id: u64| (1..=3).contains(&id);
    let term_at = |i: u64| (i <= 10).then_some(if i == 0 { 0 } else { 5 });
    let l = Local {
        id: 1,
        term: 5,
        leader: 2,
        in_lease: true,
        is_leader: false,
        last_index: 10,
        committed: 8,
        applied: 8,
        member: &member,
        term_at: &term_at,
    };
    f(&l)
}

fn msg(t: MessageType, from: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = 1;
    m.term = term;
    m
}

fn ent(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e
}

fn append(from: u64, term: u64, index: u64, log_term: u64, entries: &[(u64, u64)]) -> Message {
    let mut m = msg(MessageType::MsgAppend, from, term);
    m.index = index;
    m.log_term = log_term;
    m.set_entries(entries.iter().map(|&(i, t)| ent(i, t)).collect::<Vec<_>>().into());
    m
}

fn ok(m: &Message) {
    with(|l| assert_eq!(check(m, l), Ok(()), "{m:?}"));
}

fn refused(m: &Message, needle: &str) {
    let r = with(|l| check(m, l)).expect_err("should be refused");
    assert!(r.0.contains(needle), "{r} (wanted: {needle})");
}

#[test]
fn the_leaders_ordinary_traffic_passes() {
    let mut hb = msg(MessageType::MsgHeartbeat, 2, 5);
    hb.commit = 10;
    ok(&hb);
    ok(&append(2, 5, 10, 5, &[(11, 5), (12, 5)]));
    ok(&append(2, 5, 8, 5, &[(9, 5), (10, 5), (11, 5)]));
    ok(&msg(MessageType::MsgTimeoutNow, 2, 5));
    ok(&msg(MessageType::MsgRequestPreVote, 3, 6));
    ok(&msg(MessageType::MsgRequestVote, 3, 6));
    ok(&msg(MessageType::MsgReadIndex, 3, 0));
}

#[test]
fn local_only_types_and_misaddressed_messages_are_refused() {
    for t in [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
        MessageType::MsgCheckQuorum,
    ] {
        refused(&msg(t, 2, 5), "local-only");
    }
    let mut m = msg(MessageType::MsgHeartbeat, 2, 5);
    m.to = 3;
    refused(&m, "addressed to node 3");
    refused(&msg(MessageType::MsgHeartbeat, 1, 5), "claims to come from node 1");
    refused(&msg(MessageType::MsgHeartbeat, 0, 5), "claims to come from node 0");
    refused(&msg(MessageType::MsgHeartbeat, 99, 5), "not a member");
    refused(&msg(MessageType::MsgAppend, 2, 0), "has no term");
}

#[test]
fn a_heartbeat_committing_past_our_log_is_refused() {
    // raft-rs: "to_commit 11 is out of range [last_index 10]", and the process ends.
    let mut m = msg(MessageType::MsgHeartbeat, 2, 5);
    m.commit = 11;
    refused(&m, "past our last index 10");
}

#[test]
fn only_this_terms_leader_leads_and_a_newer_one_waits_for_the_lease() {
    refused(&append(3, 5, 10, 5, &[(11, 5)]), "whose leader is node 2");
    refused(&msg(MessageType::MsgHeartbeat, 3, 5), "whose leader is node 2");
    refused(&append(3, 9, 10, 5, &[(11, 9)]), "within the election timeout");
    refused(&msg(MessageType::MsgHeartbeat, 3, 9), "within the election timeout");
    // Once the lease is over, a newer leader is believed.
    let member = |id: u64| (1..=3).contains(&id);
    let term_at = |i: u64| (i <= 10).then_some(5);
    let l = Local {
        id: 1,
        term: 5,
        leader: 2,
        in_lease: false,
        is_leader: false,
        last_index: 10,
        committed: 8,
        applied: 8,
        member: &member,
        term_at: &term_at,
    };
    assert_eq!(check(&append(3, 9, 10, 5, &[(11, 9)]), &l), Ok(()));
}

#[test]
fn timeout_now_comes_only_from_our_leader_at_our_term() {
    refused(&msg(MessageType::MsgTimeoutNow, 3, 5), "whose leader is node 2");
    refused(&msg(MessageType::MsgTimeoutNow, 2, 4), "only our leader");
}

#[test]
fn impossible_appends_are_refused() {
    refused(&append(2, 5, 10, 6, &[]), "past its term");
    refused(&append(2, 5, 10, 5, &[(12, 5)]), "not the next one");
    refused(&append(2, 5, 10, 5, &[(11, 5), (11, 5)]), "not the next one");
    refused(&append(2, 5, u64::MAX, 5, &[(0, 5)]), "not the next one");
    refused(&append(2, 5, 10, 5, &[(11, 6)]), "has term 6");
    refused(&append(2, 5, 10, 5, &[(11, 5), (12, 4)]), "has term 4");
    // Overwriting committed entry 8 (raft-rs: "entry 8 conflict with committed entry").
    let mut m = append(2, 5, 7, 5, &[(8, 5)]);
    m.entries[0].term = 5;
    ok(&m);
    let m = append(2, 6, 7, 4, &[(8, 6)]);
    with(|l| {
        let l2 = Local { term: 6, in_lease: false, ..*l };
        let r = check(&m, &l2).unwrap_err();
        assert!(r.0.contains("replaces our committed entry 8"), "{r}");
    });
    // A log term older than our committed entry's (raft-rs would walk into the compacted log).
    refused(&append(2, 5, 9, 1, &[]), "older than our committed entry's term 5");
}

#[test]
fn impossible_snapshots_are_refused() {
    let snap = |index: u64, term: u64, voters: Vec<u64>, learners: Vec<u64>| {
        let mut m = msg(MessageType::MsgSnapshot, 2, 5);
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.mut_conf_state().voters = voters;
        meta.mut_conf_state().learners = learners;
        m
    };
    ok(&snap(20, 5, vec![1, 2, 3], vec![]));
    ok(&snap(20, 5, vec![2, 3], vec![1]));
    refused(&snap(8, 5, vec![1, 2, 3], vec![]), "not newer than our applied index 8");
    refused(&snap(20, 6, vec![1, 2, 3], vec![]), "of term 6");
    refused(&snap(20, 0, vec![1, 2, 3], vec![]), "of term 0");
    refused(&snap(20, 5, vec![], vec![1]), "no voters");
    refused(&snap(20, 5, vec![2, 3], vec![]), "does not include us");
    refused(&snap(20, 5, vec![1, 2], vec![2]), "a node twice");
    refused(&snap(20, 5, vec![0, 1], vec![]), "node 0");
    let mut joint = snap(20, 5, vec![1, 2, 3], vec![]);
    joint.mut_snapshot().mut_metadata().mut_conf_state().voters_outgoing = vec![1, 2];
    refused(&joint, "joint");
}

#[test]
fn proposals_need_entries_and_a_leader_and_responses_stay_in_the_log() {
    refused(&msg(MessageType::MsgPropose, 3, 0), "without entries");
    let mut p = msg(MessageType::MsgPropose, 3, 0);
    p.mut_entries().push(Entry::default());
    refused(&p, "does not lead");
    let mut r = msg(MessageType::MsgAppendResponse, 2, 5);
    r.index = 11;
    refused(&r, "past our last index");
}
