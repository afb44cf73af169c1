//! Test kit for end-to-end tests: real `blixard` processes, temp dirs, and waiting on
//! conditions with deadlines (never fixed sleeps). Every process is killed and every directory
//! removed when its guard drops, also when a test fails.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_blixard");

/// The guest image cache shared by every test node (built once, on first use).
pub fn image_cache() -> PathBuf {
    std::env::var_os("BLIXARD_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("blixard-test-images"))
}

/// Kills every process whose command line mentions `dir` (the VMs a node started: QEMU runs in
/// its own process group so that it outlives a daemon restart, so killing the node is not enough).
pub fn kill_processes_under(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("qemu-system") && cmd.contains(&needle) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Polls `cond` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(pause); // a poll interval, not a wait for an outcome
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A free port on 127.0.0.1 (bound then released; the OS does not hand it out again soon).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind :0").local_addr().expect("addr").port()
}

/// Runs the CLI against `addr`.
pub fn cli(addr: &str, args: &[&str]) -> Output {
    Command::new(BIN).arg("--addr").arg(addr).args(args).output().expect("run blixard")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs the CLI and parses its JSON output; panics with stderr when it fails.
pub fn cli_json(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let o = cli(addr, &a);
    assert!(o.status.success(), "blixard {args:?} failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("json output")
}

/// Like [`cli_json`], but `None` when the command fails.
pub fn cli_json_opt(addr: &str, args: &[&str]) -> Option<serde_json::Value> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    let o = cli(addr, &a);
    if !o.status.success() {
        return None;
    }
    serde_json::from_slice(&o.stdout).ok()
}

/// Writes `n` keys `prefix/i` through `addr`, returning those acknowledged.
pub fn write_keys(addr: &str, prefix: &str, n: usize) -> BTreeMap<String, String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use blixard_proto::v1::kv_service_client::KvServiceClient;
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut tasks = Vec::new();
        for c in 0..8 {
            let (ch, prefix) = (ch.clone(), prefix.to_string());
            tasks.push(tokio::spawn(async move {
                let mut kv = KvServiceClient::new(ch);
                let mut done = Vec::new();
                for i in (c..n).step_by(8) {
                    let (k, v) = (format!("{prefix}/{i:05}"), format!("v{i}"));
                    let req = blixard_proto::v1::PutRequest { key: k.clone().into(), value: v.clone().into() };
                    if kv.put(req).await.is_ok() {
                        done.push((k, v));
                    }
                }
                done
            }));
        }
        let mut all = BTreeMap::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    })
}

/// One `blixard node` process with its own data dir.
pub struct TestNode {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    /// A command the node runs under (empty: none).
    prefix: Vec<String>,
    child: Option<Child>,
}

impl TestNode {
    /// Starts node `id` in `dir` on a fresh port.
    pub fn start(id: u64, dir: &Path) -> TestNode {
        Self::start_with(id, dir, &[])
    }

    pub fn start_with(id: u64, dir: &Path, extra: &[&str]) -> TestNode {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut n = TestNode { id, addr, dir: dir.to_path_buf(), prefix: Vec::new(), child: None };
        n.spawn(extra);
        n
    }

    /// A node at a given address (for nodes in network namespaces).
    pub fn with_addr(id: u64, dir: &Path, addr: &str) -> TestNode {
        TestNode { id, addr: addr.to_string(), dir: dir.to_path_buf(), prefix: Vec::new(), child: None }
    }

    /// Spawns under a command prefix, e.g. `ip netns exec NS`.
    pub fn spawn_prefixed(&mut self, prefix: &[&str], extra: &[&str]) {
        self.prefix = prefix.iter().map(|s| s.to_string()).collect();
        self.spawn(extra);
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The node process's resident memory in KiB (VmRSS), while it runs.
    pub fn rss_kib(&self) -> Option<u64> {
        let pid = self.child.as_ref()?.id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
    }

    pub fn spawn(&mut self, extra: &[&str]) {
        self.spawn_env(extra, &[]);
    }

    /// [`Self::spawn`] with environment variables set for the node process.
    pub fn spawn_env(&mut self, extra: &[&str], env: &[(&str, &std::ffi::OsStr)]) {
        assert!(self.child.is_none(), "node {} already running", self.id);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let mut cmd = match self.prefix.split_first() {
            None => Command::new(BIN),
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
        };
        let child = cmd
            .args(["node", "--id", &self.id.to_string(), "--bind", &self.addr, "--data-dir"])
            .arg(&self.dir)
            .args(extra)
            .env("BLIXARD_IMAGE_CACHE", image_cache())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn node");
        self.child = Some(child);
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.with_extension("log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until this node reports itself leader and has registered its capacity.
    pub fn wait_leader(&self, timeout: Duration) -> serde_json::Value {
        wait_until(&format!("node {} to become leader", self.id), timeout, || {
            let o = cli(&self.addr, &["cluster", "status", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            let me = v["members"].as_array()?.iter().find(|m| m["id"] == self.id)?.clone();
            (v["role"] == "leader" && me["memory_mib"].is_u64()).then_some(v)
        })
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        wait_until("node to exit after SIGTERM", Duration::from_secs(15), || c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit on its own (e.g. refusing to start).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let s = wait_until("node to exit", timeout, || c.try_wait().ok().flatten());
        self.child = None;
        s
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill9();
        kill_processes_under(&self.dir);
    }
}

/// Several nodes in one temp dir: node 1 bootstraps, the others join through it.
pub struct TestCluster {
    pub nodes: Vec<TestNode>,
    pub tmp: tempfile::TempDir,
}

impl TestCluster {
    pub fn start(n: usize, extra: &[&str]) -> TestCluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut nodes = Vec::new();
        let first = TestNode::start_with(1, &tmp.path().join("n1"), extra);
        first.wait_leader(Duration::from_secs(180));
        nodes.push(first);
        let mut c = TestCluster { nodes, tmp };
        for id in 2..=n as u64 {
            c.add(id, extra);
        }
        c.wait_voters(n);
        c
    }

    /// Starts node `id` joining through node 1.
    pub fn add(&mut self, id: u64, extra: &[&str]) {
        let seed = self.nodes[0].addr.clone();
        let mut args = vec!["--join", seed.as_str()];
        args.extend_from_slice(extra);
        let n = TestNode::start_with(id, &self.tmp.path().join(format!("n{id}")), &args);
        self.nodes.push(n);
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes.iter().find(|n| n.id == id).expect("node")
    }

    pub fn node_mut(&mut self, id: u64) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    /// Any running node's status (tries each).
    pub fn status_via(&self, id: u64) -> Option<serde_json::Value> {
        let o = cli(&self.node(id).addr, &["cluster", "status", "-o", "json"]);
        serde_json::from_slice(&o.stdout).ok()
    }

    /// Waits until `n` voters are reachable and agree on one leader; returns the leader's id.
    pub fn wait_voters(&self, n: usize) -> u64 {
        wait_until(&format!("{n} reachable, registered voters with a leader"), Duration::from_secs(120), || {
            self.nodes.iter().filter(|x| x.running()).find_map(|x| {
                let st = self.status_via(x.id)?;
                let ms = st["members"].as_array()?;
                let voters = ms
                    .iter()
                    .filter(|m| m["membership"] == "voter" && m["reachable"] == true && m["memory_mib"].is_u64())
                    .count();
                let leader = st["leader_id"].as_u64()?;
                (voters == n && ms.iter().any(|m| m["id"] == leader && m["role"] == "leader")).then_some(leader)
            })
        })
    }

    /// Waits for a leader among the running nodes other than `not`; returns its id.
    pub fn wait_new_leader(&self, not: u64) -> u64 {
        wait_until("a new leader", Duration::from_secs(20), || {
            self.nodes.iter().filter(|x| x.running() && x.id != not).find_map(|x| {
                let st = self.status_via(x.id)?;
                let l = st["leader_id"].as_u64()?;
                (l != not && st["role"] == "leader").then_some(l)
            })
        })
    }

    /// Waits until node `id` has applied at least `index`.
    pub fn wait_applied(&self, id: u64, index: u64) {
        wait_until(&format!("node {id} to apply {index}"), Duration::from_secs(30), || {
            let st = self.status_via(id)?;
            (st["applied_index"].as_u64()? >= index).then_some(())
        })
    }
}
