//! The node's one port under hostile input: whatever arrives on a raw TCP connection (junk, a
//! forged peer, oversized or corrupt frames, an outsider's vote request), the node closes that
//! connection or ignores the message, keeps serving, and the cluster keeps its term and leader.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// The peer preamble of crates/node/src/transport/wire.rs, for node `from` at `addr`.
fn preamble(from: u64, addr: &str) -> Vec<u8> {
    let mut b = b"BLXRAFT1".to_vec();
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    b.extend_from_slice(addr.as_bytes());
    b
}

/// One frame holding the given encoded messages.
fn frame(msgs: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for m in msgs {
        body.extend_from_slice(&(m.len() as u32).to_le_bytes());
        body.extend_from_slice(m);
    }
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// A raft-rs `eraftpb.Message` heartbeat (msg_type 8) at `term`, from `from` to `to`, in its
/// protobuf encoding (fields 1-4 are varints: type, to, from, term). Raft obeys a heartbeat of a
/// higher term at once: it adopts the term and follows the sender.
fn heartbeat(from: u8, to: u8, term: u8) -> Vec<u8> {
    vec![0x08, 8, 0x10, to, 0x18, from, 0x20, term]
}

/// Whether the node closes `s` (EOF or reset) within a few seconds.
fn closed_by_node(mut s: TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 256];
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {} // an HTTP/2 error frame, say; keep reading until it closes
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

fn connect_and_send(addr: &str, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("write");
    s
}

#[test]
fn junk_forged_and_oversized_peer_traffic_is_refused_and_the_cluster_carries_on() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let before = c.status_via(leader).unwrap();
    let target = (1..=3).find(|&n| n != leader).unwrap();
    let addr = c.node(target).addr.clone();

    // Not HTTP/2 and not a peer: gRPC's server gives up on it.
    assert!(closed_by_node(connect_and_send(&addr, b"GET / HTTP/1.0\r\n\r\n\0\0\0\0\0\0\0\0\0\0\0\0")));
    // Starts like a peer but the magic is wrong.
    assert!(closed_by_node(connect_and_send(&addr, b"BLXRAFT9\0\0\0\0\0\0\0\0\0\0")));
    // An address longer than allowed.
    let mut long = b"BLXRAFT1".to_vec();
    long.extend_from_slice(&7u64.to_le_bytes());
    long.extend_from_slice(&60_000u16.to_le_bytes());
    assert!(closed_by_node(connect_and_send(&addr, &long)));
    // A frame claiming 4 GiB.
    let mut huge = preamble(2, "127.0.0.1:1");
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(closed_by_node(connect_and_send(&addr, &huge)));
    // A frame whose message is not protobuf.
    let mut bad = preamble(2, "127.0.0.1:1");
    bad.extend_from_slice(&frame(&[&[0xff, 0xff, 0xff]]));
    assert!(closed_by_node(connect_and_send(&addr, &bad)));
    // A frame cut short: the length says more than the message has.
    let mut short = preamble(2, "127.0.0.1:1");
    short.extend_from_slice(&8u32.to_le_bytes());
    short.extend_from_slice(&[100, 0, 0, 0, 1, 2, 3, 4]);
    assert!(closed_by_node(connect_and_send(&addr, &short)));

    // An outsider (node 99) claiming leadership of a far higher term: members drop traffic
    // from non-members, so nobody follows it.
    let mut forged = Vec::new();
    for n in 1..=3u64 {
        let mut s = preamble(99, "127.0.0.1:9");
        let m = heartbeat(99, n as u8, 100);
        s.extend_from_slice(&frame(&[&m, &m]));
        forged.push(connect_and_send(&c.node(n).addr, &s));
    }

    // Everyone still serves, writes still commit, and the term and leader did not move.
    for n in 1..=3u64 {
        cli_json(&c.node(n).addr, &["kv", "put", &format!("after-{n}"), "ok"]);
    }
    let after = c.status_via(target).unwrap();
    assert_eq!(after["term"], before["term"], "a forged heartbeat changed the term");
    assert_eq!(after["leader_id"], before["leader_id"]);
    for n in 1..=3u64 {
        assert!(c.node(n).log().lines().all(|l| !l.contains("panicked")), "node {n} panicked");
    }
    drop(forged);
}
