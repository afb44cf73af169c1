//! The Blixard daemon: opens the data dir, runs the Raft driver, serves the gRPC API.
//!
//! [`Node::start`] takes an already-bound listener and [`Node::shutdown`] stops it cleanly, so
//! tests bind `127.0.0.1:0` and never race for ports.

pub mod api;
pub mod auth;
pub mod backend;
pub mod backup;
pub mod datadir;
pub mod drainer;
pub mod health;
pub mod http;
pub mod internal;
pub mod liveness;
pub mod metrics;
pub mod nodes_api;
pub mod pool;
pub mod reconciler;
pub mod request_id;
pub mod sd_notify;
pub mod status;
pub mod tasks;
pub mod tasks_api;
#[cfg(not(madsim))]
pub mod tls;
pub mod tokens_api;
pub mod transport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::driver::Driver;
use blixard_consensus::{Bootstrap, Handle, RaftConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How a node is started (`blixard node ...`).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// The address peers and clients reach this node at. Defaults to the bound address.
    pub advertise: Option<String>,
    /// A member's address to join through, when the data dir is new.
    pub join: Option<String>,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub compact_entries: u64,
    pub compact_bytes: u64,
    pub keep_entries: u64,
    /// See [`RaftConfig::idle_spin`].
    pub idle_spin: Duration,
    /// See [`RaftConfig::reply_spin`].
    pub reply_spin: Duration,
    /// See [`RaftConfig::group_commit`].
    pub group_commit: Duration,
    /// Collect metrics (`--metrics on`, the default); off, no request, proposal or log write is
    /// timed or counted and `/metrics` answers 404 (what the overhead benchmark compares with).
    pub metrics: bool,
    /// Schedulable vCPUs per host core.
    pub vcpu_overcommit: u32,
    /// Host memory kept back from VMs, in MiB.
    pub reserve_memory_mib: u64,
    /// Schedulable memory in MiB, instead of host memory less the reserve.
    pub memory_mib: Option<u64>,
    pub vm_backend: backend::Backend,
    /// Where the guest image is built and cached (default: `<data-dir>/images`).
    pub image_cache: Option<PathBuf>,
    /// A host bridge to give every VM a second NIC on (a tap device; needs root).
    pub vm_bridge: Option<String>,
    /// This node's labels (for VM constraints and spreading).
    pub labels: std::collections::BTreeMap<String, String>,
    /// Schedulable disk for VMs in GiB, instead of the data dir's free space.
    pub disk_gib: Option<u64>,
    /// Heartbeats, fencing and the down timeout (see [`liveness`]).
    pub liveness: liveness::Timing,
    /// Mutual TLS on the node's port and to its peers: `ca.pem`, `node.pem`, `node-key.pem`.
    pub tls_dir: Option<PathBuf>,
    /// The `blixard` binary, to start the fencing watchdog with (`fence-watch`); `None`: no
    /// watchdog (in-process nodes of tests and benchmarks).
    pub watchdog_exe: Option<PathBuf>,
    /// Connections, handshakes, idle peers and snapshot sizes (see [`transport::limits`]).
    pub limits: transport::Limits,
    /// Directories whose files VM specs may name as kernel, initrd or rootfs, besides the
    /// image cache (see `blixard_vmm::host_files`).
    pub allow_image_dirs: Vec<PathBuf>,
    /// A VM driver to use instead of opening `vm_backend` (the simulation's recording fake).
    pub vm_driver: Option<backend::Injected>,
    /// A task executor to use instead of real processes (the simulation's recording fake).
    pub task_executor: Option<tasks::exec::Injected>,
    /// Roles and tokens, rate limits and the concurrency cap (see [`auth`]).
    pub auth: auth::AuthConfig,
    /// The token this node presents when it joins a cluster that enforces roles (plaintext
    /// ports; with mTLS the node certificate is enough).
    pub token: Option<String>,
    /// Where the state store and the log live: the real file system, or (the simulation) a
    /// simulated disk that loses unsynced writes when its host crashes.
    pub disk: blixard_consensus::wal::Disk,
}

impl NodeConfig {
    pub fn new(id: u64, data_dir: impl Into<PathBuf>) -> Self {
        let d = RaftConfig::new(id);
        NodeConfig {
            id,
            data_dir: data_dir.into(),
            advertise: None,
            join: None,
            tick: d.tick,
            election_ticks: d.election_ticks,
            heartbeat_ticks: d.heartbeat_ticks,
            compact_entries: d.compact_entries,
            compact_bytes: d.compact_bytes,
            keep_entries: d.keep_entries,
            idle_spin: d.idle_spin,
            reply_spin: d.reply_spin,
            group_commit: d.group_commit,
            metrics: true,
            vcpu_overcommit: 4,
            reserve_memory_mib: 1024,
            memory_mib: None,
            vm_backend: backend::Backend::Qemu,
            image_cache: None,
            vm_bridge: None,
            labels: Default::default(),
            disk_gib: None,
            liveness: liveness::Timing::default(),
            tls_dir: None,
            watchdog_exe: None,
            limits: transport::Limits::default(),
            allow_image_dirs: Vec::new(),
            vm_driver: None,
            task_executor: None,
            auth: Default::default(),
            token: None,
            disk: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid --id: must be a positive integer (got 0)")]
    ZeroId,
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error("cannot join the cluster through {seed}: {reason}")]
    Join { seed: String, reason: String },
    #[error("{0}")]
    Tls(String),
    #[error("cannot open the audit log {path}: {source}")]
    Audit {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve on {addr}")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Asks the cluster (through any member) to add this node, retrying while it elects a leader.
async fn join(pool: &pool::ChannelPool, seed: &str, id: u64, addr: &str, token: Option<&str>) -> Result<(), NodeError> {
    use blixard_proto::v1::{cluster_service_client::ClusterServiceClient, JoinRequest};
    let fail = |reason: String| NodeError::Join { seed: seed.to_string(), reason };
    let ch = pool.get(seed).map_err(|s| fail(s.message().to_string()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut req = tonic::Request::new(JoinRequest { node_id: id, addr: addr.to_string() });
        if let Some(v) = token.and_then(|t| format!("Bearer {t}").parse().ok()) {
            req.metadata_mut().insert("authorization", v);
        }
        match ClusterServiceClient::new(ch.clone()).join(req).await {
            Ok(r) => {
                tracing::info!(index = r.into_inner().index, "joined as a learner; waiting to catch up");
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < deadline => {
                tracing::debug!("join not accepted yet: {}", s.message());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(s) => return Err(fail(s.message().to_string())),
        }
    }
}

/// Real processes, held to their resources as well as this host allows (cgroups when it can).
/// `--isolation vm` tasks run in throwaway microVMs booted from the image `cache`'s default guest.
#[cfg(not(madsim))]
fn default_task_executor(cache: &std::path::Path) -> Option<Arc<dyn tasks::exec::Executor>> {
    let plan = tasks::limits::detect();
    tracing::info!("task resource enforcement: {}", plan.describe());
    Some(Arc::new(tasks::vm::ByIsolation {
        process: Arc::new(tasks::exec::ProcessExecutor { limits: plan, ..Default::default() }),
        vm: Arc::new(tasks::vm::VmExecutor::new(cache.to_path_buf())),
    }))
}

/// Under simulation tasks run only with an injected executor.
#[cfg(madsim)]
fn default_task_executor(_cache: &std::path::Path) -> Option<Arc<dyn tasks::exec::Executor>> {
    None
}

/// Opens the VM backend, registers this node's capacity (only a node that can run VMs offers
/// any), then reconciles its VMs for as long as the node runs.
async fn run_vms(
    cfg: NodeConfig,
    raft: Handle,
    slot: Arc<std::sync::OnceLock<Arc<dyn blixard_vmm::VmDriver>>>,
    lease: Arc<liveness::lease::Lease>,
    ops: Arc<http::Ops>,
) {
    let (backend_state, work) = (&ops.backend, ops.metrics.work.clone());
    let (vm_dir, default_cache) = backend::default_dirs(&cfg.data_dir);
    let cache = cfg.image_cache.clone().unwrap_or(default_cache);
    if let Some(exec) = cfg.task_executor.clone().map(|i| i.0).or_else(|| default_task_executor(&cache)) {
        tokio::spawn(
            tasks::Runner::new(cfg.id, raft.clone(), lease.clone(), exec, cfg.data_dir.join("tasks"))
                .with_work(work.clone())
                .run(),
        );
    }
    let files = blixard_vmm::host_files::HostFiles::new(cache.clone(), cfg.allow_image_dirs.clone());
    let opened = match cfg.vm_driver.clone() {
        Some(injected) => Ok(backend::Opened { driver: injected.driver, accel: injected.accel }),
        None => backend::open(cfg.vm_backend, vm_dir, cache, cfg.vm_bridge.clone(), files).await,
    };
    let opened = match opened {
        Ok(o) => o,
        Err(e) => {
            tracing::error!("VM backend {} unavailable; this node will not host VMs: {e}", cfg.vm_backend.as_str());
            backend_state.failed(format!("{}: {e}", cfg.vm_backend.as_str()));
            return;
        }
    };
    let (vcpus, memory_mib) = internal::host_capacity(cfg.vcpu_overcommit, cfg.reserve_memory_mib, cfg.memory_mib);
    let registration = blixard_core::Registration {
        id: cfg.id,
        vcpus,
        memory_mib,
        disk_gib: cfg.disk_gib.unwrap_or_else(|| internal::free_disk_gib(&cfg.data_dir)),
        accel: opened.accel.clone(),
        backend: cfg.vm_backend.as_str().into(),
        labels: cfg.labels.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    };
    let _ = slot.set(opened.driver.clone());
    backend_state.opened();
    tokio::spawn(liveness::fence::run(lease.clone(), opened.driver.clone(), cfg.data_dir.clone()));
    #[cfg(not(madsim))]
    if let Some(exe) = &cfg.watchdog_exe {
        if let Err(e) = liveness::watchdog::spawn(exe, &cfg.data_dir) {
            tracing::error!("cannot start the fencing watchdog ({}): {e}", exe.display());
        }
    }
    register(raft.clone(), registration).await;
    reconciler::Reconciler::new(cfg.id, raft, opened.driver, opened.accel, lease).with_work(work).run().await;
}

/// The address of member `id`, from the replicated member table.
pub fn members_addr(raft: &Handle, id: u64) -> Option<String> {
    let view = blixard_consensus::sm::ReadView::begin(raft.db()).ok()?;
    blixard_core::state::members(&view).ok()?.into_iter().find(|m| m.id == id).map(|m| m.addr)
}

/// Records this node's capacity in the replicated state (retrying until the cluster has a
/// leader that accepts it), so the scheduler can place VMs here.
async fn register(raft: Handle, r: blixard_core::Registration) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let cmd = blixard_core::Command::NodeRegister { node: r.clone() };
        match internal::propose(&raft, cmd).await {
            Ok((_, Ok(_))) => {
                tracing::info!(vcpus = r.vcpus, memory_mib = r.memory_mib, "registered capacity");
                return;
            }
            // A joining node registers before its membership is applied: it retries.
            Ok((_, Err(e))) => tracing::debug!("capacity registration refused for now: {e}"),
            Err(s) => tracing::debug!("capacity registration not accepted yet: {:?} {}", s.code(), s.message()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Accepts connections on the node's port until shut down: a peer connection (its first byte is
/// the transport's magic) is served by the transport, anything else is handed to gRPC. The
/// first byte is awaited in a task of its own, so a silent client holds up nobody.
#[cfg(not(madsim))]
async fn accept(
    listener: TcpListener,
    transport: Arc<transport::PeerTransport>,
    grpc: tokio::sync::mpsc::Sender<std::io::Result<transport::limits::Counted<tls::Io>>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    tls: Option<Arc<tls::NodeTls>>,
) {
    loop {
        let s = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (s, slot) = match s {
            Ok((s, from)) => match transport.admit(from.ip()) {
                Some(slot) => (s, slot),
                None => continue, // too many from there: closed at once
            },
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small answers must not wait for the client's delayed ACK (Nagle): that stalled ~1 %
        // of writes by 40 ms.
        let _ = s.set_nodelay(true);
        let (transport, grpc, mut stop) = (transport.clone(), grpc.clone(), stop.clone());
        if let Some(t) = &tls {
            let route = tls::route(s, slot, t.clone(), transport, grpc);
            tokio::spawn(async move {
                tokio::select! {
                    _ = route => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            });
            continue;
        }
        tokio::spawn(async move {
            let _slot = slot; // held while the connection is open, whoever serves it (gRPC: below)
            let mut first = [0u8; 1];
            let peeked = tokio::select! {
                r = tokio::time::timeout(transport.limits().handshake_timeout, s.peek(&mut first)) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match peeked {
                Ok(Ok(1)) if first[0] == transport::wire::MAGIC[0] => {
                    tokio::select! {
                        _ = transport.serve_peer(s) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                }
                Ok(Ok(1)) => {
                    let _ = grpc.send(Ok(transport::limits::Counted::new(s.into(), _slot))).await;
                }
                _ => {} // closed, failed or silent: drop it
            }
        });
    }
}

/// Under simulation: every connection on the simulated TCP port is a peer's.
#[cfg(madsim)]
async fn accept_peers(
    listener: tokio::net::TcpListener,
    transport: Arc<transport::PeerTransport>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let s = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        if let Ok((s, _)) = s {
            tokio::spawn(transport.clone().serve_peer(s));
        }
    }
}

/// Runs the Ready loop on a thread of its own (with its own single-threaded runtime): its
/// `fdatasync`s block that thread only, never a worker of the node's runtime, and the loop is
/// never moved between threads. Under simulation it is an ordinary task. The result arrives on
/// the returned channel.
fn spawn_driver<T: blixard_consensus::Transport>(
    driver: Driver<T>,
) -> oneshot::Receiver<Result<(), blixard_consensus::StorageError>> {
    let (tx, rx) = oneshot::channel();
    let run = async move {
        let r = driver.run().await;
        if let Err(e) = &r {
            tracing::error!("raft driver stopped: {}", status::chain(e));
        }
        let _ = tx.send(r);
    };
    #[cfg(not(madsim))]
    {
        let started = std::thread::Builder::new().name("raft".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(run),
                Err(e) => tracing::error!("cannot start the raft thread's runtime: {e}"),
            }
        });
        if let Err(e) = started {
            tracing::error!("cannot start the raft thread: {e}");
        }
    }
    #[cfg(madsim)]
    tokio::spawn(run);
    rx
}

/// A running node.
pub struct Node {
    pub addr: SocketAddr,
    pub raft: Handle,
    /// What the operator's HTTP endpoint serves (see [`http::serve`]).
    pub ops: Arc<http::Ops>,
    stop_server: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    driver: oneshot::Receiver<Result<(), blixard_consensus::StorageError>>,
}

impl Node {
    /// Opens (or bootstraps) the data dir and starts serving on `listener`.
    pub async fn start(cfg: NodeConfig, listener: TcpListener) -> Result<Node, NodeError> {
        if cfg.id == 0 {
            return Err(NodeError::ZeroId);
        }
        let addr =
            listener.local_addr().map_err(|source| NodeError::Serve { addr: ([0, 0, 0, 0], 0).into(), source })?;
        let advertise = cfg.advertise.clone().unwrap_or_else(|| addr.to_string());
        // Certificates first: a node that cannot serve must not have claimed its data dir.
        #[cfg(not(madsim))]
        let tls = match &cfg.tls_dir {
            Some(dir) => Some(tls::open(dir, cfg.id).map_err(NodeError::Tls)?),
            None => None,
        };
        let mut storage = datadir::open_on(&cfg.data_dir, cfg.id, &cfg.disk)?;
        let storage_err = |e| datadir::DataDirError::Storage { dir: cfg.data_dir.clone(), source: e };
        let mut joining = None;
        let mut fresh = false;
        if storage.is_initialized() {
            tracing::info!(id = cfg.id, "restarting from {}", cfg.data_dir.display());
        } else if let Some(seed) = &cfg.join {
            tracing::info!(id = cfg.id, %advertise, %seed, "joining an existing cluster");
            storage.claim(cfg.id).map_err(storage_err)?;
            joining = Some(seed.clone());
        } else {
            tracing::info!(id = cfg.id, %advertise, "bootstrapping a new one-node cluster");
            storage.bootstrap(&Bootstrap { id: cfg.id, addr: advertise.clone() }).map_err(storage_err)?;
            fresh = true;
        }
        let rc = RaftConfig {
            tick: cfg.tick,
            election_ticks: cfg.election_ticks,
            heartbeat_ticks: cfg.heartbeat_ticks,
            compact_entries: cfg.compact_entries,
            compact_bytes: cfg.compact_bytes,
            keep_entries: cfg.keep_entries,
            idle_spin: cfg.idle_spin,
            reply_spin: cfg.reply_spin,
            group_commit: cfg.group_commit,
            ..RaftConfig::new(cfg.id)
        };
        let pool = Arc::new(pool::ChannelPool::default());
        let transport = transport::PeerTransport::new(cfg.id, advertise.clone(), storage.db().clone(), pool.clone());
        #[cfg(not(madsim))]
        if let Some(t) = &tls {
            pool.set_tls(t.clone());
            transport.set_tls(t.clone());
        }
        transport.configure(cfg.limits.clone(), cfg.data_dir.join("snapshot-in"));
        let (driver, raft) =
            Driver::new(rc, storage, Arc::new(transport::SharedTransport(transport.clone()))).map_err(storage_err)?;
        transport.set_handle(raft.clone());
        let driver = spawn_driver(driver);
        let metrics = metrics::Metrics::new(cfg.id, raft.clone(), transport.clone(), cfg.metrics);
        let ops = Arc::new(http::Ops { raft: raft.clone(), metrics: metrics.clone(), backend: Default::default() });

        let (stop_server, stopped) = oneshot::channel::<()>();
        let driver_slot = Arc::new(std::sync::OnceLock::new());
        let svc = api::Api::new(raft.clone(), pool.clone(), driver_slot.clone());
        let monitor = Arc::new(liveness::monitor::Monitor::new(cfg.liveness));
        let lease = liveness::lease::Lease::new(cfg.liveness);
        let nodes_svc = nodes_api::Nodes { api: svc.clone(), raft: raft.clone(), monitor: monitor.clone() };
        use blixard_proto::v1::*;
        // Client-facing services agree with their clients on one message size limit.
        let max = blixard_proto::MAX_MESSAGE_BYTES;
        #[cfg(not(madsim))]
        let auth_layer = {
            let sink = match (&cfg.auth.audit_off, &cfg.auth.audit_log) {
                (true, _) => auth::audit::Sink::Off,
                (false, Some(p)) => auth::audit::Sink::File(p.clone()),
                (false, None) => auth::audit::Sink::File(cfg.data_dir.join("audit.log")),
            };
            let audit = auth::audit::AuditLog::open(&sink).map_err(|source| NodeError::Audit {
                path: match &sink {
                    auth::audit::Sink::File(p) => p.clone(),
                    auth::audit::Sink::Off => Default::default(),
                },
                source,
            })?;
            auth::layer::AuthLayer(auth::layer::Auth::new(cfg.auth.clone(), raft.clone(), tls.is_some(), audit))
        };
        #[cfg(madsim)]
        let auth_layer = ();
        let tokens_svc = tokens_api::Tokens { api: svc.clone() };
        let router = tonic::transport::Server::builder()
            .layer(metrics::api::ApiLayer(metrics))
            .layer(request_id::RequestIdLayer)
            .layer(auth_layer)
            .add_service(
                cluster_service_server::ClusterServiceServer::new(svc.clone())
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                kv_service_server::KvServiceServer::new(svc.clone())
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                vm_service_server::VmServiceServer::new(svc.clone())
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
            )
            .add_service(
                task_service_server::TaskServiceServer::new(tasks_api::Tasks {
                    api: svc.clone(),
                    dir: cfg.data_dir.join("tasks"),
                })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
            )
            .add_service(backup_service_server::BackupServiceServer::new(backup::Backups { raft: raft.clone() }))
            .add_service(node_service_server::NodeServiceServer::new(nodes_svc))
            .add_service(token_service_server::TokenServiceServer::new(tokens_svc))
            .add_service(
                raft_transport_server::RaftTransportServer::new(transport::SnapshotService {
                    handle: raft.clone(),
                    transport: transport.clone(),
                })
                .max_decoding_message_size(transport::MAX_MESSAGE),
            );
        let (stop_accept, accept_stopped) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let _ = stopped.await;
            let _ = stop_accept.send(true);
        };
        #[cfg(not(madsim))]
        let server = {
            // One port: peer connections go to the transport, the rest to gRPC.
            let (grpc, incoming) = tokio::sync::mpsc::channel(64);
            tokio::spawn(accept(listener, transport.clone(), grpc, accept_stopped, tls));
            tokio::spawn(
                router.serve_with_incoming_shutdown(tokio_stream::wrappers::ReceiverStream::new(incoming), shutdown),
            )
        };
        // The simulator's tonic serves by address; peer connections use simulated TCP on it.
        #[cfg(madsim)]
        let server = {
            drop(listener);
            let peers =
                tokio::net::TcpListener::bind(addr).await.map_err(|source| NodeError::Serve { addr, source })?;
            tokio::spawn(accept_peers(peers, transport.clone(), accept_stopped));
            tokio::spawn(router.serve_with_shutdown(addr, shutdown))
        };
        if let Some(seed) = joining {
            join(&pool, &seed, cfg.id, &advertise, cfg.token.as_deref()).await?;
        }
        #[cfg(not(madsim))]
        if fresh && cfg.auth.enforce {
            let secret = auth::secret::generate();
            let hash = auth::secret::hash(&secret);
            tokio::spawn(tokens_api::first_admin(raft.clone(), cfg.data_dir.clone(), secret, hash));
        }
        let _ = fresh;
        {
            let (m, r) = (monitor.clone(), raft.clone());
            tokio::spawn(async move { m.run(r).await });
        }
        tokio::spawn(drainer::run(raft.clone()));
        tokio::spawn(liveness::lease::heartbeat(cfg.id, raft.clone(), pool.clone(), monitor, lease.clone()));
        tokio::spawn(run_vms(cfg.clone(), raft.clone(), driver_slot, lease, ops.clone()));
        tracing::info!(id = cfg.id, %addr, "serving");
        Ok(Node { addr, raft, ops, stop_server: Some(stop_server), server, driver })
    }

    /// Resolves if the driver stops on its own (a storage failure): the node must exit.
    pub async fn wait_driver(&mut self) -> Result<(), String> {
        match (&mut self.driver).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(status::chain(&e)),
            Err(_) => Err("the raft driver ended without a result (it panicked)".to_string()),
        }
    }

    /// Stops serving, then stops the driver after its current turn (everything acknowledged is
    /// already durable).
    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop_server.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.server).await;
        self.raft.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.driver).await;
    }
}
