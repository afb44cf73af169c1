//! The walking skeleton end to end: one real `blixard node` process and the CLI.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

/// A deadline, not a wait: generous because a node registers its capacity only once its VM
/// backend is ready, and the very first node on a machine builds the guest image.
const LEADER_WITHIN: Duration = Duration::from_secs(180);

#[test]
fn a_new_node_becomes_leader_of_its_one_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    let st = n.wait_leader(LEADER_WITHIN);
    assert_eq!(st["node_id"], 1);
    assert_eq!(st["leader_id"], 1);
    assert_eq!(st["leader_addr"], n.addr.as_str());
    assert_eq!(st["members"][0]["id"], 1);
    assert_eq!(st["members"][0]["addr"], n.addr.as_str());
    assert_eq!(st["members"][0]["membership"], "voter");
}

#[test]
fn every_acknowledged_write_survives_kill_9() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);

    // 1,000 writes from concurrent clients; remember every acknowledged one.
    let acked = write_keys(&n.addr, "key", 1000);
    assert_eq!(acked.len(), 1000);

    n.kill9();
    n.spawn(&[]);
    n.wait_leader(LEADER_WITHIN);

    let listed = cli_json(&n.addr, &["kv", "list", "key/", "--limit", "10000"]);
    let got: BTreeMap<String, String> = listed["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["key"].as_str().unwrap().to_string(), p["value"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(got, acked);
    assert_eq!(listed["more"], false);
    // And one by one through `kv get`.
    for k in ["key/00000", "key/00517", "key/00999"] {
        let o = cli(&n.addr, &["kv", "get", k]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(stdout(&o).trim_end(), acked[k]);
    }
}

#[test]
fn kv_commands_round_trip_with_exact_json() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    let put = cli_json(&n.addr, &["kv", "put", "greeting", "hello world"]);
    assert_eq!(put["key"], "greeting");
    assert!(put["index"].as_u64().unwrap() > 1);
    assert_eq!(
        cli_json(&n.addr, &["kv", "get", "greeting"]),
        serde_json::json!({"key": "greeting", "value": "hello world"})
    );
    assert_eq!(cli_json(&n.addr, &["kv", "get", "greeting", "--stale"])["value"], "hello world");
    let del = cli_json(&n.addr, &["kv", "delete", "greeting"]);
    assert_eq!(del["deleted"], true);
    assert_eq!(cli_json(&n.addr, &["kv", "delete", "greeting"])["deleted"], false);
    let o = cli(&n.addr, &["kv", "get", "greeting"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "error: key \"greeting\" not found\n");
}

#[test]
fn oversized_keys_and_values_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    let long = "k".repeat(1025);
    let o = cli(&n.addr, &["kv", "put", &long, "v"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "error: invalid key: must be 1 to 1024 bytes (got 1025)\n");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let ch =
            tonic::transport::Endpoint::from_shared(format!("http://{}", n.addr)).unwrap().connect().await.unwrap();
        let mut kv = blixard_proto::v1::kv_service_client::KvServiceClient::new(ch);
        let req = blixard_proto::v1::PutRequest { key: b"big".to_vec(), value: vec![7; (1 << 20) + 1] };
        kv.put(req).await.expect_err("must be refused")
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "invalid value: must be at most 1048576 bytes (got 1048577)");
    assert_eq!(cli_json(&n.addr, &["kv", "list"])["pairs"], serde_json::json!([]));
}

#[test]
fn vm_records_create_get_list_delete_and_duplicates_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    let created = cli_json(
        &n.addr,
        &[
            "vm",
            "create",
            "web",
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--port",
            "8080:80",
            "--label",
            "tier=web",
            "--restart",
            "always",
        ],
    );
    assert_eq!(created["name"], "web");
    assert_eq!(created["vcpus"], 2);
    assert_eq!(created["memory_mib"], 256);
    assert_eq!(created["ports"], serde_json::json!([{"host": 8080, "guest": 80}]));
    assert_eq!(created["labels"], serde_json::json!({"tier": "web"}));
    assert_eq!(created["restart_policy"], "always");

    let dup = cli(&n.addr, &["vm", "create", "web", "--vcpus", "8"]);
    assert_eq!(dup.status.code(), Some(1));
    assert_eq!(stderr(&dup), "error: vm \"web\" already exists\n");
    // Not overwritten (the node may have reported an observed state meanwhile).
    let mut now = cli_json(&n.addr, &["vm", "get", "web"]);
    let mut was = created.clone();
    // `vm get` adds the usage of its process (none: the test backend runs no process).
    assert_eq!((&now["usage"], &now["usage_unavailable"]), (&serde_json::Value::Null, &serde_json::Value::Null));
    for k in ["observed", "usage", "usage_unavailable"] {
        now.as_object_mut().unwrap().remove(k);
    }
    was.as_object_mut().unwrap().remove("observed");
    assert_eq!(now, was);

    cli_json(&n.addr, &["vm", "create", "api"]);
    let names: Vec<_> = cli_json(&n.addr, &["vm", "list"])["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["api", "web"]);

    assert_eq!(cli_json(&n.addr, &["vm", "delete", "web"])["deleted"], true);
    let gone = cli(&n.addr, &["vm", "get", "web"]);
    assert_eq!(gone.status.code(), Some(1));
    assert_eq!(stderr(&gone), "error: vm \"web\" not found\n");
    let again = cli(&n.addr, &["vm", "delete", "web"]);
    assert_eq!(again.status.code(), Some(1));
}

#[test]
fn invalid_vm_specs_exit_1_name_the_field_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    let cases: &[(&[&str], &str)] = &[
        (&["vm", "create", "Web"], "invalid name:"),
        (&["vm", "create", "1web"], "invalid name:"),
        (&["vm", "create", "web", "--vcpus", "0"], "invalid vcpus: must be between 1 and 32 (got 0)"),
        (&["vm", "create", "web", "--vcpus", "33"], "invalid vcpus:"),
        (&["vm", "create", "web", "--memory", "32"], "invalid memory_mib: must be between 64 and 65536 (got 32)"),
        (&["vm", "create", "web", "--disk-gib", "0"], "invalid disk_gib:"),
        (&["vm", "create", "web", "--port", "0:80"], "invalid ports:"),
        (
            &["vm", "create", "web", "--port", "8080:80", "--port", "8080:81"],
            "invalid ports: host port 8080 is forwarded twice",
        ),
        (&["vm", "create", "web", "--port", "70000:80"], "invalid ports:"),
        (&["vm", "create", "web", "--restart", "sometimes"], "invalid restart_policy:"),
        (&["vm", "create", "web", "--label", "=x"], "invalid labels:"),
    ];
    for (args, msg) in cases {
        let o = cli(&n.addr, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.starts_with(&format!("error: {msg}")), "{args:?}: {e}");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
    }
    assert_eq!(cli_json(&n.addr, &["vm", "list"])["vms"], serde_json::json!([]));
}

#[test]
fn usage_errors_exit_2() {
    let o = cli("127.0.0.1:1", &["vm", "create", "web", "--vcpus", "many"]);
    assert_eq!(o.status.code(), Some(2));
    let o = cli("127.0.0.1:1", &["kv"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_client_against_a_dead_address_fails_fast_with_one_clear_line() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let o = cli(&addr, &["kv", "get", "x"]);
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), format!("error: no node reachable at {addr}\n"));
    // Connection refused is immediate; this only guards against waiting out request timeouts.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_data_dir_of_another_node_is_refused_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    let mut n1 = TestNode::start(1, &dir);
    n1.wait_leader(LEADER_WITHIN);
    cli_json(&n1.addr, &["kv", "put", "keep", "me"]);
    assert!(n1.terminate().success());

    let mut n2 = TestNode::start(2, &dir);
    let st = n2.wait_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(1));
    assert!(n2.log().contains("belongs to node 1, not node 2"), "{}", n2.log());

    // Nothing was wiped: node 1 restarts with its data.
    n1.spawn(&[]);
    n1.wait_leader(LEADER_WITHIN);
    assert_eq!(cli_json(&n1.addr, &["kv", "get", "keep"])["value"], "me");
}

#[test]
fn a_corrupt_data_dir_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = vec![0x42u8; 4096];
    std::fs::write(dir.join("blixard.redb"), &garbage).unwrap();
    let mut n = TestNode::start(1, &dir);
    assert_eq!(n.wait_exit(Duration::from_secs(20)).code(), Some(1));
    assert!(n.log().contains("is corrupt or not a blixard data dir"), "{}", n.log());
    assert_eq!(std::fs::read(dir.join("blixard.redb")).unwrap(), garbage);
}

#[test]
fn a_data_dir_whose_state_store_is_missing_is_refused_not_served_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    let mut n = TestNode::start(1, &dir);
    n.wait_leader(LEADER_WITHIN);
    cli_json(&n.addr, &["kv", "put", "keep", "me"]);
    n.kill9();
    std::fs::remove_file(dir.join("blixard.redb")).unwrap();
    n.spawn(&[]);
    assert_eq!(n.wait_exit(Duration::from_secs(20)).code(), Some(1));
    assert!(n.log().contains("has no state store"), "{}", n.log());
    // The raft log was left alone.
    assert!(std::fs::read_dir(dir.join("raft-log")).unwrap().count() > 0);
}

#[test]
fn sigterm_shuts_down_gracefully_and_restart_keeps_state() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    cli_json(&n.addr, &["vm", "create", "db", "--memory", "512"]);
    assert_eq!(n.terminate().code(), Some(0));
    assert!(n.log().contains("shutting down"));
    n.spawn(&[]);
    let st = n.wait_leader(LEADER_WITHIN);
    assert!(st["applied_index"].as_u64().unwrap() >= 3);
    assert_eq!(cli_json(&n.addr, &["vm", "get", "db"])["memory_mib"], 512);
}

#[test]
fn vms_are_placed_by_capacity_and_impossible_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start_with(1, &tmp.path().join("n1"), &["--memory-mib", "2048"]);
    n.wait_leader(LEADER_WITHIN);
    let big = cli(&n.addr, &["vm", "create", "big", "--memory", "4096"]);
    assert_eq!(big.status.code(), Some(1));
    assert_eq!(stderr(&big), "error: cannot place vm \"big\": node 1: needs 4096 MiB memory, 2048 MiB free\n");
    let pinned = cli(&n.addr, &["vm", "create", "pinned", "--node", "9"]);
    assert_eq!(pinned.status.code(), Some(1));
    assert_eq!(stderr(&pinned), "error: cannot place vm \"pinned\": node 9 is not a registered node\n");

    let a = cli_json(&n.addr, &["vm", "create", "a", "--memory", "1024"]);
    assert_eq!((a["node"].as_u64(), a["desired"].as_str()), (Some(1), Some("stopped")));
    let b = cli_json(&n.addr, &["vm", "create", "b", "--memory", "1024", "--start", "--node", "1"]);
    assert_eq!(b["desired"], "running");
    // A stopped VM reserves nothing; starting it reserves its memory again.
    assert_eq!(cli_json(&n.addr, &["vm", "start", "a"])["desired"], "running");
    // A VM that would fit an empty node waits in the queue unless told not to.
    let full = cli(&n.addr, &["vm", "create", "c", "--memory", "64", "--no-queue"]);
    assert_eq!(full.status.code(), Some(1));
    assert_eq!(stderr(&full), "error: cannot place vm \"c\": node 1: needs 64 MiB memory, 0 MiB free\n");
    let queued = cli_json(&n.addr, &["vm", "create", "c", "--memory", "64"]);
    assert!(queued["node"].is_null(), "{queued}");
    assert_eq!(queued["pending"], "node 1: needs 64 MiB memory, 0 MiB free");

    let r = cli(&n.addr, &["vm", "restart", "nope"]);
    assert_eq!((r.status.code(), stderr(&r).as_str()), (Some(1), "error: vm \"nope\" not found\n"));
    assert_eq!(cli_json(&n.addr, &["vm", "restart", "b"])["restart_generation"], 1);
    // Stopping frees the capacity, and the queued VM is placed in the same step.
    assert_eq!(cli_json(&n.addr, &["vm", "stop", "a"])["desired"], "stopped");
    let c = cli_json(&n.addr, &["vm", "get", "c"]);
    assert_eq!((c["node"].as_u64(), c["pending"].as_str()), (Some(1), None), "{c}");
    let r = cli(&n.addr, &["vm", "restart", "a"]);
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(stderr(&r), "error: vm \"a\" is stopped; start it instead of restarting it\n");
    let missing = cli(&n.addr, &["vm", "start", "nope"]);
    assert_eq!(stderr(&missing), "error: vm \"nope\" not found\n");
}

#[test]
fn node_list_and_get_show_the_registered_node_also_with_daemon_env_vars_set() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start_with(1, &tmp.path().join("n1"), &["--memory-mib", "2048", "--label", "zone=a"]);
    n.wait_leader(LEADER_WITHIN);
    // BLIXARD_IMAGE_CACHE configures the daemon; it must not turn `node list` into one.
    let o = std::process::Command::new(BIN)
        .args(["--addr", &n.addr, "node", "list", "-o", "json"])
        .env("BLIXARD_IMAGE_CACHE", tmp.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{v}");
    let mut one = cli_json(&n.addr, &["node", "get", "1"]);
    let mut listed = nodes[0].clone();
    // The heartbeat's age moves between the two calls; `node get` adds the usage of its VMs
    // (none run).
    assert_eq!(one["usage"], serde_json::json!({"vms": 0, "cpu_seconds": 0.0, "memory_rss_bytes": 0}), "{one}");
    assert_eq!(one["usage_unavailable"], serde_json::Value::Null);
    for v in [&mut one, &mut listed] {
        for k in ["heartbeat_age_ms", "usage", "usage_unavailable"] {
            v.as_object_mut().unwrap().remove(k);
        }
    }
    assert_eq!(listed, one);
    assert_eq!((one["status"].as_str(), one["memory_mib"].as_u64()), (Some("ready"), Some(2048)), "{one}");
    assert_eq!((one["eligible"].as_bool(), one["labels"]["zone"].as_str()), (Some(true), Some("a")), "{one}");
    let missing = cli(&n.addr, &["node", "get", "7"]);
    assert_eq!(
        (missing.status.code(), stderr(&missing).as_str()),
        (Some(1), "error: node 7 is not a registered node\n")
    );
}
