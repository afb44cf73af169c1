//! The node's config file (issue 16): a node started from a file alone; `config show` names
//! where each value came from; a bad file is refused at start naming its line and key (exit 2);
//! the client config; and the request id `-v` prints showing up in the node's log.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// Kills the node when the test ends, passed or failed.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn blixard(args: &[&str], xdg: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("XDG_CONFIG_HOME", xdg)
        .env_remove("BLIXARD_ADDR")
        .env_remove("BLIXARD_TLS_DIR")
        .output()
        .expect("run blixard")
}

#[test]
fn a_node_runs_from_its_config_file_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");
    let addr = format!("127.0.0.1:{}", free_port());
    let file = tmp.path().join("node.toml");
    std::fs::write(
        &file,
        format!(
            "[node]\nid = 1\nbind = \"{addr}\"\ndata_dir = \"n1\"\n\n[raft]\ntick_ms = 25\n\n[vm]\nimage_cache = {:?}\n\n\
             [log]\nlevel = \"info,blixard_node::request_id=debug\"\nformat = \"json\"\n",
            image_cache()
        ),
    )
    .unwrap();
    let log_path = tmp.path().join("n1.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(&file)
        .env_remove("BLIXARD_IMAGE_CACHE")
        .env_remove("BLIXARD_TLS_DIR")
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _guard = Guard(child);
    let node = TestNode::with_addr(1, &tmp.path().join("n1"), &addr);
    wait_until("the node to lead", Duration::from_secs(60), || {
        (cli_json_opt(&node.addr, &["cluster", "status"])?["role"] == "leader").then_some(())
    });
    assert!(tmp.path().join("n1").is_dir(), "the data dir is relative to the file");

    // `-v` prints the request id; the node logs its request under it.
    let o = blixard(&["--addr", &addr, "-v", "kv", "put", "k", "v"], &xdg);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let id = err.lines().find_map(|l| l.strip_prefix("request-id: ")).expect("-v prints the request id").to_string();
    assert_eq!(id.len(), 16, "{err}");
    wait_until("the request id in the node's log", Duration::from_secs(10), || {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        log.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|l| l["span"]["request_id"] == id.as_str() && l["span"]["method"] == "/blixard.v1.KvService/Put")
            .then_some(())
    });

    // The node takes a sane client id and answers with it; an insane one is replaced.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let echoed = |sent: &'static str| {
        rt.block_on(async {
            let ch =
                tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
            let mut c = blixard_proto::v1::cluster_service_client::ClusterServiceClient::new(ch);
            let mut req = tonic::Request::new(blixard_proto::v1::ClusterStatusRequest::default());
            req.metadata_mut().insert("x-request-id", sent.parse().unwrap());
            let r = c.status(req).await.unwrap();
            r.metadata().get("x-request-id").unwrap().to_str().unwrap().to_string()
        })
    };
    assert_eq!(echoed("ops-ticket.42_a"), "ops-ticket.42_a");
    let made = echoed("not/sane");
    assert!(made.len() == 16 && made.chars().all(|c| c.is_ascii_hexdigit()), "{made}");

    // The client config gives the address; a flag still wins over it.
    std::fs::create_dir_all(xdg.join("blixard")).unwrap();
    std::fs::write(xdg.join("blixard/config.toml"), format!("addr = \"{addr}\"\noutput = \"json\"\n")).unwrap();
    let o = blixard(&["kv", "get", "k"], &xdg);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("output = json from the client config");
    assert_eq!(v["value"], "v", "{v}");
    let o = blixard(&["--addr", "127.0.0.1:1", "kv", "get", "k"], &xdg);
    assert!(!o.status.success() && stderr(&o).contains("127.0.0.1:1"), "{}", stderr(&o));
    std::fs::write(xdg.join("blixard/config.toml"), format!("addr = \"{addr}\"\n\nadress = \"x\"\n")).unwrap();
    let o = blixard(&["kv", "get", "k"], &xdg);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("config.toml:3:") && stderr(&o).contains("adress"), "{}", stderr(&o));
}

#[test]
fn config_show_names_each_source_and_bad_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let xdg = tmp.path().join("xdg");
    let file = tmp.path().join("node.toml");
    std::fs::write(&file, "[node]\nid = 4\n\n[raft]\ntick_ms = 30\nelection_ticks = 12\n").unwrap();
    let f = file.to_str().unwrap();
    let o = Command::new(BIN)
        .args(["config", "show", "--config", f, "--election-ticks", "14", "-o", "json"])
        .env("BLIXARD_RAFT_HEARTBEAT_TICKS", "3")
        .env("BLIXARD_RAFT_TICK_MS", "35")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = |k: &str| rows.as_array().unwrap().iter().find(|r| r["key"] == k).unwrap().clone();
    assert_eq!(row("node.id")["value"], 4);
    assert_eq!(row("node.id")["source"], "file");
    assert_eq!(row("node.id")["origin"], format!("{f}:2"));
    assert_eq!(
        (row("raft.tick_ms")["value"].clone(), row("raft.tick_ms")["source"].clone()),
        (35.into(), "env".into())
    );
    assert_eq!(row("raft.tick_ms")["origin"], "BLIXARD_RAFT_TICK_MS");
    assert_eq!(row("raft.election_ticks")["source"], "flag");
    assert_eq!(row("raft.election_ticks")["value"], 14);
    assert_eq!(row("raft.heartbeat_ticks")["source"], "env");
    assert_eq!(row("limits.max_conns_per_ip")["source"], "default");
    assert_eq!(row("limits.max_conns_per_ip")["value"], 64);
    assert_eq!(row("node.data_dir")["source"], "unset");
    let table = stdout(&blixard(&["config", "show", "--config", f], &xdg));
    assert!(
        table.lines().any(|l| l.starts_with("raft.tick_ms") && l.contains("30") && l.contains(&format!("file {f}:5"))),
        "{table}"
    );

    // A bad file: the node refuses to start, naming the file, line, key and rule.
    std::fs::write(&file, "[node]\nid = 1\ndata_dir = \"d\"\n\n[liveness]\nfence_after_ms = 5\n").unwrap();
    let o = blixard(&["node", "--config", f], &xdg);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains(&format!("{f}:6: liveness.fence_after_ms:")) && e.contains("20..=600000"), "{e}");
    std::fs::write(&file, "[node]\nid = 1\n\n[vm]\nmemory = 5\n").unwrap();
    let e = stderr(&blixard(&["node", "--config", f], &xdg));
    assert!(e.contains(&format!("{f}:5:")) && e.contains("`memory`"), "{e}");
    assert!(!tmp.path().join("d").exists(), "nothing was created");
    // Without an id anywhere.
    std::fs::write(&file, "[node]\ndata_dir = \"d\"\n").unwrap();
    let o = blixard(&["node", "--config", f], &xdg);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing node.id"), "{}", stderr(&o));
}
