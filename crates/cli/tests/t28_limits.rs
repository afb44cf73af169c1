//! What anyone who can connect gets from a node's port, and no more: a few connections per
//! source address, a few seconds to say what they are, a minute without a frame on a peer
//! connection, frames up to 16 MiB out of a shared budget, and snapshots up to a cap, spooled
//! to disk. Memory stays bounded (VmRSS, with a generous margin) and the node keeps serving.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

/// Generous: the node idles at a few tens of MiB.
const RSS_LIMIT_KIB: u64 = 300 * 1024;

fn preamble(from: u64) -> Vec<u8> {
    let addr = "127.0.0.1:9";
    let mut b = b"BLXRAFT1".to_vec();
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    b.extend_from_slice(addr.as_bytes());
    b
}

/// Whether the node has closed `s` (EOF or reset); never blocks.
fn is_closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    let closed = match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    s.set_nonblocking(false).unwrap();
    closed
}

fn assert_rss(n: &TestNode, what: &str) {
    let rss = n.rss_kib().expect("the node runs");
    assert!(rss < RSS_LIMIT_KIB, "{what}: the node holds {} MiB", rss / 1024);
}

#[test]
fn idle_and_oversized_connections_are_closed_and_memory_stays_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start_with(
        1,
        &tmp.path().join("n1"),
        &["--handshake-timeout-ms", "2000", "--peer-idle-timeout-ms", "3000", "--max-snapshot-mib", "8"],
    );
    n.wait_leader(Duration::from_secs(60));
    cli_json(&n.addr, &["kv", "put", "before", "ok"]);

    // 12 connections announcing 64 MiB frames: refused at the header.
    let mut big: Vec<TcpStream> = (0..12)
        .map(|_| {
            let mut s = TcpStream::connect(&n.addr).unwrap();
            let mut b = preamble(2);
            b.extend_from_slice(&(64u32 << 20).to_le_bytes());
            s.write_all(&b).unwrap();
            s
        })
        .collect();
    // 12 more announcing 16 MiB (the most allowed) and sending all but the last byte: they wait
    // for room in the frame budget, so their bytes mostly sit in the kernel, not the node.
    let chunk = vec![0u8; 1 << 20];
    let mut full: Vec<TcpStream> = Vec::new();
    for _ in 0..12 {
        let mut s = TcpStream::connect(&n.addr).unwrap();
        let mut b = preamble(2);
        b.extend_from_slice(&(16u32 << 20).to_le_bytes());
        s.write_all(&b).unwrap();
        s.set_write_timeout(Some(Duration::from_millis(300))).unwrap();
        for _ in 0..15 {
            if s.write_all(&chunk).is_err() {
                break; // the node is not reading this one now
            }
        }
        full.push(s);
    }
    wait_until("the 64 MiB announcements to be refused", Duration::from_secs(10), || {
        big.iter_mut().all(is_closed).then_some(())
    });
    assert_rss(&n, "12 connections sending 16 MiB frames");

    // 1,000 connections that never send a byte, and some that send only a preamble.
    let t0 = Instant::now();
    let mut idle: Vec<TcpStream> = (0..1000).filter_map(|_| TcpStream::connect(&n.addr).ok()).collect();
    let mut quiet: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(&n.addr).unwrap();
            s.write_all(&preamble(2)).unwrap();
            s
        })
        .collect();
    assert_rss(&n, "1,000 idle connections");
    // Past 64 from one address, a connection is closed at once; the rest when the handshake
    // timeout (2 s) or, after a preamble, the idle timeout (3 s) passes.
    wait_until("every idle connection to be closed", Duration::from_secs(20), || {
        (idle.iter_mut().all(is_closed) && quiet.iter_mut().all(is_closed)).then_some(())
    });
    assert!(t0.elapsed() >= Duration::from_secs(2), "closed before the timeouts: {:?}", t0.elapsed());
    drop((big, full, idle, quiet));

    // An endless snapshot stream is cut at the cap (8 MiB here), spooled to disk meanwhile.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, sent) = rt.block_on(async {
        use blixard_proto::v1::raft_transport_client::RaftTransportClient;
        use blixard_proto::v1::SnapshotChunk;
        let mut c = RaftTransportClient::connect(format!("http://{}", n.addr)).await.unwrap();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = sent.clone();
        let endless = tokio_stream::iter((0u64..).map(move |i| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            SnapshotChunk {
                message: if i == 0 { vec![0x08, 7, 0x10, 1, 0x18, 2, 0x20, 9] } else { vec![] },
                data: vec![7u8; 1 << 20],
                from_addr: "127.0.0.1:9".into(),
            }
        }));
        let r = tokio::time::timeout(Duration::from_secs(60), c.install_snapshot(endless)).await;
        (r.expect("the node cut the stream").unwrap_err(), sent.load(std::sync::atomic::Ordering::Relaxed))
    });
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("larger than the 8388608 bytes allowed"), "{}", status.message());
    assert!(sent < 1000, "the stream ran on for {sent} chunks");
    assert_rss(&n, "an endless snapshot stream");
    assert!(!n.dir.join("snapshot-in/incoming.snap").exists(), "the spool file was left behind");

    // Still serving.
    assert_eq!(cli_json(&n.addr, &["kv", "get", "before"])["value"], "ok");
    cli_json(&n.addr, &["kv", "put", "after", "ok"]);
}
