//! Real microVMs through the cluster (QEMU `microvm`, TCG on machines where KVM guests hang):
//! boot, console, HTTP through a forwarded port, stop, delete, restart after a crash, adoption
//! across a daemon restart, and a 3-node cluster where the VM runs on its assigned node.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

const UP: Duration = Duration::from_secs(180);
const BOOT: Duration = Duration::from_secs(120);

fn http_get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn phase(addr: &str, name: &str) -> Option<serde_json::Value> {
    let v = cli_json_opt(addr, &["vm", "get", name])?;
    v["observed"].is_object().then_some(v)
}

fn wait_phase(addr: &str, name: &str, want: &str) -> serde_json::Value {
    wait_until(&format!("vm {name} to be {want}"), BOOT, || {
        phase(addr, name).filter(|v| v["observed"]["phase"] == want)
    })
}

fn logs(addr: &str, name: &str) -> String {
    stdout(&cli(addr, &["vm", "logs", name]))
}

#[test]
fn a_vm_boots_answers_http_stops_and_is_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(UP);
    let port = free_port().to_string();
    let fwd = format!("{port}:80");
    let created = cli_json(
        &n.addr,
        &["vm", "create", "web", "--memory", "128", "--port", &fwd, "--cmdline", "blixard.http=80", "--start"],
    );
    let w = cli(&n.addr, &["vm", "wait", "web", "--state", "running", "--timeout", "120s", "-o", "json"]);
    assert!(w.status.success(), "{}", stderr(&w));
    let v: serde_json::Value = serde_json::from_slice(&w.stdout).unwrap();
    assert!(v["observed"]["pid"].as_u64().is_some());
    assert!(v["observed"]["boot_ms"].as_u64().is_some());
    assert!(["tcg", "kvm"].contains(&v["observed"]["accel"].as_str().unwrap()));
    assert!(logs(&n.addr, "web").contains("BLIXARD-BOOT-OK uptime="));
    let port: u16 = port.parse().unwrap();
    let body = wait_until("the guest's HTTP answer", Duration::from_secs(60), || {
        http_get(port).filter(|b| b.contains("hello from web"))
    });
    assert!(body.starts_with("HTTP/1."), "{body}");

    cli_json(&n.addr, &["vm", "stop", "web"]);
    let v = wait_phase(&n.addr, "web", "stopped");
    assert_eq!(v["desired"], "stopped");
    assert!(http_get(port).is_none(), "nothing answers once stopped");

    let dir = n.dir.join(format!("vmm/vms/web.{}", created["create_index"]));
    assert!(dir.is_dir());
    cli_json(&n.addr, &["vm", "delete", "web"]);
    wait_until("the VM directory to be removed", Duration::from_secs(30), || (!dir.exists()).then_some(()));
}

#[test]
fn a_killed_vm_is_restarted_per_policy_and_the_reason_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(UP);
    cli_json(&n.addr, &["vm", "create", "crashy", "--memory", "96", "--restart", "always", "--start"]);
    let v = wait_phase(&n.addr, "crashy", "running");
    let pid = v["observed"]["pid"].as_u64().unwrap();
    assert!(std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    let v = wait_until("the reconciler to restart the VM", BOOT, || {
        phase(&n.addr, "crashy").filter(|v| {
            let o = &v["observed"];
            o["phase"] == "running" && o["restarts"].as_u64() >= Some(1) && o["pid"].as_u64() != Some(pid)
        })
    });
    let why = v["observed"]["last_exit"].as_str().unwrap_or_default().to_string();
    assert!(!why.is_empty(), "the reason of the restart is recorded: {v}");
    // With `never`, a crash is reported and left alone.
    cli_json(&n.addr, &["vm", "create", "fragile", "--memory", "96", "--restart", "never", "--start"]);
    let v = wait_phase(&n.addr, "fragile", "running");
    let pid = v["observed"]["pid"].as_u64().unwrap();
    std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    let v = wait_phase(&n.addr, "fragile", "failed");
    assert_eq!(v["observed"]["restarts"], 0);
    assert!(v["observed"]["reason"].is_string());
}

#[test]
fn a_daemon_restart_adopts_the_running_vm_instead_of_booting_it_again() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(UP);
    cli_json(&n.addr, &["vm", "create", "keep", "--memory", "96", "--start"]);
    let v = wait_phase(&n.addr, "keep", "running");
    let pid = v["observed"]["pid"].as_u64().unwrap();

    n.kill9();
    n.spawn(&[]);
    n.wait_leader(UP);
    // Leader and capacity are in the replicated state already: the backend may still be opening.
    wait_until("the restarted daemon to adopt the VM", UP, || {
        n.log().contains("adopted VMs still running from before").then_some(())
    });
    // The reconciler walks VMs in name order: once "later" (after "keep") runs, a whole pass
    // has looked at "keep" with the new daemon.
    cli_json(&n.addr, &["vm", "create", "later", "--memory", "96", "--start"]);
    wait_phase(&n.addr, "later", "running");
    let v = cli_json(&n.addr, &["vm", "get", "keep"]);
    assert_eq!(v["observed"]["phase"], "running");
    assert_eq!(v["observed"]["pid"], pid, "the same QEMU process");
    assert_eq!(logs(&n.addr, "keep").matches("BLIXARD-BOOT-OK").count(), 1, "booted once");
}

#[test]
fn in_a_three_node_cluster_a_vm_created_through_a_follower_runs_on_its_node_and_logs_from_any() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let target = (1..=3).find(|&n| n != leader && n != follower).unwrap();
    let created = cli_json(
        &c.node(follower).addr,
        &["vm", "create", "edge", "--memory", "96", "--node", &target.to_string(), "--start"],
    );
    assert_eq!(created["node"], target);
    wait_phase(&c.node(leader).addr, "edge", "running");
    let dir = format!("vmm/vms/edge.{}", created["create_index"]);
    assert!(c.node(target).dir.join(&dir).is_dir());
    for n in 1..=3u64 {
        if n != target {
            assert!(!c.node(n).dir.join(&dir).exists(), "node {n} must not run it");
        }
        let l = wait_until(&format!("logs through node {n}"), Duration::from_secs(30), || {
            Some(logs(&c.node(n).addr, "edge")).filter(|l| l.contains("BLIXARD-BOOT-OK"))
        });
        assert_eq!(l.matches("BLIXARD-BOOT-OK").count(), 1);
    }
    // The interactive console, through a node that does not host the VM: the guest's shell
    // evaluates what we type (6*7 comes back as 42).
    let other = (1..=3).find(|&n| n != target).unwrap();
    let mut console = std::process::Command::new(BIN)
        .args(["--addr", &c.node(other).addr, "vm", "console", "edge"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = console.stdout.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let mut stdin = console.stdin.take().unwrap();
    wait_until("the console to echo the evaluated command", Duration::from_secs(60), || {
        // Typed again until it shows: the first line may arrive while the shell is still busy.
        let _ = stdin.write_all(b"echo console-$((6*7))\n");
        let text = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
        text.lines().any(|l| l.trim() == "console-42").then_some(())
    });
    drop(stdin);
    let st =
        wait_until("the console client to leave on EOF", Duration::from_secs(10), || console.try_wait().ok().flatten());
    assert!(st.success());
    reader.join().unwrap();
}

#[test]
fn an_unhealthy_vm_is_restarted_and_why_is_visible_while_a_healthy_one_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let mut n = TestNode::start_with(1, &tmp.path().join("n1"), &["--http-bind", &http]);
    n.wait_leader(UP);
    let (p1, p2) = (free_port().to_string(), free_port().to_string());
    cli_json(
        &n.addr,
        &["vm", "create", "healthy", "--memory", "96", "--port", &format!("{p1}:80"), "--cmdline", "blixard.http=80"]
            .into_iter()
            .chain(["--health-http", "80/", "--health-interval", "300ms", "--start"])
            .collect::<Vec<_>>(),
    );
    // Nothing listens on guest port 81.
    cli_json(
        &n.addr,
        &["vm", "create", "sick", "--memory", "96", "--port", &format!("{p2}:81"), "--health-tcp", "81"]
            .into_iter()
            .chain(["--health-interval", "300ms", "--health-threshold", "2", "--restart", "always", "--start"])
            .collect::<Vec<_>>(),
    );
    let v = wait_until("the unhealthy VM to be restarted", BOOT, || {
        phase(&n.addr, "sick").filter(|v| v["observed"]["restarts"].as_u64() >= Some(1))
    });
    let why = v["observed"]["last_exit"].as_str().unwrap_or_default();
    assert!(why.starts_with("unhealthy: 2 health checks failed in a row"), "{v}");
    assert!(why.contains("nothing listens in the guest"), "{why}");
    let h = wait_phase(&n.addr, "healthy", "running");
    assert_eq!(h["observed"]["restarts"], 0, "a passing check restarts nothing: {h}");

    // A requested restart happens once, and not again when the daemon restarts.
    let pid = h["observed"]["pid"].as_u64().unwrap();
    cli_json(&n.addr, &["vm", "restart", "healthy"]);
    let h = wait_until("the requested restart", BOOT, || {
        phase(&n.addr, "healthy").filter(|v| {
            let o = &v["observed"];
            o["phase"] == "running" && o["pid"].as_u64() != Some(pid)
        })
    });
    let pid = h["observed"]["pid"].as_u64().unwrap();
    // The node's metrics counted it all: failed checks, restarts by reason, boots.
    let text = metrics_text(&http);
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} in\n{text}"))
    };
    assert!(value("blixard_vm_health_check_failures_total") >= 2.0);
    assert!(value(r#"blixard_reconciler_restarts_total{reason="unhealthy"}"#) >= 1.0);
    assert_eq!(value(r#"blixard_reconciler_restarts_total{reason="requested"}"#), 1.0);
    assert_eq!(value(r#"blixard_reconciler_actions_total{action="restart",result="ok"}"#), 1.0);
    assert!(value(r#"blixard_reconciler_actions_total{action="stop",result="ok"}"#) >= 1.0, "the sick one");
    assert!(value("blixard_vm_boot_duration_seconds_count") >= 3.0, "healthy twice, sick at least once");
    n.kill9();
    n.spawn(&[]);
    n.wait_leader(UP);
    cli_json(&n.addr, &["vm", "create", "later", "--memory", "96", "--start"]);
    wait_phase(&n.addr, "later", "running");
    assert_eq!(cli_json(&n.addr, &["vm", "get", "healthy"])["observed"]["pid"], pid);
}

/// This node's `/metrics` (Prometheus's text format).
fn metrics_text(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("the HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"), "{out}");
    out
}

/// Live (not zombie) process?
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()) != Some("Z"))
}

#[test]
fn a_vm_deleted_and_recreated_under_the_same_name_boots_afresh() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(UP);
    let old = cli_json(&n.addr, &["vm", "create", "web", "--memory", "96", "--cmdline", "bx.marker=first", "--start"]);
    let v = wait_phase(&n.addr, "web", "running");
    let old_pid = v["observed"]["pid"].as_u64().unwrap();
    let old_index = old["create_index"].as_u64().unwrap();
    assert!(logs(&n.addr, "web").contains("bx.marker=first"), "the kernel prints its command line");

    cli_json(&n.addr, &["vm", "delete", "web"]);
    let new = cli_json(&n.addr, &["vm", "create", "web", "--memory", "96", "--cmdline", "bx.marker=second", "--start"]);
    let new_index = new["create_index"].as_u64().unwrap();
    let v = wait_until("the new VM to run", BOOT, || {
        phase(&n.addr, "web").filter(|v| v["create_index"] == new_index && v["observed"]["phase"] == "running")
    });
    assert_ne!(v["observed"]["pid"].as_u64(), Some(old_pid), "a new QEMU, not the old one adopted: {v}");
    let l = wait_until("the new guest's console", BOOT, || {
        Some(logs(&n.addr, "web")).filter(|l| l.contains("BLIXARD-BOOT-OK"))
    });
    assert!(l.contains("bx.marker=second") && !l.contains("bx.marker=first"), "{l}");
    assert!(!alive(old_pid), "the old QEMU is gone");
    let vms = n.dir.join("vmm/vms");
    assert!(!vms.join(format!("web.{old_index}")).exists(), "the old disk dir is removed");
    assert!(vms.join(format!("web.{new_index}")).is_dir());
}

/// The same, but the VM's node is down while its VM is deleted and recreated: when it comes back,
/// its QEMU of the old incarnation still runs and its state still assigns that incarnation to it
/// until it catches up. It must neither keep the old QEMU for the new record nor delete the VM
/// before it knows better.
#[test]
fn a_node_that_was_down_while_its_vm_was_recreated_replaces_the_old_incarnation() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_voters(3);
    let target = (1..=3).find(|&n| n != leader).unwrap();
    let via = c.node(leader).addr.clone();
    let args = |marker: &'static str| {
        let node = target.to_string();
        let cmdline = format!("bx.marker={marker}");
        let v: Vec<String> =
            ["vm", "create", "web", "--memory", "96", "--node", &node, "--cmdline", &cmdline, "--start"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v
    };
    let create = |marker| {
        let a = args(marker);
        cli_json(&via, &a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let old_index = create("first")["create_index"].as_u64().unwrap();
    let v = wait_phase(&via, "web", "running");
    let old_pid = v["observed"]["pid"].as_u64().unwrap();

    c.node_mut(target).kill9();
    assert!(alive(old_pid), "a VM outlives its daemon");
    cli_json(&via, &["vm", "delete", "web"]);
    let new_index = create("second")["create_index"].as_u64().unwrap();
    c.node_mut(target).spawn(&[]);

    let v = wait_until("the new incarnation to run", BOOT, || {
        phase(&via, "web").filter(|v| v["create_index"] == new_index && v["observed"]["phase"] == "running")
    });
    assert_ne!(v["observed"]["pid"].as_u64(), Some(old_pid), "a new QEMU, not the old one adopted: {v}");
    let l = wait_until("the new guest's console", BOOT, || {
        Some(logs(&via, "web")).filter(|l| l.contains("BLIXARD-BOOT-OK"))
    });
    assert!(l.contains("bx.marker=second") && !l.contains("bx.marker=first"), "{l}");
    wait_until("the old QEMU to be gone", Duration::from_secs(30), || (!alive(old_pid)).then_some(()));
    let vms = c.node(target).dir.join("vmm/vms");
    assert!(!vms.join(format!("web.{old_index}")).exists(), "the old disk dir is removed");
    assert!(vms.join(format!("web.{new_index}")).is_dir());
}

/// Upgrade from a driver before incarnations: its directories are named by the bare VM name. A
/// restarted node adopts the one its record names (the same disk) and removes one no record
/// names, both only after a linearizable read.
#[test]
fn directories_named_by_bare_vm_name_are_adopted_or_removed_after_an_upgrade() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let mut n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(UP);
    let created = cli_json(&n.addr, &["vm", "create", "web", "--memory", "96", "--disk-gib", "1", "--start"]);
    wait_phase(&n.addr, "web", "running");
    cli_json(&n.addr, &["vm", "stop", "web"]);
    wait_phase(&n.addr, "web", "stopped");
    n.kill9();

    // What the previous driver left: `vms/web` with a `vm.json` that records no directory, and
    // `vms/ghost` of a VM deleted while the node was down.
    let vms = n.dir.join("vmm/vms");
    let instance = vms.join(format!("web.{}", created["create_index"]));
    std::fs::rename(&instance, vms.join("web")).unwrap();
    let run_path = vms.join("web/vm.json");
    let mut run: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&run_path).unwrap()).unwrap();
    run.as_object_mut().unwrap().remove("dir");
    std::fs::write(&run_path, run.to_string()).unwrap();
    std::fs::create_dir_all(vms.join("ghost")).unwrap();
    let disk = std::fs::metadata(vms.join("web/disk.qcow2")).unwrap().ino();

    n.spawn(&[]);
    n.wait_leader(UP);
    wait_until("the legacy directories to be settled", Duration::from_secs(60), || {
        (instance.is_dir() && !vms.join("web").exists() && !vms.join("ghost").exists()).then_some(())
    });
    assert_eq!(std::fs::metadata(instance.join("disk.qcow2")).unwrap().ino(), disk, "the same disk, adopted");
    cli_json(&n.addr, &["vm", "start", "web"]);
    wait_phase(&n.addr, "web", "running");
}

#[test]
fn a_daemon_gone_for_good_takes_its_vms_down_when_its_lease_runs_out() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n =
        TestNode::start_with(1, &tmp.path().join("n1"), &["--fence-after-ms", "1000", "--down-after-ms", "1500"]);
    n.wait_leader(UP);
    cli_json(&n.addr, &["vm", "create", "orphan", "--memory", "96", "--start"]);
    let v = wait_phase(&n.addr, "orphan", "running");
    let pid = v["observed"]["pid"].as_u64().unwrap();
    assert!(alive(pid));
    // Nothing renews the lease once the daemon is gone: the watchdog kills its QEMU (which
    // lives in a process group of its own so that a restarted daemon could adopt it).
    n.kill9();
    wait_until("the watchdog to kill the VM", Duration::from_secs(30), || (!alive(pid)).then_some(()));
    wait_until("the watchdog to leave", Duration::from_secs(10), || {
        let watching = std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let cmd =
                String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).into_owned();
            cmd.contains("fence-watch") && cmd.contains(&*n.dir.to_string_lossy())
        });
        (!watching).then_some(())
    });
    // Restarted, the node starts its VM again: it is still assigned here.
    n.spawn(&["--fence-after-ms", "1000", "--down-after-ms", "1500"]);
    let v = wait_until("the VM to run again", BOOT, || {
        phase(&n.addr, "orphan").filter(|v| v["observed"]["phase"] == "running" && v["observed"]["pid"] != pid)
    });
    assert!(alive(v["observed"]["pid"].as_u64().unwrap()));
}
