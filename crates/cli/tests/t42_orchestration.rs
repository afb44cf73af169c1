//! Orchestration with real processes: constraints on node labels, hard anti-affinity groups,
//! the pending queue and `vm explain`, eligibility; and with real QEMU, a host death (daemon and
//! QEMU killed) moving a VM to another node where its HTTP answers again, and a drain.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;

const BOOT: Duration = Duration::from_secs(120);

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// A 3-node cluster whose nodes carry the given `zone` labels.
fn zoned(zones: [&str; 3]) -> TestCluster {
    let l1 = format!("zone={}", zones[0]);
    let mut c = TestCluster::start(1, &["--label", &l1]);
    for (i, z) in zones.iter().enumerate().skip(1) {
        let l = format!("zone={z}");
        c.add(i as u64 + 1, &["--label", &l]);
    }
    c.wait_voters(3);
    wait_until("every node to register", Duration::from_secs(180), || {
        let v = cli_json_opt(&c.node(1).addr, &["node", "list"])?;
        let ready = v["nodes"].as_array()?.iter().filter(|n| n["status"] == "ready").count();
        (ready == 3).then_some(())
    });
    c
}

/// The node a VM is placed on, once it is placed and its QEMU is running there.
fn running_on(addr: &str, name: &str, not: Option<u64>) -> u64 {
    wait_until(&format!("vm {name} to run on a node other than {not:?}"), BOOT, || {
        let v = cli_json_opt(addr, &["vm", "get", name])?;
        let node = v["node"].as_u64()?;
        (Some(node) != not && v["observed"]["phase"] == "running").then_some(node)
    })
}

fn qemu_running_under(dir: &Path, vm: &str) -> bool {
    let needle = dir.join("vmm/vms").join(format!("{vm}.")).to_string_lossy().into_owned();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        cmd.contains("qemu-system") && cmd.contains(&needle)
    })
}

#[test]
fn constraints_groups_and_the_queue_place_vms_and_explain_every_refusal() {
    let c = zoned(["a", "b", "b"]);
    let addr = c.node(2).addr.clone();
    let nodes = cli_json(&addr, &["node", "list"]);
    let zone_of: Vec<(u64, String)> = nodes["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_u64().unwrap(), n["labels"]["zone"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(zone_of, vec![(1, "a".into()), (2, "b".into()), (3, "b".into())]);

    let a = cli_json(&addr, &["vm", "create", "in-a", "--memory", "64", "--constraint", "zone=a"]);
    assert_eq!(a["node"], 1);
    let not_a = cli_json(&addr, &["vm", "create", "not-a", "--memory", "64", "--constraint", "zone!=a"]);
    assert!(matches!(not_a["node"].as_u64(), Some(2 | 3)), "{not_a}");
    let bad = cli(&addr, &["vm", "create", "bad", "--constraint", "zone=="]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(stderr(&bad).starts_with("error: invalid constraint: "), "{}", stderr(&bad));

    // A dry run explains without creating anything.
    let dry =
        cli_json(&addr, &["vm", "create", "dry", "--memory", "64", "--constraint", "zone in (c, d)", "--dry-run"]);
    assert!(dry["chosen"].is_null(), "{dry}");
    assert!(dry["nodes"].as_array().unwrap().iter().all(|n| n["stage"] == "constraints"), "{dry}");
    assert_eq!(cli(&addr, &["vm", "get", "dry"]).status.code(), Some(1));

    // Three running VMs of a hard anti-affinity group on the two zone-b nodes: the third
    // waits, and every node's reason is visible. (A stopped VM holds nothing, so it does not
    // count; starting it checks again.)
    let mut placed = Vec::new();
    for name in ["web-1", "web-2"] {
        let v = cli_json(
            &addr,
            &["vm", "create", name, "--memory", "64", "--start", "--group", "web", "--constraint", "zone=b"],
        );
        placed.push(v["node"].as_u64().unwrap());
    }
    placed.sort();
    assert_eq!(placed, vec![2, 3]);
    let third = cli_json(
        &addr,
        &["vm", "create", "web-3", "--memory", "64", "--start", "--group", "web", "--constraint", "zone=b"],
    );
    assert!(third["node"].is_null(), "{third}");
    let why = third["pending"].as_str().unwrap();
    assert!(why.contains("node 1: constraint zone=b does not hold"), "{why}");
    for n in [2, 3] {
        assert!(
            why.contains(&format!("node {n}: a VM of group \"web\" is already there (hard anti-affinity)")),
            "{why}"
        );
    }
    let plan = cli_json(&c.node(3).addr, &["vm", "explain", "web-3"]);
    let stages: Vec<&str> = plan["nodes"].as_array().unwrap().iter().map(|n| n["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, vec!["constraints", "anti-affinity", "anti-affinity"], "{plan}");
    let no_queue = cli(
        &addr,
        &[
            "vm",
            "create",
            "web-4",
            "--memory",
            "64",
            "--start",
            "--group",
            "web",
            "--constraint",
            "zone=b",
            "--no-queue",
        ],
    );
    assert_eq!(no_queue.status.code(), Some(1));
    assert!(stderr(&no_queue).contains("hard anti-affinity"), "{}", stderr(&no_queue));

    // Deleting a group member places the waiting one where it left.
    let freed = cli_json(&addr, &["vm", "get", "web-1"])["node"].as_u64().unwrap();
    cli_json(&addr, &["vm", "delete", "web-1"]);
    let w3 = cli_json(&addr, &["vm", "get", "web-3"]);
    assert_eq!((w3["node"].as_u64(), w3["pending"].as_str()), (Some(freed), None), "{w3}");
    let events = cli_json(&addr, &["vm", "events", "web-3"]);
    let whats: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["what"].as_str().unwrap()).collect();
    assert!(whats.first().unwrap().starts_with("pending: "), "{whats:?}");
    assert_eq!(whats.last().unwrap(), &format!("placed on node {freed}"), "{whats:?}");

    // A soft group only scores: it is placed although both nodes hold a member.
    let soft = cli_json(
        &addr,
        &["vm", "create", "web-5", "--memory", "64", "--start", "--group", "web", "--soft", "--constraint", "zone=b"],
    );
    assert!(soft["node"].is_u64(), "{soft}");

    // An ineligible node takes nothing new; enabling it again lets it.
    cli_json(&addr, &["node", "eligibility", "1", "disable"]);
    let n1 = cli_json(&addr, &["node", "get", "1"]);
    assert_eq!(n1["eligible"], false, "{n1}");
    let refused = cli(&addr, &["vm", "create", "in-a-2", "--memory", "64", "--constraint", "zone=a", "--no-queue"]);
    assert!(stderr(&refused).contains("node 1: node is not eligible for new work"), "{}", stderr(&refused));
    cli_json(&addr, &["node", "eligibility", "1", "enable"]);
    assert_eq!(cli_json(&addr, &["vm", "create", "in-a-2", "--memory", "64", "--constraint", "zone=a"])["node"], 1);
}

#[test]
fn a_host_death_moves_the_vm_elsewhere_and_its_http_answers_again() {
    let mut c = zoned(["a", "a", "a"]);
    let port = free_port();
    let fwd = format!("{port}:80");
    cli_json(
        &c.node(1).addr,
        &[
            "vm",
            "create",
            "web",
            "--memory",
            "128",
            "--port",
            &fwd,
            "--cmdline",
            "blixard.http=80",
            "--restart",
            "always",
            "--start",
        ],
    );
    let first = running_on(&c.node(1).addr, "web", None);
    wait_until("the guest's HTTP answer", BOOT, || http_get(port).filter(|b| b.contains("hello from web")));

    // A host death: the daemon and its QEMU die at once.
    let dir = c.node(first).dir.clone();
    c.node_mut(first).kill9();
    kill_processes_under(&dir);
    let survivor = c.nodes.iter().find(|n| n.id != first).unwrap().addr.clone();
    let second = running_on(&survivor, "web", Some(first));
    wait_until("the guest's HTTP answer from its new node", BOOT, || {
        http_get(port).filter(|b| b.contains("hello from web"))
    });
    let dead = cli_json(&survivor, &["node", "get", &first.to_string()]);
    assert_eq!(dead["status"], "down", "{dead}");
    let v = cli_json(&survivor, &["vm", "get", "web"]);
    assert_eq!(v["fresh_disk"], true, "a moved VM starts from a fresh disk: {v}");
    let events = cli_json(&survivor, &["vm", "events", "web"]);
    let text = events.to_string();
    assert!(
        text.contains(&format!("node {first} is down")) && text.contains(&format!("moved to node {second}")),
        "{text}"
    );

    // The dead host comes back: it never starts the VM that now lives elsewhere.
    c.node_mut(first).spawn(&["--label", "zone=a"]);
    wait_until("the old node to be ready again", Duration::from_secs(60), || {
        let n = cli_json_opt(&survivor, &["node", "get", &first.to_string()])?;
        (n["status"] == "ready").then_some(())
    });
    assert!(!qemu_running_under(&dir, "web"), "the old node must not run the moved VM");
    assert_eq!(cli_json(&survivor, &["vm", "get", "web"])["node"], second);
}

#[test]
fn a_drained_node_hands_its_vm_to_another_node_and_takes_no_new_work() {
    let c = zoned(["a", "a", "a"]);
    let addr = c.node(1).addr.clone();
    cli_json(&addr, &["vm", "create", "app", "--memory", "96", "--node", "2", "--start"]);
    running_on(&addr, "app", None);
    let d = cli_json(&addr, &["node", "drain", "2", "--deadline", "2m"]);
    assert_eq!(d["draining"], true, "{d}");
    let to = running_on(&addr, "app", Some(2));
    assert_ne!(to, 2);
    wait_until("the drained node to stop its QEMU", BOOT, || {
        (!qemu_running_under(&c.node(2).dir, "app")).then_some(())
    });
    let n2 = wait_until("the drain to finish", BOOT, || {
        let n = cli_json_opt(&addr, &["node", "get", "2"])?;
        (n["draining"] == false).then_some(n)
    });
    assert_eq!((n2["eligible"].as_bool(), n2["vms"].as_u64()), (Some(false), Some(0)), "{n2}");
    let r = cli(&addr, &["vm", "create", "more", "--memory", "64", "--node", "2", "--no-queue"]);
    assert!(stderr(&r).contains("node 2: node is not eligible for new work"), "{}", stderr(&r));
}

#[test]
fn a_vm_created_the_moment_the_first_node_starts_is_accepted_and_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    // As soon as the node answers at all, with whatever it has registered by then.
    let created = wait_until("the node to accept the create", Duration::from_secs(60), || {
        let o = cli(&n.addr, &["vm", "create", "early", "--memory", "128", "--start", "-o", "json"]);
        o.status.success().then(|| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
    });
    assert_eq!(created["desired"], "running", "{created}");
    running_on(&n.addr, "early", None);
}

#[test]
fn heartbeats_are_taken_only_for_registered_nodes() {
    use blixard_proto::v1::node_service_client::NodeServiceClient;
    use blixard_proto::v1::HeartbeatRequest;
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(Duration::from_secs(180));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = NodeServiceClient::connect(format!("http://{}", n.addr)).await.unwrap();
        // A made-up node would otherwise be remembered by the leader (memory an outsider grows).
        let e = c.heartbeat(HeartbeatRequest { node_id: 99, seq: 1 }).await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "node 99 is not a registered node"));
        let ok = c.heartbeat(HeartbeatRequest { node_id: 1, seq: 7 }).await.unwrap().into_inner();
        assert_eq!(ok.seq, 7);
        // On a stream (what nodes use): each heartbeat answered with its seq, in order, and a
        // refusal ends the stream with its status.
        let sent = [(1, 8), (1, 9), (99, 10), (1, 11)].map(|(node_id, seq)| HeartbeatRequest { node_id, seq });
        let mut answers = c.heartbeats(tokio_stream::iter(sent)).await.unwrap().into_inner();
        for seq in [8, 9] {
            let a = answers.message().await.unwrap().expect("an answer");
            assert_eq!((a.seq, a.term >= 1, a.commit_index >= 1), (seq, true, true), "{a:?}");
        }
        let e = answers.message().await.unwrap_err();
        assert_eq!((e.code(), e.message()), (tonic::Code::NotFound, "node 99 is not a registered node"));
        assert!(matches!(answers.message().await, Ok(None) | Err(_)), "nothing after the refusal");
    });
    assert_eq!(cli_json(&n.addr, &["node", "list"])["nodes"].as_array().unwrap().len(), 1);
}
