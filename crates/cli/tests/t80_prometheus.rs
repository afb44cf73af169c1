//! Metrics checked by a real Prometheus (issue 16): a 3-node cluster serving `--http-bind`,
//! `promtool check metrics` clean on every node's output, a Prometheus scraping all three that
//! sees every series the README documents with sane values (one leader, equal commit indexes
//! after a write), every query of the Grafana dashboard returning data, and the alerting rules
//! loaded and healthy; `/readyz` 503 on a node cut off from the cluster and 200 after healing.
//! The alerting rules also pass `promtool check rules` and their unit tests.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A plain HTTP/1.0 GET (no chunked answers); `None` when the server cannot be reached.
fn http_get(addr: &str, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server in a temp dir, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[String]) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: blixard\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("run prometheus (scripts/setup.sh installs it)");
        Prometheus { child, addr, dir: dir.to_path_buf() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Option<serde_json::Value> {
        let (code, body) = http_get(&self.addr, path, None)?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        assert_eq!(code, 200, "prometheus {path}: {body}");
        assert_eq!(v["status"], "success", "{v}");
        Some(v["data"].clone())
    }

    /// The instant vector of `q`: (labels, value) pairs; `None` while Prometheus is not up.
    fn query(&self, q: &str) -> Option<Vec<(serde_json::Value, f64)>> {
        let d = self.api(&format!("/api/v1/query?query={}", urlencode(q)))?;
        let r = d["result"].as_array()?;
        Some(r.iter().map(|s| (s["metric"].clone(), s["value"][1].as_str().unwrap().parse::<f64>().unwrap())).collect())
    }

    /// The value of a query with one series.
    fn scalar(&self, q: &str) -> Option<f64> {
        let r = self.query(q)?;
        (r.len() == 1).then(|| r[0].1)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(name, type, per_vm)` of every series the README's "Operating" section documents.
fn documented_series() -> Vec<(String, String, bool)> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let rows: Vec<(String, String, bool)> = readme
        .lines()
        .filter(|l| l.starts_with("| `blixard_") || l.starts_with("| `process_"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells[1].trim_matches('`').to_string(), cells[2].to_string(), cells[3].contains("vm"))
        })
        .collect();
    assert!(rows.len() >= 30, "the README's series table: {rows:?}");
    rows
}

/// Node `id`'s arguments: its HTTP port, and the seed to join through.
fn node_args(http: &str, seed: Option<&str>) -> Vec<String> {
    let mut a = vec!["--http-bind".to_string(), http.to_string()];
    if let Some(s) = seed {
        a.extend(["--join".to_string(), s.to_string()]);
    }
    a
}

fn readyz(http: &str) -> Option<(u16, String)> {
    http_get(http, "/readyz", None)
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo().join("deploy/prometheus");
    let check = Command::new("promtool").arg("check").arg("rules").arg(dir.join("alerts.yml")).output();
    let check = check.expect("run promtool (scripts/setup.sh installs prometheus)");
    assert!(check.status.success(), "{}{}", stdout(&check), stderr(&check));
    assert!(stdout(&check).contains("SUCCESS: 6 rules found"), "{}", stdout(&check));
    let t = Command::new("promtool").arg("test").arg("rules").arg(dir.join("alerts_test.yml")).output().unwrap();
    assert!(t.status.success(), "{}{}", stdout(&t), stderr(&t));
}

#[test]
fn a_real_prometheus_scrapes_a_three_node_cluster_and_readyz_follows_the_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let http: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let a1 = node_args(&http[0], None);
    let n1 = TestNode::start_with(1, &tmp.path().join("n1"), &a1.iter().map(String::as_str).collect::<Vec<_>>());
    n1.wait_leader(Duration::from_secs(180));
    let seed = n1.addr.clone();
    let mut c = TestCluster { nodes: vec![n1], tmp };
    let mut args = vec![a1];
    for id in 2..=3u64 {
        let a = node_args(&http[id as usize - 1], Some(&seed));
        let dir = c.tmp.path().join(format!("n{id}"));
        c.nodes.push(TestNode::start_with(id, &dir, &a.iter().map(String::as_str).collect::<Vec<_>>()));
        args.push(a);
    }
    let leader = c.wait_voters(3);
    for h in &http {
        wait_until(&format!("{h}/readyz to answer 200"), Duration::from_secs(120), || {
            readyz(h).filter(|(code, _)| *code == 200)
        });
        assert_eq!(http_get(h, "/healthz", None).unwrap(), (200, "ok\n".to_string()));
    }

    // Load: writes through a follower, one VM running, and one pending while no node is
    // eligible for new work.
    let follower = c.nodes.iter().find(|n| n.id != leader).unwrap().addr.clone();
    assert_eq!(write_keys(&follower, "m", 50).len(), 50);
    cli_json(&follower, &["vm", "create", "web", "--memory", "128", "--start"]);
    let w = cli(&follower, &["vm", "wait", "web", "--state", "running", "--timeout", "120s"]);
    assert!(w.status.success(), "{}", stderr(&w));
    let t = cli(&follower, &["task", "submit", "--wait", "--", "true"]);
    assert!(t.status.success(), "{}{}", stdout(&t), stderr(&t));
    for id in 1..=3u64 {
        cli_json(&follower, &["node", "eligibility", &id.to_string(), "disable"]);
    }
    cli_json(&follower, &["vm", "create", "later", "--memory", "64"]);
    let put = cli_json(&follower, &["kv", "put", "last", "write"]);
    let index = put["index"].as_u64().unwrap() as f64;

    // promtool finds nothing to fix in any node's output (the classic text format, which it
    // parses); OpenMetrics is served to a scraper that asks for it.
    for h in &http {
        let (code, text) = http_get(h, "/metrics", None).unwrap();
        assert_eq!(code, 200);
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run promtool");
        p.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "{}{}",
            stdout(&out),
            stderr(&out)
        );
        let (_, om) = http_get(h, "/metrics", Some("application/openmetrics-text;version=1.0.0")).unwrap();
        assert!(om.ends_with("# EOF\n") && om.contains("# UNIT blixard_raft_proposal_duration_seconds seconds"));
    }

    let prom = Prometheus::start(&c.tmp.path().join("prometheus"), &http);
    wait_until("Prometheus to scrape all three nodes", Duration::from_secs(60), || {
        let up = prom.query(r#"up{job="blixard"} == 1"#)?;
        (up.len() == 3).then_some(())
    });
    assert!(!prom.log().contains("level=error"), "{}", prom.log());

    // Every documented series, from every node (a VM's series from its host only).
    let series = documented_series();
    wait_until("every documented series in Prometheus", Duration::from_secs(30), || {
        let missing: Vec<&String> = series
            .iter()
            .filter(|(name, kind, per_vm)| {
                let q = if kind == "histogram" { format!("{name}_count") } else { name.clone() };
                let n = prom.query(&format!("count by (instance) ({q})")).unwrap_or_default().len();
                if *per_vm {
                    n == 0
                } else {
                    n != 3
                }
            })
            .map(|(n, _, _)| n)
            .collect();
        if !missing.is_empty() {
            eprintln!("not yet in Prometheus: {missing:?}");
        }
        missing.is_empty().then_some(())
    });

    // Sane values: one leader, the one every node names; equal commit indexes past the write.
    assert_eq!(prom.scalar("sum(blixard_raft_is_leader)"), Some(1.0));
    let leaders = prom.query("blixard_raft_is_leader == 1").unwrap();
    assert_eq!(leaders.len(), 1);
    let instance = leaders[0].0["instance"].as_str().unwrap().to_string();
    let info = prom.query(&format!(r#"blixard_node_info{{instance="{instance}"}}"#)).unwrap();
    assert_eq!(info[0].0["node_id"], leader.to_string(), "the leader's instance is node {leader}");
    for (labels, v) in prom.query("blixard_raft_leader_id").unwrap() {
        assert_eq!(v, leader as f64, "{labels}");
    }
    wait_until("equal commit indexes past the write", Duration::from_secs(30), || {
        let min = prom.scalar("min(blixard_raft_commit_index)")?;
        let max = prom.scalar("max(blixard_raft_commit_index)")?;
        (min >= index && min == max).then_some(())
    });
    assert_eq!(prom.scalar("min(blixard_raft_voters)"), Some(3.0));
    // The leader sends to both followers, and reaches them.
    let links = prom.query(&format!(r#"blixard_peer_reachable{{instance="{instance}"}}"#)).unwrap();
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(links.iter().all(|(_, v)| *v == 1.0), "{links:?}");
    assert_eq!(prom.scalar(r#"min(blixard_cluster_nodes{status="ready"})"#), Some(3.0));
    wait_until("VM counts on every node", Duration::from_secs(30), || {
        let total = prom.scalar("min(sum by (instance) (blixard_cluster_vms))")?;
        let pending = prom.scalar("min(blixard_scheduler_pending_vms)")?;
        (total == 2.0 && pending == 1.0).then_some(())
    });
    assert_eq!(prom.scalar(r#"min(blixard_cluster_vms{phase="running"})"#), Some(1.0));
    let host = cli_json(&follower, &["vm", "get", "web"])["node"].as_u64().unwrap();
    // `vm get` and `node get` show the usage measured on the VM's node, from any node: asked of
    // the host by another node, and answered by the host itself.
    let other = c.nodes.iter().find(|n| n.id != host).unwrap().addr.clone();
    let on_host = c.node(host).addr.clone();
    for addr in [&other, &on_host] {
        let v = cli_json(addr, &["vm", "get", "web"]);
        assert_eq!(v["usage_unavailable"], serde_json::Value::Null, "{v}");
        assert!(v["usage"]["memory_rss_bytes"].as_u64().unwrap() > 10_000_000, "{v}");
        assert!(v["usage"]["cpu_seconds"].as_f64().unwrap() > 0.0, "{v}");
        let n = cli_json(addr, &["node", "get", &host.to_string()]);
        assert_eq!(n["usage"]["vms"], 1, "{n}");
        assert!(n["usage"]["memory_rss_bytes"].as_u64().unwrap() > 10_000_000, "{n}");
        let table = stdout(&cli(addr, &["-o", "table", "vm", "get", "web"]));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        let (head, row): (Vec<&str>, Vec<&str>) =
            (lines[0].split_whitespace().collect(), lines[1].split(' ').collect());
        assert_eq!(head[head.len() - 2..], ["CPU", "RSS"], "{table}");
        assert!(row.last() == Some(&"MiB") && lines[1].contains(" s "), "{table}");
    }
    let idle = c.nodes.iter().find(|n| n.id != host).unwrap().id;
    let n = cli_json(&on_host, &["node", "get", &idle.to_string()]);
    assert_eq!((n["usage"]["vms"].as_u64(), n["usage"]["memory_rss_bytes"].as_u64()), (Some(0), Some(0)), "{n}");
    // The scheduler, the reconciler and the task runner counted their work.
    assert!(prom.scalar(r#"min(blixard_scheduler_placements_total{kind="vm",outcome="placed"})"#).unwrap() >= 1.0);
    assert!(prom.scalar(r#"min(blixard_scheduler_placements_total{kind="vm",outcome="pending"})"#).unwrap() >= 1.0);
    assert!(prom.scalar(r#"min(blixard_scheduler_placements_total{kind="task",outcome="placed"})"#).unwrap() >= 1.0);
    // "later" met three ineligible nodes.
    assert!(prom.scalar(r#"min(blixard_scheduler_rejections_total{stage="status"})"#).unwrap() >= 3.0);
    let running = prom.query(r#"blixard_cluster_node_vms{phase="running"}"#).unwrap();
    assert_eq!(running.len(), 3, "from every node: {running:?}");
    let host_label = host.to_string();
    assert!(running.iter().all(|(l, v)| l["node"] == host_label.as_str() && *v == 1.0), "{running:?}");
    assert_eq!(prom.scalar(r#"min(blixard_cluster_tasks{state="succeeded"})"#), Some(1.0));
    let started = prom.scalar(r#"sum(blixard_reconciler_actions_total{action="start",result="ok"})"#).unwrap();
    assert!(started >= 1.0, "{started}");
    assert!(prom.scalar("sum(blixard_vm_boot_duration_seconds_count)").unwrap() >= 1.0);
    let boots = prom.scalar("sum(blixard_vm_boot_duration_seconds_sum)").unwrap();
    assert!(boots > 0.0 && boots < 300.0, "{boots}");
    let attempts = r#"sum(blixard_task_attempt_duration_seconds_count{result="succeeded"})"#;
    assert_eq!(prom.scalar(attempts), Some(1.0));
    assert_eq!(prom.scalar("sum(blixard_vm_health_check_failures_total)"), Some(0.0));
    let rss = prom.query(r#"blixard_vm_resident_memory_bytes{vm="web"}"#).unwrap();
    assert_eq!(rss.len(), 1, "from its host only: {rss:?}");
    assert_eq!(rss[0].0["instance"], http[host as usize - 1].as_str());
    assert!(rss[0].1 > 10e6, "QEMU's resident memory: {}", rss[0].1);
    assert!(prom.scalar(r#"blixard_vm_cpu_seconds_total{vm="web"}"#).unwrap() > 0.0);
    assert!(prom.scalar(r#"blixard_vm_boot_seconds{vm="web"}"#).unwrap() > 0.0);
    let puts = prom.scalar(r#"sum(blixard_api_requests_total{method="Put",code="OK"})"#).unwrap();
    assert!(puts >= 51.0, "{puts} puts counted");
    assert!(prom.scalar(r#"sum(blixard_raft_proposal_duration_seconds_count{result="ok"})"#).unwrap() >= 51.0);
    assert!(prom.scalar("min(process_resident_memory_bytes)").unwrap() > 1e6);
    assert!(prom.scalar("min(process_threads)").unwrap() >= 2.0);

    // Every panel query of the dashboard returns data.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("deploy/grafana/blixard.json")).unwrap()).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    assert!(exprs.len() >= 12, "{exprs:?}");
    for e in &exprs {
        let q = e.replace("$__rate_interval", "1m");
        wait_until(&format!("data for the dashboard query {q}"), Duration::from_secs(60), || {
            prom.query(&q).filter(|r| !r.is_empty())
        });
    }
    // The alerting rules loaded and evaluate without errors on real series.
    wait_until("the alerting rules evaluated", Duration::from_secs(30), || {
        let groups = prom.api("/api/v1/rules")?;
        let rules: Vec<serde_json::Value> = groups["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (rules.len() == 6 && rules.iter().all(|r| r["health"] == "ok")).then_some(())
    });

    // Node 1 cut off (the other two killed): no leader, so not ready; then healed.
    for id in [2, 3] {
        c.node_mut(id).kill9();
    }
    let (code, body) = wait_until("node 1's /readyz to answer 503", Duration::from_secs(30), || {
        readyz(&http[0]).filter(|(code, _)| *code == 503)
    });
    assert_eq!(code, 503);
    assert!(body.starts_with("not ready: no leader is known"), "{body}");
    wait_until("Prometheus to see nodes 2 and 3 down and node 1 without a leader", Duration::from_secs(30), || {
        let down = prom.query(r#"up{job="blixard"} == 0"#)?;
        let lost = prom.scalar(&format!(r#"blixard_raft_has_leader{{instance="{}"}}"#, http[0]))?;
        let unreachable = prom.query(&format!(r#"blixard_peer_reachable{{instance="{}"}} == 0"#, http[0]))?;
        (down.len() == 2 && lost == 0.0 && unreachable.len() == 2).then_some(())
    });
    for id in [2u64, 3] {
        let a: Vec<&str> = args[id as usize - 1].iter().map(String::as_str).collect();
        c.node_mut(id).spawn(&a);
    }
    wait_until("node 1's /readyz to answer 200 again", Duration::from_secs(60), || {
        readyz(&http[0]).filter(|(code, _)| *code == 200)
    });
    drop(prom);
}
