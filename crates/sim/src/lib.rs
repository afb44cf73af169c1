//! Deterministic simulation of Blixard clusters.
//!
//! The unmodified node (`blixard_node::Node`) runs on MadSim's simulated runtime and network:
//! `tokio` and `tonic` are MadSim's (package renames in the workspace), so under
//! `--cfg madsim` time, scheduling, randomness and the network are all driven by one seed.
//! `scripts/sim.sh [SEED]` builds with `--cfg madsim` into its own target dir and runs the
//! scenarios in `tests/`, which use the harness here: a cluster of simulated hosts, clients
//! that behave like the CLI (one session, retries of unknown outcomes with the same session),
//! and the nemesis's verbs (kill, restart, cut off, heal).
#![cfg(madsim)]

pub mod chaos;
pub mod invariants;
pub mod membership;
pub mod nemesis;
pub mod running;
pub mod taskload;
pub mod tasks;
pub mod vmload;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use blixard_core::ClientSession;
use blixard_node::datadir::{Crash, SimDisk};
use blixard_node::{Node, NodeConfig};
use blixard_proto::rpc;
use blixard_proto::v1::cluster_service_client::ClusterServiceClient;
use blixard_proto::v1::error_detail::Reason;
use blixard_proto::v1::kv_service_client::KvServiceClient;
use blixard_proto::v1::node_service_client::NodeServiceClient;
use blixard_proto::v1::task_service_client::TaskServiceClient;
use blixard_proto::v1::vm_service_client::VmServiceClient;
use blixard_proto::v1::{
    ClusterStatusRequest, CreateVmRequest, DeleteRequest, DeleteVmRequest, DrainRequest, GetRequest, GetVmRequest,
    LeaveRequest, ListRequest, ListVmsRequest, PutRequest, ReadOptions, VmNameRequest, VmSpec,
};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle, Runtime};
use tonic::transport::{Channel, Endpoint};

pub const PORT: u16 = 7001;

pub fn ip(i: u64) -> IpAddr {
    format!("10.0.0.{i}").parse().expect("an IPv4 address")
}

pub fn addr(i: u64) -> String {
    format!("10.0.0.{i}:{PORT}")
}

/// What a host needs to run its node (cloned into the host's init, which runs again at every
/// restart).
#[derive(Clone)]
struct Host {
    id: u64,
    dir: PathBuf,
    view: running::Running,
    tasks: Option<tasks::TaskView>,
    tweak: fn(&mut NodeConfig),
    disk: SimDisk,
    /// The member a fresh node asks to join (none: it bootstraps the cluster).
    join: Option<u64>,
    reg: Registry,
}

/// What the harness learns from inside the hosts: a way to each running node's Raft handle
/// (to hand leadership over), and why a node refused to start or stopped.
#[derive(Clone, Default)]
pub struct Registry(std::sync::Arc<std::sync::Mutex<RegistryInner>>);

#[derive(Default)]
struct RegistryInner {
    transfer: BTreeMap<u64, std::sync::Arc<dyn Fn(u64) + Send + Sync>>,
    stopped: BTreeMap<u64, String>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, RegistryInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks node `from`'s Raft to hand leadership to `to` (raft-rs `transfer_leader`, as the
    /// node's own `leave` does); false if `from` does not run.
    pub fn transfer_leader(&self, from: u64, to: u64) -> bool {
        let f = self.lock().transfer.get(&from).cloned();
        f.map(|f| f(to)).is_some()
    }

    /// Why node `id` refused to start or stopped since its host last booted, if it did.
    pub fn stopped(&self, id: u64) -> Option<String> {
        self.lock().stopped.get(&id).cloned()
    }

    fn booting(&self, id: u64) {
        let mut r = self.lock();
        r.transfer.remove(&id);
        r.stopped.remove(&id);
    }

    fn stop(&self, id: u64, why: String) {
        let mut r = self.lock();
        r.transfer.remove(&id);
        r.stopped.insert(id, why);
    }
}

/// One host's daemon: node `id`, joining through `join` if fresh, with the fake VM driver
/// reporting to `view` (a fresh one each time the host boots: a host's death takes its VMs
/// with it), its state store and log on the host's simulated `disk`. A node that refuses to
/// start, or whose driver stops (a storage failure), is recorded in the registry and exits, as
/// the daemon does.
async fn run_node(h: Host) {
    h.reg.booting(h.id);
    // Reasons name files under the run's temporary dir, which differs between two runs of one
    // seed: it is written as `$DIR`, so the history is the seed's alone (s44).
    let root = h.dir.parent().map(|p| p.display().to_string()).unwrap_or_default();
    let plain = move |why: String| if root.is_empty() { why } else { why.replace(&root, "$DIR") };
    let listener = tokio::net::TcpListener::bind(SocketAddr::new("0.0.0.0".parse().expect("ip"), PORT))
        .await
        .expect("bind the node's port");
    let mut cfg = NodeConfig::new(h.id, h.dir);
    cfg.advertise = Some(addr(h.id));
    cfg.join = h.join.map(addr);
    // Fixed capacity, so placement does not depend on the machine the simulation runs on.
    cfg.memory_mib = Some(8 * 1024);
    cfg.disk_gib = Some(100);
    let driver = std::sync::Arc::new(running::RecordingDriver::new(h.id, h.view));
    cfg.vm_driver = Some(blixard_node::backend::Injected { driver, accel: "fake".into() });
    cfg.disk = blixard_node::datadir::Disk::Sim(h.disk);
    if let Some(view) = h.tasks {
        let exec = std::sync::Arc::new(tasks::FakeExecutor { node: h.id, view });
        cfg.task_executor = Some(blixard_node::tasks::exec::Injected(exec));
    }
    (h.tweak)(&mut cfg);
    let mut node = match Node::start(cfg, listener).await {
        Ok(n) => n,
        Err(e) => {
            h.reg.stop(h.id, plain(format!("refused to start: {}", blixard_node::status::chain(&e))));
            return;
        }
    };
    let raft = node.raft.clone();
    h.reg.lock().transfer.insert(h.id, std::sync::Arc::new(move |to| raft.transfer_leader(to)));
    let why = match node.wait_driver().await {
        Ok(()) => "the driver ended".to_string(),
        Err(e) => e,
    };
    // The daemon exits (returning ends the simulated host's every task, as a process's exit).
    h.reg.stop(h.id, plain(format!("stopped: {why}")));
    drop(node);
}

/// Simulated hosts running the cluster's nodes, and the simulator ids to cut or kill them by.
/// Nodes `1..=n` start it; the nemesis may add nodes (new ids, fresh hosts and disks) and remove
/// them ([`membership`]).
pub struct Cluster {
    pub nodes: BTreeMap<u64, NodeHandle>,
    /// The hosts of the current nodes (a removed node's host is gone).
    pub ids: BTreeMap<u64, madsim::task::NodeId>,
    /// Which node runs which VM, at every instant (see [`running`]).
    pub view: running::Running,
    /// Which node runs which task attempt, at every instant (task scenarios only, see [`tasks`]).
    pub tasks: Option<tasks::TaskView>,
    dead: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    /// Each host's disk, every host the run had: what its node synced survives the host's
    /// death, what it only wrote may not (see [`SimDisk::crash`]).
    pub disks: BTreeMap<u64, SimDisk>,
    /// The current nodes, shared with the clients that route through them.
    pub members: Members,
    pub reg: Registry,
    dir: PathBuf,
    tweak: fn(&mut NodeConfig),
}

/// A set of node ids shared between the harness and its clients.
#[derive(Clone, Debug, Default)]
pub struct Members(std::sync::Arc<std::sync::Mutex<std::collections::BTreeSet<u64>>>);

impl Members {
    pub fn of(ids: impl IntoIterator<Item = u64>) -> Members {
        Members(std::sync::Arc::new(std::sync::Mutex::new(ids.into_iter().collect())))
    }

    pub fn get(&self) -> Vec<u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    pub fn insert(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    pub fn remove(&self, id: u64) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }

    /// The member after `id` (wrapping), for a client failing over.
    pub fn after(&self, id: u64) -> u64 {
        let all = self.get();
        all.iter().copied().find(|&m| m > id).or(all.first().copied()).unwrap_or(id)
    }
}

impl Cluster {
    pub fn start(n: u64, dir: &std::path::Path) -> Cluster {
        Cluster::start_with(n, dir, |_| {})
    }

    /// The same, with every node's configuration changed by `tweak` first.
    pub fn start_with(n: u64, dir: &std::path::Path, tweak: fn(&mut NodeConfig)) -> Cluster {
        Cluster::start_full(n, dir, tweak, None, None)
    }

    /// The same, but node `n` (the last) first boots `late_by` after the others (a restart of it
    /// later is immediate): it joins and registers long after the leader was elected.
    pub fn start_late(n: u64, dir: &std::path::Path, late_by: Duration) -> Cluster {
        Cluster::start_full(n, dir, |_| {}, None, Some((n, late_by)))
    }

    /// The same, every node running task attempts with the fake executor (see [`tasks`]).
    pub fn start_with_tasks(n: u64, dir: &std::path::Path) -> Cluster {
        Cluster::start_full(n, dir, |_| {}, Some(tasks::TaskView::new()), None)
    }

    fn start_full(
        n: u64,
        dir: &std::path::Path,
        tweak: fn(&mut NodeConfig),
        tasks: Option<tasks::TaskView>,
        late: Option<(u64, Duration)>,
    ) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            ids: BTreeMap::new(),
            view: running::Running::new(),
            tasks,
            dead: Default::default(),
            disks: BTreeMap::new(),
            members: Members::default(),
            reg: Registry::default(),
            dir: dir.to_path_buf(),
            tweak,
        };
        for id in 1..=n {
            c.spawn_host(id, (id != 1).then_some(1), late.filter(|(l, _)| *l == id).map(|(_, d)| d));
        }
        c
    }

    /// Boots a fresh host (empty disk) for node `id`, which joins through `join` (or bootstraps);
    /// its first boot waits `late` first.
    fn spawn_host(&mut self, id: u64, join: Option<u64>, late: Option<Duration>) {
        let h = Handle::current();
        // The disk's crash choices from the run's seed (not drawn from its generator, so the
        // schedules stay those of the seed).
        let disk = SimDisk::new(h.seed() ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        self.disks.insert(id, disk.clone());
        let host = Host {
            id,
            dir: self.dir.join(format!("n{id}")),
            view: self.view.clone(),
            tasks: self.tasks.clone(),
            tweak: self.tweak,
            disk,
            join,
            reg: self.reg.clone(),
        };
        // Only the first boot waits.
        let wait = std::sync::Arc::new(std::sync::Mutex::new(late));
        let node = h
            .create_node()
            .name(format!("n{id}"))
            .ip(ip(id))
            .init(move || {
                let host = host.clone();
                let wait = wait.lock().unwrap_or_else(|e| e.into_inner()).take();
                async move {
                    if let Some(w) = wait {
                        tokio::time::sleep(w).await;
                    }
                    run_node(host).await
                }
            })
            .build();
        self.ids.insert(id, node.id());
        self.nodes.insert(id, node);
        self.members.insert(id);
    }

    pub fn size(&self) -> u64 {
        self.ids.len() as u64
    }

    /// A host for clients (it reaches every node).
    pub fn client_host(&self) -> NodeHandle {
        Handle::current().create_node().name("client").ip(ip(100)).build()
    }

    /// The host dies (its daemon and its VMs; its data dir stays, less what was not synced: any
    /// subset of those writes POSIX allows, page by page).
    pub fn kill(&self, id: u64) {
        self.kill_with(id, Crash::Pages);
    }

    /// The same, the disk losing its unsynced writes as `how` says.
    pub fn kill_with(&self, id: u64, how: Crash) {
        Handle::current().kill(self.ids[&id]);
        self.disks[&id].crash(how);
        self.view.host_died(id);
        if let Some(t) = &self.tasks {
            t.host_died(id);
        }
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).insert(id);
    }

    /// The hosts killed and not restarted since.
    pub fn dead(&self) -> Vec<u64> {
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).iter().copied().collect()
    }

    /// Starts the daemon again from its data dir.
    /// (A running host is killed first: its VMs die with it.)
    pub fn restart(&self, id: u64) {
        if !self.dead().contains(&id) {
            self.kill(id);
        }
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        Handle::current().restart(self.ids[&id]);
    }

    /// Cuts `id` off from every other node, both ways (clients still reach it).
    pub fn isolate(&self, id: u64) {
        let net = NetSim::current();
        for (&o, &other) in &self.ids {
            if o != id {
                net.clog_link(self.ids[&id], other);
                net.clog_link(other, self.ids[&id]);
            }
        }
    }

    /// Nothing `id` sends reaches another node (it still hears them).
    pub fn cut_outbound(&self, id: u64) {
        let net = NetSim::current();
        for (&o, &other) in &self.ids {
            if o != id {
                net.clog_link(self.ids[&id], other);
            }
        }
    }

    /// Nothing another node sends reaches `id` (it can still send).
    pub fn cut_inbound(&self, id: u64) {
        let net = NetSim::current();
        for (&o, &other) in &self.ids {
            if o != id {
                net.clog_link(other, self.ids[&id]);
            }
        }
    }

    /// Undoes any cut of `id`'s links to and from the other nodes.
    pub fn heal(&self, id: u64) {
        let net = NetSim::current();
        for (&o, &other) in &self.ids {
            if o != id {
                net.unclog_link(self.ids[&id], other);
                net.unclog_link(other, self.ids[&id]);
            }
        }
    }

    /// Splits the nodes into `side` and the rest, both ways.
    pub fn split(&self, side: &[u64]) {
        let net = NetSim::current();
        for (&a, &na) in &self.ids {
            for (&b, &nb) in &self.ids {
                if side.contains(&a) && !side.contains(&b) {
                    net.clog_link(na, nb);
                    net.clog_link(nb, na);
                }
            }
        }
    }

    /// Undoes every cut between nodes.
    pub fn heal_all(&self) {
        let net = NetSim::current();
        for &a in self.ids.values() {
            for &b in self.ids.values() {
                if a != b {
                    net.unclog_link(a, b);
                }
            }
        }
    }
}

pub fn channel(i: u64) -> Channel {
    Endpoint::from_shared(format!("http://{}", addr(i)))
        .expect("endpoint")
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

pub async fn status(i: u64) -> Option<blixard_proto::v1::ClusterStatusResponse> {
    let mut c = ClusterServiceClient::new(channel(i));
    tokio::time::timeout(Duration::from_secs(2), c.status(ClusterStatusRequest {}))
        .await
        .ok()?
        .ok()
        .map(|r| r.into_inner())
}

/// Node `i`'s own view of every key (a stale read).
pub async fn local_pairs(i: u64) -> Option<BTreeMap<String, String>> {
    let mut c = KvServiceClient::new(channel(i));
    let req =
        ListRequest { prefix: vec![], limit: 10_000, read: Some(ReadOptions { stale: true }), ..Default::default() };
    let r = tokio::time::timeout(Duration::from_secs(2), c.list(req)).await.ok()?.ok()?.into_inner();
    Some(
        r.pairs
            .into_iter()
            .map(|p| (String::from_utf8_lossy(&p.key).into_owned(), String::from_utf8_lossy(&p.value).into_owned()))
            .collect(),
    )
}

/// Polls `cond` every 100 ms of simulated time until it is `Some`, or panics after 30 s.
pub async fn wait<T, F: std::future::Future<Output = Option<T>>>(what: &str, mut cond: impl FnMut() -> F) -> T {
    for _ in 0..300 {
        if let Some(v) = cond().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Waits until node `via` sees `n` voters and a leader; returns the leader.
pub async fn wait_formed(via: u64, n: usize) -> u64 {
    wait("the cluster to form", || async {
        let s = status(via).await?;
        (s.members.len() == n && s.members.iter().all(|m| m.membership == "voter" && m.reachable) && s.leader_id != 0)
            .then_some(s.leader_id)
    })
    .await
}

/// A client as the CLI is one: one session; a write is retried with the same session while its
/// outcome is unknown or it was not applied, until `deadline`, each time through the next node
/// (as the CLI fails over between its endpoints) — so a node may still hold an earlier attempt
/// of a write the client has since seen answered and followed with others.
pub struct Client {
    session: ClientSession,
    nodes: Members,
    /// Attempts the last write took.
    pub attempts: u32,
}

/// A write's kind, for [`Client::write`].
pub enum Write<'a> {
    Put(&'a str, &'a str),
    Delete(&'a str),
    /// A VM (128 MiB, 1 vCPU) placed by the scheduler and started.
    VmCreate(&'a str),
    /// The same, placed on the given node.
    VmCreateOn(&'a str, u64),
    /// Bumps the VM's restart generation: applied twice, it would count twice.
    VmRestart(&'a str),
    VmStart(&'a str),
    VmStop(&'a str),
    VmDelete(&'a str),
    /// Removes node `.0` from the cluster (`blixard cluster leave`).
    Leave(u64),
    /// Drains node `.0`: its VMs move off, each started elsewhere once stopped there.
    Drain(u64),
    /// A task of the fake executor (see [`tasks::work`]): its submit index once acknowledged.
    Task(&'a blixard_core::TaskSpec),
}

impl Client {
    /// `id` must differ between clients (it is the session's client id); the cluster has
    /// nodes `1..=nodes`.
    pub fn new(id: u128, nodes: u64) -> Client {
        Client::over(id, Members::of(1..=nodes))
    }

    /// The same, failing over between the nodes `nodes` holds at the time.
    pub fn over(id: u128, nodes: Members) -> Client {
        Client { session: ClientSession::new(id), nodes, attempts: 0 }
    }

    /// One write, first through node `via`; `Ok(index)` once its outcome is known to be success.
    pub async fn write(&mut self, mut via: u64, w: Write<'_>, deadline: Duration) -> Result<u64, String> {
        let s = self.session.begin();
        self.attempts = 0;
        let end = tokio::time::Instant::now() + deadline;
        let r = loop {
            self.attempts += 1;
            let attempt = async {
                let ch = channel(via);
                match &w {
                    Write::Put(k, v) => {
                        let mut req = tonic::Request::new(PutRequest {
                            key: k.as_bytes().to_vec(),
                            value: v.as_bytes().to_vec(),
                        });
                        rpc::set_session(req.metadata_mut(), &s);
                        KvServiceClient::new(ch).put(req).await.map(|r| r.into_inner().index)
                    }
                    Write::Delete(k) => {
                        let mut req = tonic::Request::new(DeleteRequest { key: k.as_bytes().to_vec() });
                        rpc::set_session(req.metadata_mut(), &s);
                        KvServiceClient::new(ch).delete(req).await.map(|r| r.into_inner().index)
                    }
                    Write::VmCreate(name) | Write::VmCreateOn(name, _) => {
                        let spec = VmSpec { name: name.to_string(), vcpus: 1, memory_mib: 128, ..Default::default() };
                        let node = if let Write::VmCreateOn(_, n) = &w { Some(*n) } else { None };
                        let mut req = tonic::Request::new(CreateVmRequest {
                            spec: Some(spec),
                            node,
                            start: true,
                            ..Default::default()
                        });
                        rpc::set_session(req.metadata_mut(), &s);
                        VmServiceClient::new(ch).create_vm(req).await.map(|r| r.into_inner().index)
                    }
                    Write::VmRestart(name) => {
                        let mut req = tonic::Request::new(VmNameRequest { name: name.to_string() });
                        rpc::set_session(req.metadata_mut(), &s);
                        VmServiceClient::new(ch)
                            .restart_vm(req)
                            .await
                            .map(|r| r.into_inner().vm.map_or(0, |v| v.restart_generation))
                    }
                    Write::VmStart(name) | Write::VmStop(name) => {
                        let mut req = tonic::Request::new(VmNameRequest { name: name.to_string() });
                        rpc::set_session(req.metadata_mut(), &s);
                        let mut c = VmServiceClient::new(ch);
                        let r =
                            if matches!(w, Write::VmStart(_)) { c.start_vm(req).await } else { c.stop_vm(req).await };
                        r.map(|r| r.into_inner().vm.map_or(0, |v| v.restart_generation))
                    }
                    Write::Task(spec) => {
                        let mut req = tonic::Request::new(blixard_proto::v1::TaskSpec::from((*spec).clone()));
                        rpc::set_session(req.metadata_mut(), &s);
                        TaskServiceClient::new(ch)
                            .submit_task(req)
                            .await
                            .map(|r| blixard_core::task::parse_id(&r.into_inner().id).unwrap_or(0))
                    }
                    Write::Leave(id) => {
                        let mut req = tonic::Request::new(LeaveRequest { node_id: *id });
                        rpc::set_session(req.metadata_mut(), &s);
                        ClusterServiceClient::new(ch).leave(req).await.map(|r| r.into_inner().index)
                    }
                    Write::Drain(id) => {
                        let d = DrainRequest { id: *id, deadline_ms: 20_000, parallel: 4, cancel: false };
                        let mut req = tonic::Request::new(d);
                        rpc::set_session(req.metadata_mut(), &s);
                        NodeServiceClient::new(ch).drain(req).await.map(|_| 0)
                    }
                    Write::VmDelete(name) => {
                        let mut req = tonic::Request::new(DeleteVmRequest { name: name.to_string() });
                        rpc::set_session(req.metadata_mut(), &s);
                        VmServiceClient::new(ch).delete_vm(req).await.map(|r| r.into_inner().index)
                    }
                }
            };
            let err = match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(i)) => break Ok(i),
                Ok(Err(st)) => {
                    let retry =
                        matches!(
                            rpc::reason(&st),
                            Some(Reason::NotApplied | Reason::OutcomeUnknown | Reason::Exhausted) | None
                        ) && !matches!(st.code(), tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition);
                    if !retry {
                        break Err(format!("{:?}: {}", st.code(), st.message()));
                    }
                    format!("{:?}", st.code())
                }
                Err(_) => "timeout".to_string(),
            };
            if tokio::time::Instant::now() >= end {
                break Err(err);
            }
            via = self.nodes.after(via);
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        self.session.end(s.seq);
        r
    }
}

impl Client {
    /// A linearizable read of `key`, first through node `via`, retried through the next node
    /// until `deadline`.
    pub async fn get(&mut self, mut via: u64, key: &str, deadline: Duration) -> Result<Option<String>, String> {
        let end = tokio::time::Instant::now() + deadline;
        loop {
            let req = GetRequest { key: key.as_bytes().to_vec(), read: Some(ReadOptions { stale: false }) };
            let mut kv = KvServiceClient::new(channel(via));
            let err = match tokio::time::timeout(Duration::from_secs(2), kv.get(req)).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    return Ok(r.found.then(|| String::from_utf8_lossy(&r.value).into_owned()));
                }
                Ok(Err(st)) => format!("{:?}: {}", st.code(), st.message()),
                Err(_) => "timeout".to_string(),
            };
            if tokio::time::Instant::now() >= end {
                return Err(err);
            }
            via = self.nodes.after(via);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A VM's restart generation as node `i` sees it (a stale read).
pub async fn restart_generation(i: u64, name: &str) -> Option<u64> {
    let mut c = VmServiceClient::new(channel(i));
    let req = GetVmRequest { name: name.to_string(), read: Some(ReadOptions { stale: true }) };
    let r = tokio::time::timeout(Duration::from_secs(2), c.get_vm(req)).await.ok()?.ok()?.into_inner();
    r.vm.map(|v| v.restart_generation)
}

/// Node `i`'s view of one VM (a stale read).
pub async fn vm(i: u64, name: &str) -> Option<blixard_proto::v1::Vm> {
    let mut c = VmServiceClient::new(channel(i));
    let req = GetVmRequest { name: name.to_string(), read: Some(ReadOptions { stale: true }) };
    tokio::time::timeout(Duration::from_secs(2), c.get_vm(req)).await.ok()?.ok()?.into_inner().vm
}

/// Node `i`'s view of every VM (a stale read), by name.
pub async fn vms(i: u64) -> Option<BTreeMap<String, blixard_proto::v1::Vm>> {
    let mut c = VmServiceClient::new(channel(i));
    let req = ListVmsRequest { read: Some(ReadOptions { stale: true }), limit: 10_000, ..Default::default() };
    let r = tokio::time::timeout(Duration::from_secs(2), c.list_vms(req)).await.ok()?.ok()?.into_inner();
    Some(r.vms.into_iter().filter_map(|v| Some((v.spec.clone()?.name, v))).collect())
}

/// Runs `scenario` in a fresh simulation with `seed`, on a fresh OS thread: thread-local
/// generators (`rand::thread_rng`, which raft-rs uses for election timeouts, and std's hash keys)
/// are seeded on first use from MadSim's seeded `getrandom`, so a reused thread would carry
/// state over from the last run.
pub fn run<F, Fut>(seed: u64, scenario: F) -> Vec<String>
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<String>> + 'static,
{
    std::thread::spawn(move || {
        // Data dirs in memory when the host has a tmpfs: the nodes fsync for real, and on a
        // disk that is most of a run's wall time (not of its simulated time).
        // The runtime first: it seeds std's hash keys for this thread, which only works before
        // anything on the thread made a `HashMap` (the temp dir's name generator does).
        let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        let dir = dir.expect("tempdir");
        let path = dir.path().to_path_buf();
        rt.block_on(scenario(path))
    })
    .join()
    .expect("simulation thread")
}

/// The seed to run: `BLIXARD_SIM_SEED`, default 1.
pub fn seed() -> u64 {
    std::env::var("BLIXARD_SIM_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}
