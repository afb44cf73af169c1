//! Operating a node (issue 16): JSON logs are JSON lines; the node tells `$NOTIFY_SOCKET`
//! READY=1 once it serves and STOPPING=1 on SIGTERM; the systemd unit passes
//! `systemd-analyze verify` (installed by scripts/setup.sh: a missing tool fails the test).

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn json_logs_parse_as_json_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = TestNode::start_with(1, &tmp.path().join("n1"), &["--log-format", "json"]);
    n.wait_leader(Duration::from_secs(180));
    cli_json(&n.addr, &["kv", "put", "k", "v"]);
    assert!(n.terminate().success());
    let log = n.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    let mut messages = Vec::new();
    for l in &lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["timestamp"].is_string() && v["target"].is_string(), "{l}");
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&v["level"].as_str().unwrap()), "{l}");
        messages.push(v["fields"]["message"].as_str().unwrap_or_else(|| panic!("no message: {l}")).to_string());
    }
    assert!(messages.iter().any(|m| m == "serving"), "{messages:?}");
    assert!(messages.iter().any(|m| m == "shutting down"), "{messages:?}");
    // Fields stay structured: the node id of the "serving" line is a number, not text.
    let serving = lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "serving")
        .unwrap();
    assert_eq!(serving["fields"]["id"], 1);
}

/// Waits for one datagram on `sock`.
fn recv(sock: &UnixDatagram, what: &str, timeout: Duration) -> String {
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

#[test]
fn a_node_tells_the_service_manager_ready_once_it_serves_and_stopping_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let dir = tmp.path().join("n1");
    let log = std::fs::File::create(tmp.path().join("n1.log")).unwrap();
    let mut child = Command::new(BIN)
        .args(["node", "--id", "1", "--bind", &addr, "--http-bind", &http, "--data-dir"])
        .arg(&dir)
        .env("NOTIFY_SOCKET", &path)
        .env("BLIXARD_IMAGE_CACHE", image_cache())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child, &'a Path);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            kill_processes_under(self.1);
        }
    }
    let guard = Kill(&mut child, &dir);
    let ready = recv(&sock, "READY=1", Duration::from_secs(120));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // Ready means serving: the API and the HTTP endpoint answer now, without a retry.
    let st = cli(&addr, &["cluster", "status", "-o", "json"]);
    assert!(st.status.success(), "{}", stderr(&st));
    let mut s = std::net::TcpStream::connect(&http).expect("the HTTP endpoint is bound before READY=1");
    use std::io::{Read, Write};
    write!(s, "GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer}");

    let pid = guard.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let stopping = recv(&sock, "STOPPING=1", Duration::from_secs(15));
    assert_eq!(stopping, "STOPPING=1");
    let status = wait_until("the node to exit", Duration::from_secs(15), || guard.0.try_wait().ok().flatten());
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(repo.join("deploy/blixard.service")).unwrap();
    for key in ["Type=notify", "Restart=on-failure", "ExecStart=/usr/local/bin/blixard node ", "NoNewPrivileges=yes"] {
        assert!(unit.lines().any(|l| l.starts_with(key)), "{key} missing");
    }
    assert!(!unit.contains("MemoryDenyWriteExecute=yes"), "QEMU's TCG needs writable code pages");
    // As installed, with the binary where ExecStart expects it (verify checks it is executable).
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("blixard.service");
    std::fs::write(&file, unit.replace("/usr/local/bin/blixard", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .output()
        .expect("run systemd-analyze (scripts/setup.sh installs systemd)");
    // It exits 0 on unknown keys and bad values too, and only says so: nothing may be said.
    assert!(out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(), "{}{}", stdout(&out), stderr(&out));
    // And it does catch a mistake.
    std::fs::write(&file, unit.replace("/usr/local/bin/blixard", BIN).replace("NoNewPrivileges", "NoNewPrivilege"))
        .unwrap();
    let bad = Command::new("systemd-analyze").arg("verify").arg(&file).output().unwrap();
    assert!(stderr(&bad).contains("Unknown key"), "{}", stderr(&bad));
}

/// A raw HTTP exchange with the node's endpoint: what it answers to `request`.
fn raw_http(addr: &str, request: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// `series -> value` of a scrape in the text format.
fn scrape(http: &str) -> std::collections::BTreeMap<String, f64> {
    let text = raw_http(http, b"GET /metrics HTTP/1.0\r\n\r\n");
    let (_, body) = text.split_once("\r\n\r\n").unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn metrics_change_with_load_and_the_endpoint_refuses_what_it_does_not_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let n = TestNode::start_with(1, &tmp.path().join("n1"), &["--http-bind", &http]);
    n.wait_leader(Duration::from_secs(180));
    let before = scrape(&http);
    assert_eq!(write_keys(&n.addr, "load", 40).len(), 40);
    let after = scrape(&http);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let put = r#"blixard_api_requests_total{service="blixard.v1.KvService",method="Put",code="OK"}"#;
    assert_eq!(delta(put), 40.0, "every acknowledged put counted once");
    assert_eq!(
        delta(r#"blixard_api_request_duration_seconds_count{service="blixard.v1.KvService",method="Put"}"#),
        40.0
    );
    assert!(delta(r#"blixard_raft_proposal_duration_seconds_count{result="ok"}"#) >= 40.0);
    assert!(delta("blixard_raft_commit_index") >= 40.0 && delta("blixard_raft_applied_index") >= 40.0);
    assert!(delta(r#"blixard_raft_wal_append_duration_seconds_count{sync="true"}"#) >= 1.0);
    assert!(delta("blixard_raft_apply_batch_entries_sum") >= 40.0);
    assert_eq!(after["blixard_raft_is_leader"], 1.0);
    assert_eq!(after["blixard_raft_proposals_in_flight"], 0.0);
    // A failed request is counted under its code.
    let missing = cli(&n.addr, &["vm", "get", "nope"]);
    assert!(!missing.status.success());
    let m = scrape(&http);
    let nf =
        m.iter().find(|(k, _)| k.contains(r#"service="blixard.v1.VmService""#) && k.contains(r#"code="NOT_FOUND""#));
    assert_eq!(nf.map(|(_, v)| *v), Some(1.0), "{m:?}");

    assert!(raw_http(&http, b"POST /metrics HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 405"));
    assert!(raw_http(&http, b"GET /admin HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 404"));
    let junk = raw_http(&http, b"\x16\x03\x01junk that is not HTTP\r\n\r\n");
    assert!(!junk.contains("200 OK"), "{junk}");
    assert!(raw_http(&http, b"GET /healthz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 200"), "still serving");
}

#[test]
fn with_metrics_off_nothing_is_served_and_the_node_works() {
    let tmp = tempfile::tempdir().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let n = TestNode::start_with(1, &tmp.path().join("n1"), &["--http-bind", &http, "--metrics", "off"]);
    n.wait_leader(Duration::from_secs(180));
    assert_eq!(write_keys(&n.addr, "off", 10).len(), 10);
    let m = raw_http(&http, b"GET /metrics HTTP/1.0\r\n\r\n");
    assert!(m.starts_with("HTTP/1.0 404") && m.contains("metrics are off"), "{m}");
    assert!(raw_http(&http, b"GET /healthz HTTP/1.0\r\n\r\n").starts_with("HTTP/1.0 200"));
    let n2 = tmp.path().join("n2").display().to_string();
    let bad = std::process::Command::new(BIN)
        .args(["node", "--id", "2", "--data-dir", &n2, "--metrics", "maybe"])
        .output()
        .unwrap();
    assert!(!bad.status.success() && stderr(&bad).contains("--metrics"), "{}", stderr(&bad));
}

#[test]
fn a_bad_or_taken_http_bind_is_refused_before_the_node_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut n = TestNode::start_with(1, &tmp.path().join("n1"), &["--http-bind", "not-an-address"]);
    assert_eq!(n.wait_exit(Duration::from_secs(30)).code(), Some(1));
    assert!(n.log().contains("cannot bind --http-bind not-an-address"), "{}", n.log());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut n = TestNode::start_with(2, &tmp.path().join("n2"), &["--http-bind", &addr]);
    assert_eq!(n.wait_exit(Duration::from_secs(30)).code(), Some(1));
    assert!(n.log().contains(&format!("cannot bind --http-bind {addr}")), "{}", n.log());
    assert!(!tmp.path().join("n2").exists(), "nothing was written before the refusal");
}

#[test]
fn compactions_and_snapshots_are_counted_on_both_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let (h1, h2) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let compact = ["--snapshot-entries", "50", "--keep-entries", "10"];
    let a1: Vec<&str> = compact.iter().copied().chain(["--http-bind", h1.as_str()]).collect();
    let n1 = TestNode::start_with(1, &tmp.path().join("n1"), &a1);
    n1.wait_leader(Duration::from_secs(180));
    assert_eq!(write_keys(&n1.addr, "s", 300).len(), 300);
    let seed = n1.addr.clone();
    let mut c = TestCluster { nodes: vec![n1], tmp };
    let a2: Vec<&str> = compact.iter().copied().chain(["--http-bind", h2.as_str(), "--join", seed.as_str()]).collect();
    let dir = c.tmp.path().join("n2");
    c.nodes.push(TestNode::start_with(2, &dir, &a2));
    c.wait_voters(2);
    wait_until("the snapshot counted on both ends", Duration::from_secs(30), || {
        let (m1, m2) = (scrape(&h1), scrape(&h2));
        let sent = m1.get(r#"blixard_raft_snapshots_sent_total{result="ok"}"#).copied()?;
        let installed = m2.get("blixard_raft_snapshots_installed_total").copied()?;
        let compactions = m1.get("blixard_raft_compactions_total").copied()?;
        (sent >= 1.0 && installed >= 1.0 && compactions >= 1.0).then_some(())
    });
    let m2 = scrape(&h2);
    assert_eq!(m2["blixard_raft_voters"], 2.0);
    assert_eq!(m2["blixard_raft_is_leader"], 0.0);
    assert_eq!(m2["blixard_raft_leader_id"], 1.0);
}
