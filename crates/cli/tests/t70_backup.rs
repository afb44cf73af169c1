//! Backup and restore (issue 16): a backup of a 3-node cluster with key/values, VMs and members
//! restores into a new one-node cluster with identical state; a damaged, truncated or foreign
//! file is refused with a clear message and nothing written.

mod common;

use std::time::Duration;

use common::*;

fn all_keys(addr: &str) -> serde_json::Value {
    cli_json(addr, &["kv", "list", "--limit", "100000"])["pairs"].clone()
}

/// The VMs as the user specified them (placement and observed state belong to the old cluster).
fn vm_specs(addr: &str) -> Vec<serde_json::Value> {
    cli_json(addr, &["vm", "list"])["vms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            serde_json::json!([v["name"], v["vcpus"], v["memory_mib"], v["labels"], v["restart_policy"], v["desired"]])
        })
        .collect()
}

#[test]
fn a_backup_of_a_cluster_restores_into_a_new_cluster_with_the_same_state() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let written = write_keys(&c.node(leader).addr, "b", 60);
    assert_eq!(written.len(), 60);
    let via = &c.node(2).addr;
    cli_json(via, &["vm", "create", "web", "--memory", "128", "--label", "tier=front"]);
    cli_json(via, &["vm", "create", "db", "--memory", "256", "--restart", "always"]);

    let file = c.tmp.path().join("cluster.bkp");
    let info = cli_json(via, &["backup", "save", file.to_str().unwrap()]);
    assert_eq!((info["keys"].as_u64(), info["vms"].as_u64(), info["members"].as_u64()), (Some(60), Some(2), Some(3)));
    let inspected = cli_json(via, &["backup", "inspect", file.to_str().unwrap()]);
    assert_eq!(inspected["sha256"], info["sha256"]);
    assert!(!c.tmp.path().join("cluster.partial").exists());

    // A new cluster from it.
    let dir = c.tmp.path().join("restored");
    let addr = format!("127.0.0.1:{}", free_port());
    let out = cli_json(
        via,
        &[
            "backup",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            dir.to_str().unwrap(),
            "--id",
            "7",
            "--bind",
            &addr,
        ],
    );
    assert_eq!(out["keys"], 60);
    let mut n7 = TestNode::with_addr(7, &dir, &addr);
    n7.spawn(&[]);
    n7.wait_leader(Duration::from_secs(60));
    assert_eq!(all_keys(&n7.addr), all_keys(via), "the key/values");
    assert_eq!(vm_specs(&n7.addr), vm_specs(via), "the VMs");
    let st = cli_json(&n7.addr, &["cluster", "status"]);
    let members: Vec<u64> = st["members"].as_array().unwrap().iter().map(|m| m["id"].as_u64().unwrap()).collect();
    assert_eq!(members, [7], "a one-node cluster of its own");
    // It takes writes, and a second restore into the same data dir is refused.
    cli_json(&n7.addr, &["kv", "put", "after", "restore"]);
    let again =
        cli(via, &["backup", "restore", file.to_str().unwrap(), "--data-dir", dir.to_str().unwrap(), "--id", "8"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("is not empty"), "{}", stderr(&again));
}

#[test]
fn a_damaged_truncated_or_foreign_backup_is_refused_and_nothing_is_written() {
    let c = TestCluster::start(1, &[]);
    let n = c.node(1);
    cli_json(&n.addr, &["kv", "put", "k", "v"]);
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.bkp");
    cli_json(&n.addr, &["backup", "save", good.to_str().unwrap()]);
    let bytes = std::fs::read(&good).unwrap();

    let mut flipped = bytes.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 0x40;
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "cut short"),
        ("flipped", flipped, "does not match its checksum"),
        ("foreign", b"{\"not\": \"a backup\"}".to_vec(), "not a Blixard backup"),
    ];
    for (name, content, why) in cases {
        let f = tmp.path().join(format!("{name}.bkp"));
        std::fs::write(&f, content).unwrap();
        let dir = tmp.path().join(format!("dir-{name}"));
        let o =
            cli(&n.addr, &["backup", "restore", f.to_str().unwrap(), "--data-dir", dir.to_str().unwrap(), "--id", "2"]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(stderr(&o).contains(why), "{name}: {}", stderr(&o));
        assert!(!dir.exists(), "{name}: nothing may be written");
        let o = cli(&n.addr, &["backup", "inspect", f.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{name}");
    }
}
