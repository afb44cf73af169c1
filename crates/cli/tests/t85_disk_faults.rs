//! A disk that lies, in the real binary: the log's `fdatasync` fails with EIO (a failpoint,
//! compiled only into test builds: see `crates/consensus/src/failpoints.rs`) while a real
//! `blixard node` serves writes. Expected: the node exits non-zero with a message naming the
//! segment file and the I/O error; the write whose entry the sync was for is not acknowledged
//! (its client gets an error, never success); restarted without the failpoint, the node holds
//! every write it acknowledged.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// Node `n` says it is the leader (its VM backend need not be ready).
fn wait_role_leader(n: &TestNode) {
    wait_until("the node to lead", Duration::from_secs(60), || {
        let v = cli_json_opt(&n.addr, &["cluster", "status"])?;
        (v["role"] == "leader").then_some(())
    });
}

#[test]
fn an_eio_on_the_logs_fsync_stops_the_node_acknowledges_nothing_and_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let trigger = tmp.path().join("fail-the-next-wal-sync");
    let mut n = TestNode::with_addr(1, &tmp.path().join("n1"), &format!("127.0.0.1:{}", free_port()));
    n.spawn_env(&[], &[("BLIXARD_FAILPOINT_WAL_SYNC_EIO", trigger.as_os_str())]);
    wait_role_leader(&n);

    let acked = write_keys(&n.addr, "key", 200);
    assert_eq!(acked.len(), 200, "a healthy disk acknowledges every write");

    std::fs::write(&trigger, b"").unwrap();
    let t = std::time::Instant::now();
    let addr = n.addr.clone();
    let client = std::thread::spawn(move || cli(&addr, &["kv", "put", "doomed", "x"]));
    // The node stops by itself, while its client may still be retrying the write elsewhere.
    let st = n.wait_exit(Duration::from_secs(20));
    eprintln!("the node exited ({st}) {:?} after the failing write was sent", t.elapsed());
    assert!(!st.success(), "the node must exit non-zero, got {st}");
    let o = client.join().unwrap();
    assert!(!o.status.success(), "a write whose fsync failed was acknowledged: {}", stdout(&o));
    eprintln!("the client, after {:?}: {}", t.elapsed(), stderr(&o).trim());
    let log = n.log();
    let line = log.lines().find(|l| l.contains("node stopped")).unwrap_or_else(|| panic!("no exit message in {log}"));
    assert!(line.contains("cannot sync") && line.contains(".wal"), "names the file: {line}");
    assert!(line.contains("Input/output error"), "names the error: {line}");
    assert!(!line.contains("corrupt"), "{line}");
    eprintln!("its last words: {line}");

    // Restarted on the same data dir, without the failpoint.
    n.spawn(&[]);
    wait_role_leader(&n);
    let listed = cli_json(&n.addr, &["kv", "list", "key/", "--limit", "10000"]);
    let got: BTreeMap<String, String> = listed["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap().to_string(), p["value"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, acked, "every acknowledged write is there after the restart");
}
