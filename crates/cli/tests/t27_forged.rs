//! Forged Raft traffic from inside the membership, sent the way an attacker on the network
//! would: a raw connection to a follower's one port with a valid preamble claiming a member's
//! id, then frames of well-formed raft-rs messages that no correct member could send (and a
//! forged snapshot over the snapshot service). Each is dropped: the node stays up, the cluster
//! keeps its term, its leader and its members, acknowledged keys stay, forged ones never appear.
//!
//! What these cannot cover without peer authentication (mTLS): a message that is possible
//! for the real leader, sent under the leader's id.

// rust-protobuf messages are built by mutating a default (they carry hidden fields).
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::io::Write;
use std::net::TcpStream;

use blixard_consensus::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
};
use blixard_core::{Command, Envelope, Session};
use common::*;
use protobuf::Message as _;

fn preamble(from: u64, addr: &str) -> Vec<u8> {
    let mut b = b"BLXRAFT1".to_vec();
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    b.extend_from_slice(addr.as_bytes());
    b
}

fn frame(msgs: &[Message]) -> Vec<u8> {
    let mut body = Vec::new();
    for m in msgs {
        let b = m.write_to_bytes().unwrap();
        body.extend_from_slice(&(b.len() as u32).to_le_bytes());
        body.extend_from_slice(&b);
    }
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

fn msg(t: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(t);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// A committed-looking entry writing `key`.
fn put_entry(index: u64, term: u64, key: &str) -> Entry {
    let env = Envelope {
        session: Some(Session { client: 0xbad, seq: 1, first_unanswered: 1 }),
        now_ms: 0,
        command: Command::KvPut { key: key.as_bytes().to_vec(), value: b"forged".to_vec() },
    };
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = env.encode().into();
    e
}

/// A configuration change removing `id`.
fn remove_entry(index: u64, term: u64, id: u64) -> Entry {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::RemoveNode);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    let env = Envelope { session: None, now_ms: 0, command: Command::Noop };
    let mut e = Entry::default();
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.index = index;
    e.term = term;
    e.data = cc.write_to_bytes().unwrap().into();
    e.context = env.encode().into();
    e
}

fn append(from: u64, to: u64, term: u64, index: u64, log_term: u64, entries: Vec<Entry>) -> Message {
    let mut m = msg(MessageType::MsgAppend, from, to, term);
    m.index = index;
    m.log_term = log_term;
    m.commit = index + entries.len() as u64;
    m.set_entries(entries.into());
    m
}

/// Sends `msgs` to `addr` as node `from`, in one frame, and keeps the connection open a moment
/// (closing it at once could drop the frame unread).
fn send_as(addr: &str, from: u64, msgs: &[Message]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut b = preamble(from, "127.0.0.1:9");
    b.extend_from_slice(&frame(msgs));
    s.write_all(&b).unwrap();
    s
}

/// Sends a forged snapshot through the snapshot service; the answer does not matter.
fn send_snapshot(addr: &str, m: &Message, data: Vec<u8>) {
    use blixard_proto::v1::raft_transport_client::RaftTransportClient;
    use blixard_proto::v1::SnapshotChunk;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let Ok(mut c) = RaftTransportClient::connect(format!("http://{addr}")).await else { return };
        let chunk = SnapshotChunk { message: m.write_to_bytes().unwrap(), data, from_addr: "127.0.0.1:9".into() };
        let _ = c.install_snapshot(tokio_stream::iter(vec![chunk])).await;
    });
}

struct Seen {
    term: u64,
    leader: u64,
    last_index: u64,
    applied: u64,
}

fn seen(c: &TestCluster, id: u64) -> Seen {
    let s = c.status_via(id).unwrap_or_else(|| panic!("node {id} does not answer"));
    Seen {
        term: s["term"].as_u64().unwrap(),
        leader: s["leader_id"].as_u64().unwrap(),
        last_index: s["last_index"].as_u64().unwrap(),
        applied: s["applied_index"].as_u64().unwrap(),
    }
}

#[test]
fn forged_raft_messages_from_a_members_id_change_nothing() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let target = (1..=3).find(|&n| n != leader).unwrap();
    let other = (1..=3).find(|&n| n != leader && n != target).unwrap();
    let addr = c.node(target).addr.clone();
    let acked = write_keys(&c.node(leader).addr, "key", 20);
    assert_eq!(acked.len(), 20);
    let b = seen(&c, target);
    let (t, last) = (b.term, b.last_index.max(b.applied));

    let mut conns = Vec::new();
    // A heartbeat claiming a member, a higher term and a commit past the log's end (raft-rs:
    // "to_commit ... is out of range", the node exited); then the same under the leader's id at
    // our term.
    let mut hb = msg(MessageType::MsgHeartbeat, other, target, t + 1);
    hb.commit = last + 1000;
    conns.push(send_as(&addr, other, &[hb]));
    let mut hb = msg(MessageType::MsgHeartbeat, leader, target, t);
    hb.commit = last + 1000;
    conns.push(send_as(&addr, leader, &[hb]));
    // An append moving the term and the leader.
    conns.push(send_as(
        &addr,
        other,
        &[append(other, target, t + 5, last, t, vec![put_entry(last + 1, t + 5, "forged/term")])],
    ));
    // An append at our term from a member that does not lead it, forging the next entry.
    conns.push(send_as(
        &addr,
        other,
        &[append(other, target, t, last, t, vec![put_entry(last + 1, t, "forged/entry")])],
    ));
    // An append of term 0, which raft-rs takes for a local message and skips term checks for.
    conns.push(send_as(
        &addr,
        other,
        &[append(other, target, 0, last, t, vec![put_entry(last + 1, t, "forged/zero")])],
    ));
    // A forced election.
    conns.push(send_as(&addr, other, &[msg(MessageType::MsgTimeoutNow, other, target, t)]));
    // A proposal to a follower (which would forward it to the leader), of a write and of a
    // configuration change removing the leader.
    let mut p = msg(MessageType::MsgPropose, other, target, 0);
    p.mut_entries().push(put_entry(0, 0, "forged/propose"));
    conns.push(send_as(&addr, other, &[p]));
    let mut p = msg(MessageType::MsgPropose, other, target, 0);
    p.mut_entries().push(remove_entry(0, 0, leader));
    conns.push(send_as(&addr, other, &[p]));
    // A configuration change appended at our term under another member's id.
    conns.push(send_as(&addr, other, &[append(other, target, t, last, t, vec![remove_entry(last + 1, t, leader)])]));
    // Local-only messages and messages for someone else.
    conns.push(send_as(&addr, other, &[msg(MessageType::MsgHup, other, target, t)]));
    conns.push(send_as(&addr, other, &[msg(MessageType::MsgHeartbeat, other, leader, t + 1)]));
    // An empty proposal (raft-rs: "stepped empty MsgProp", the process ends) to the leader.
    conns.push(send_as(&c.node(leader).addr, other, &[msg(MessageType::MsgPropose, other, leader, 0)]));

    // Forged snapshots: from a member that does not lead, with a configuration without
    // voters, and under the leader's id with a state that does not decode.
    let snap = |from: u64, term: u64, voters: Vec<u64>| {
        let mut m = msg(MessageType::MsgSnapshot, from, target, term);
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = last + 1000;
        meta.term = term;
        meta.mut_conf_state().voters = voters;
        m
    };
    send_snapshot(&addr, &snap(other, t, vec![1, 2, 3]), vec![]);
    send_snapshot(&addr, &snap(other, t + 3, vec![target]), vec![]);
    send_snapshot(&addr, &snap(leader, t, vec![]), vec![]);
    send_snapshot(&addr, &snap(leader, t, vec![1, 2, 3]), b"not a snapshot".to_vec());

    // Writes still commit everywhere, then nothing moved.
    for n in 1..=3u64 {
        cli_json(&c.node(n).addr, &["kv", "put", &format!("after/{n}"), "ok"]);
    }
    for n in 1..=3u64 {
        let s = seen(&c, n);
        assert_eq!(s.term, t, "node {n}: a forged message changed the term");
        assert_eq!(s.leader, leader, "node {n}: a forged message changed the leader");
        let st = c.status_via(n).unwrap();
        let voters = st["members"].as_array().unwrap().iter().filter(|m| m["membership"] == "voter").count();
        assert_eq!(voters, 3, "node {n}: a forged configuration change removed a member");
        let listed = cli_json(&c.node(n).addr, &["kv", "list", "", "--limit", "1000", "--stale"]);
        let keys: Vec<String> =
            listed["pairs"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap().to_string()).collect();
        for k in acked.keys() {
            assert!(keys.contains(k), "node {n} lost the acknowledged key {k}");
        }
        assert!(keys.iter().all(|k| !k.starts_with("forged/")), "node {n} holds a forged key: {keys:?}");
        assert!(c.node(n).log().lines().all(|l| !l.contains("panicked")), "node {n} panicked");
    }
    assert!(seen(&c, target).applied >= b.applied);
    drop(conns);
}
