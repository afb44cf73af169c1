//! VMs on a host bridge (`--vm-bridge`): the node runs in a network namespace this test makes,
//! with a bridge and a DHCP server (busybox udhcpd) on it; a VM gets a second NIC there, leases
//! an address, and its HTTP server answers at that address. Needs root (CI runs as root).

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Ns {
    name: String,
    dhcpd: Option<Child>,
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Some(mut d) = self.dhcpd.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().expect("run");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn in_ns(ns: &str, args: &[&str]) -> std::process::Output {
    Command::new("ip").args(["netns", "exec", ns]).args(args).output().expect("ip netns exec")
}

#[test]
fn a_vm_on_a_host_bridge_leases_an_address_and_serves_on_it() {
    let root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
    assert!(root, "tap devices and network namespaces need root (CI runs as root): run this test as root");
    let pid = std::process::id();
    let name = format!("bxbr{}", pid % 100_000);
    let subnet = format!("10.214.{}", pid % 250);
    run(&["ip", "netns", "add", &name]);
    let mut ns = Ns { name: name.clone(), dhcpd: None };
    for cmd in [
        vec!["ip", "link", "set", "lo", "up"],
        vec!["ip", "link", "add", "br0", "type", "bridge"],
        vec!["ip", "addr", "add", &format!("{subnet}.1/24"), "dev", "br0"],
        vec!["ip", "link", "set", "br0", "up"],
    ] {
        let mut a = vec!["ip", "netns", "exec", &name];
        a.extend(cmd.iter().copied());
        run(&a);
    }
    let tmp = tempfile::tempdir().unwrap();
    let leases = tmp.path().join("leases");
    std::fs::write(&leases, b"").unwrap();
    let conf = tmp.path().join("udhcpd.conf");
    std::fs::write(
        &conf,
        format!(
            "start {subnet}.100\nend {subnet}.150\ninterface br0\nlease_file {}\noption subnet 255.255.255.0\n",
            leases.display()
        ),
    )
    .unwrap();
    ns.dhcpd = Some(
        Command::new("ip")
            .args(["netns", "exec", &name, "busybox", "udhcpd", "-f"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("udhcpd"),
    );

    let mut n = TestNode::with_addr(1, &tmp.path().join("n1"), "127.0.0.1:7001");
    n.spawn_prefixed(&["ip", "netns", "exec", &name], &["--vm-bridge", "br0"]);
    let cli_ns = |args: &[&str]| {
        let mut a = vec![BIN, "--addr", "127.0.0.1:7001"];
        a.extend_from_slice(args);
        in_ns(&name, &a)
    };
    wait_until("the node to register", Duration::from_secs(180), || {
        let o = cli_ns(&["cluster", "status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        v["members"][0]["memory_mib"].is_u64().then_some(())
    });
    let o = cli_ns(&["vm", "create", "web", "--memory", "96", "--cmdline", "blixard.http=80", "--start"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ip = wait_until("the guest to lease an address on the bridge", Duration::from_secs(120), || {
        let log = String::from_utf8_lossy(&cli_ns(&["vm", "logs", "web"]).stdout).into_owned();
        log.lines().find_map(|l| l.trim().strip_prefix("BLIXARD-NET eth1 ").map(str::to_string))
    });
    assert!(ip.starts_with(&format!("{subnet}.")), "{ip}");
    let body = wait_until("the guest's HTTP answer on its bridge address", Duration::from_secs(60), || {
        let o = in_ns(&name, &["curl", "-s", "-m", "2", &format!("http://{ip}/")]);
        Some(String::from_utf8_lossy(&o.stdout).into_owned()).filter(|b| b.contains("hello from web"))
    });
    assert_eq!(body.trim(), "hello from web");

    let o = cli_ns(&["vm", "delete", "web"]);
    assert!(o.status.success());
    wait_until("the tap device to be removed", Duration::from_secs(30), || {
        let links = String::from_utf8_lossy(&in_ns(&name, &["ip", "-o", "link", "show"]).stdout).into_owned();
        (!links.lines().any(|l| l.contains(": bx"))).then_some(())
    });
    drop(n);
}
