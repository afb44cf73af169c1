//! A real network partition: each node runs in its own network namespace on a private bridge
//! (test hosts this test creates and removes itself); the leader is cut off from its peers with
//! blackhole routes while the test (in the root namespace) still reaches every node. The
//! minority cannot write, the majority can, and after healing everyone converges.
//! Needs root (network namespaces); CI runs as root.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(o.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

fn in_ns(ns: &str, args: &[&str]) {
    let mut a = vec!["netns", "exec", ns, "ip"];
    a.extend_from_slice(args);
    ip(&a);
}

/// Namespaces `<tag>sw` (the bridge) and `<tag>n1..n3`, and a veth from the root namespace.
struct Net {
    tag: String,
    subnet: String,
}

impl Net {
    fn new(nodes: u64) -> Net {
        let pid = std::process::id();
        let tag = format!("bx{}", pid % 100_000);
        let net = Net { tag: tag.clone(), subnet: format!("10.213.{}", pid % 250) };
        let sw = format!("{tag}sw");
        ip(&["netns", "add", &sw]);
        in_ns(&sw, &["link", "add", "br0", "type", "bridge"]);
        in_ns(&sw, &["link", "set", "br0", "up"]);
        for i in 1..=nodes {
            let ns = net.ns(i);
            ip(&["netns", "add", &ns]);
            let (a, b) = (format!("{tag}a{i}"), format!("{tag}b{i}"));
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &sw]);
            ip(&["link", "set", &b, "netns", &ns]);
            in_ns(&sw, &["link", "set", &a, "master", "br0", "up"]);
            in_ns(&ns, &["addr", "add", &format!("{}/24", net.ip(i)), "dev", &b]);
            in_ns(&ns, &["link", "set", &b, "up"]);
            in_ns(&ns, &["link", "set", "lo", "up"]);
        }
        let (a, b) = (format!("{tag}ar"), format!("{tag}br"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &sw]);
        in_ns(&sw, &["link", "set", &a, "master", "br0", "up"]);
        ip(&["addr", "add", &format!("{}/24", net.ip(100)), "dev", &b]);
        ip(&["link", "set", &b, "up"]);
        net
    }

    fn ns(&self, i: u64) -> String {
        format!("{}n{i}", self.tag)
    }

    fn ip(&self, i: u64) -> String {
        format!("{}.{i}", self.subnet)
    }

    /// Cuts (or restores) traffic between node `a` and node `b`, both ways.
    fn cut(&self, a: u64, b: u64, on: bool) {
        let verb = if on { "add" } else { "del" };
        in_ns(&self.ns(a), &["route", verb, "blackhole", &format!("{}/32", self.ip(b))]);
        in_ns(&self.ns(b), &["route", verb, "blackhole", &format!("{}/32", self.ip(a))]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in ["sw", "n1", "n2", "n3"] {
            let _ = Command::new("ip").args(["netns", "del", &format!("{}{n}", self.tag)]).status();
        }
    }
}

fn spawn_in_ns(net: &Net, i: u64, dir: &std::path::Path, join: Option<&str>) -> TestNode {
    let addr = format!("{}:7001", net.ip(i));
    let mut n = TestNode::with_addr(i, dir, &addr);
    // Plaintext between namespaces, not on loopback: it must be asked for.
    let mut args = vec!["--insecure"];
    if let Some(j) = join {
        args.extend(["--join", j]);
    }
    n.spawn_prefixed(&["ip", "netns", "exec", &net.ns(i)], &args);
    n
}

fn leader_of(addr: &str) -> Option<u64> {
    let o = cli(addr, &["cluster", "status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    v["leader_id"].as_u64()
}

#[test]
fn minority_cannot_write_majority_can_and_all_converge_after_healing() {
    assert!(nix_root(), "network namespaces need root (CI runs as root): run this test as root");
    let net = Net::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = vec![spawn_in_ns(&net, 1, &tmp.path().join("n1"), None)];
    nodes[0].wait_leader(Duration::from_secs(20));
    let seed = nodes[0].addr.clone();
    for i in 2..=3 {
        nodes.push(spawn_in_ns(&net, i, &tmp.path().join(format!("n{i}")), Some(&seed)));
    }
    let addr = |i: u64| nodes[i as usize - 1].addr.clone();
    wait_until("3 voters", Duration::from_secs(30), || {
        let v = cli_json_opt(&addr(1), &["cluster", "status"])?;
        let ok =
            v["members"].as_array()?.iter().filter(|m| m["membership"] == "voter" && m["reachable"] == true).count();
        (ok == 3).then_some(())
    });
    let leader = leader_of(&addr(1)).unwrap();
    let others: Vec<u64> = (1..=3).filter(|&i| i != leader).collect();
    cli_json(&addr(leader), &["kv", "put", "before", "1"]);

    for &o in &others {
        net.cut(leader, o, true);
    }
    // The majority elects a new leader and keeps writing.
    let new_leader = wait_until("a new leader in the majority", Duration::from_secs(20), || {
        leader_of(&addr(others[0])).filter(|&l| l != leader)
    });
    assert!(others.contains(&new_leader));
    cli_json(&addr(others[0]), &["kv", "put", "during", "2"]);
    cli_json(&addr(others[1]), &["kv", "put", "during2", "3"]);
    // The isolated old leader cannot: its write is refused, never acknowledged.
    let o = cli(&addr(leader), &["kv", "put", "minority", "x"]);
    assert_eq!(o.status.code(), Some(1), "minority write must fail: {}", stdout(&o));

    for &o in &others {
        net.cut(leader, o, false);
    }
    // After healing: every node holds exactly the acknowledged writes.
    let want = serde_json::json!([
        {"key": "before", "value": "1"},
        {"key": "during", "value": "2"},
        {"key": "during2", "value": "3"},
    ]);
    for i in 1..=3u64 {
        wait_until(&format!("node {i} to converge"), Duration::from_secs(30), || {
            let v = cli_json_opt(&addr(i), &["kv", "list", "--stale"])?;
            (v["pairs"] == want).then_some(())
        });
    }
    assert_eq!(leader_of(&addr(leader)), Some(new_leader));
    drop(nodes);
}

fn nix_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

/// The nodes whose data dir holds a running QEMU of VM `vm` (read from /proc).
fn nodes_running(nodes: &[TestNode], vm: &str) -> Vec<u64> {
    let mut cmds = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") {
            cmds.push(cmd);
        }
    }
    nodes
        .iter()
        .filter(|n| {
            let needle = n.dir.join("vmm/vms").join(format!("{vm}.")).to_string_lossy().into_owned();
            cmds.iter().any(|c| c.contains(&needle))
        })
        .map(|n| n.id)
        .collect()
}

#[test]
fn a_node_cut_off_stops_its_vm_before_the_majority_starts_the_replacement() {
    assert!(nix_root(), "network namespaces need root (CI runs as root): run this test as root");
    let net = Net::new(3);
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = vec![spawn_in_ns(&net, 1, &tmp.path().join("n1"), None)];
    nodes[0].wait_leader(Duration::from_secs(60));
    let seed = nodes[0].addr.clone();
    for i in 2..=3 {
        nodes.push(spawn_in_ns(&net, i, &tmp.path().join(format!("n{i}")), Some(&seed)));
    }
    let addr = |i: u64| nodes[i as usize - 1].addr.clone();
    wait_until("3 ready nodes", Duration::from_secs(120), || {
        let v = cli_json_opt(&addr(1), &["node", "list"])?;
        (v["nodes"].as_array()?.iter().filter(|n| n["status"] == "ready").count() == 3).then_some(())
    });
    let leader = leader_of(&addr(1)).unwrap();
    let victim = (1..=3).find(|&i| i != leader).unwrap();
    let others: Vec<u64> = (1..=3).filter(|&i| i != victim).collect();
    cli_json(
        &addr(leader),
        &["vm", "create", "web", "--memory", "128", "--node", &victim.to_string(), "--restart", "always", "--start"],
    );
    wait_until("the VM to run on its node", Duration::from_secs(120), || {
        let v = cli_json_opt(&addr(leader), &["vm", "get", "web"])?;
        (v["observed"]["phase"] == "running" && nodes_running(&nodes, "web") == [victim]).then_some(())
    });

    for &o in &others {
        net.cut(victim, o, true);
    }
    // Watch every QEMU of the VM (polled every few ms) until the replacement runs: at no
    // observed instant do two nodes run it, and the cut-off node stopped its copy first.
    let mut fenced = false;
    let moved_to = wait_until("the VM to run on the majority side", Duration::from_secs(120), || {
        let running = nodes_running(&nodes, "web");
        assert!(running.len() <= 1, "two nodes run the VM at once: {running:?}");
        fenced |= running.is_empty();
        match running.as_slice() {
            [n] if *n != victim => Some(*n),
            _ => None,
        }
    });
    assert!(fenced && others.contains(&moved_to));
    let v = cli_json(&addr(leader), &["vm", "get", "web"]);
    assert_eq!(v["node"], moved_to);
    assert_eq!(cli_json(&addr(leader), &["node", "get", &victim.to_string()])["status"], "down");

    // Healed: the fenced node comes back and never starts the VM that now lives elsewhere.
    for &o in &others {
        net.cut(victim, o, false);
    }
    wait_until("the cut-off node to be ready again", Duration::from_secs(60), || {
        let n = cli_json_opt(&addr(leader), &["node", "get", &victim.to_string()])?;
        (n["status"] == "ready").then_some(())
    });
    let v = wait_until("the VM's record to settle", Duration::from_secs(30), || {
        let v = cli_json_opt(&addr(victim), &["vm", "get", "web"])?;
        (v["observed"]["phase"] == "running").then_some(v)
    });
    assert_eq!(v["node"], moved_to);
    assert_eq!(nodes_running(&nodes, "web"), [moved_to]);
    drop(nodes);
}
