//! `blixard node`: run the daemon until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use blixard_node::{Node, NodeConfig};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum VmBackend {
    Qemu,
    MicrovmNix,
}

/// `blixard node`: with daemon flags, run a node; with a subcommand, ask the cluster about nodes.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodeTop {
    #[command(subcommand)]
    pub cmd: Option<super::nodes::NodeCmd>,
    #[command(flatten)]
    pub daemon: Option<NodeArgs>,
}

#[derive(clap::Args)]
pub struct NodeArgs {
    /// A TOML file with any of these settings (see deploy/node.example.toml); flags and
    /// BLIXARD_<SECTION>_<KEY> environment variables win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// This node's id: a positive integer, unique in the cluster, fixed for its data dir.
    #[arg(long)]
    pub id: Option<u64>,
    /// Address to serve the API and peer traffic on.
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub bind: String,
    /// Where the Raft log and state live. Created when missing; never wiped.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address other nodes and clients use to reach this one: HOST:PORT (default: the bound
    /// address).
    #[arg(long, value_parser = crate::addr::endpoint)]
    pub advertise: Option<String>,
    /// Join the cluster that a node at this address (HOST:PORT) belongs to (used only when the
    /// data dir is new; a node restarting from its data dir rejoins by itself).
    #[arg(long, value_name = "SEED_ADDR", value_parser = crate::addr::endpoint)]
    pub join: Option<String>,
    /// Checkpoint the state machine (a durable redb commit) and compact the Raft log once the
    /// log holds this many applied entries. With small entries --snapshot-mib comes first: a
    /// checkpoint rewrites every B-tree page written to since the last one (~150 ms here with
    /// writes spread over 100,000 keys), so they are kept rare; a restart replays at most the
    /// log since the last one (~0.9 s for 400,000 entries here).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub snapshot_entries: u64,
    /// ...or once this many MiB were appended since the last compaction.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_mib: u64,
    /// Applied entries kept in the log after a compaction (for briefly lagging followers).
    #[arg(long, default_value_t = 1_000)]
    pub keep_entries: u64,
    /// Raft tick, in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub tick_ms: u64,
    /// Election timeout in ticks (randomized in [n, 2n)).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=1000))]
    pub election_ticks: u64,
    /// Heartbeat interval in ticks; must be less than --election-ticks.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub heartbeat_ticks: u64,
    /// After a busy Raft turn, poll this many microseconds for the next message before the Raft
    /// thread sleeps (0: never). Spends at most that CPU per busy turn; on virtual machines,
    /// where waking a sleeping thread is slow, it cuts write latency by ~0.1 ms.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub idle_spin_us: u64,
    /// A request that is the only one in flight on this node polls this many microseconds for
    /// its answer before its task sleeps (0: never); the same trade as --idle-spin-us, on the
    /// API side.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub reply_spin_us: u64,
    /// Group commit: a busy leader (its last log write held 8 entries or more) waits up to this
    /// many microseconds for more client writes before it writes and syncs its log, so each
    /// write (and each follower's) carries more entries (0: never).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub group_commit_us: u64,
    /// Schedulable vCPUs per host core.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub vcpu_overcommit: u32,
    /// Host memory kept back from VMs, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub reserve_memory_mib: u64,
    /// Schedulable memory in MiB, at least 1 (default: host memory less the reserve).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub memory_mib: Option<u64>,
    /// How this node runs VMs.
    #[arg(long, value_enum, default_value_t = VmBackend::Qemu)]
    pub vm_backend: VmBackend,
    /// Where the guest image is built and cached (shared by nodes on one host; env
    /// BLIXARD_VM_IMAGE_CACHE or BLIXARD_IMAGE_CACHE).
    // Not clap's `env`: an argument set from the environment would count as given and turn
    // `blixard node list` into a daemon invocation missing its --id.
    #[arg(long)]
    pub image_cache: Option<PathBuf>,
    /// Give every VM a second NIC on this host bridge (a tap device; needs root). The guest
    /// asks for a DHCP lease on it and prints `BLIXARD-NET ethN ADDR` on its console.
    #[arg(long, value_name = "BRIDGE")]
    pub vm_bridge: Option<String>,
    /// A label KEY=VALUE of this node, for VM constraints and spreading (repeatable).
    #[arg(long = "label", value_parser = super::vm_args::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Schedulable disk for VM disks, in GiB (default: the data dir's free space).
    #[arg(long)]
    pub disk_gib: Option<u64>,
    /// How often this node heartbeats the leader, in ms.
    #[arg(long, default_value_t = blixard_node::liveness::DEFAULT_HEARTBEAT_MS, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub heartbeat_ms: u64,
    /// A node that cannot renew its lease with the leader for this long kills its VMs (ms).
    #[arg(long, default_value_t = blixard_node::liveness::DEFAULT_FENCE_AFTER_MS, value_parser = clap::value_parser!(u64).range(20..=600_000))]
    pub fence_after_ms: u64,
    /// The leader declares a node down (and moves its VMs) after this long without a heartbeat
    /// (ms); at least 500 ms more than --fence-after-ms.
    #[arg(long, default_value_t = blixard_node::liveness::DEFAULT_DOWN_AFTER_MS, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub down_after_ms: u64,
    /// Serve plaintext (no --tls-dir) on an address other than loopback: anyone who can reach
    /// the port can then act as a peer or a client.
    #[arg(long)]
    pub insecure: bool,
    /// Largest Raft snapshot this node receives, in MiB (spooled to the data dir as it
    /// arrives; a larger stream is cut and refused).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_snapshot_mib: u64,
    /// Open connections from one source address at once; more are closed at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_conns_per_ip: u64,
    /// A new connection that does not show what it is (a client's first byte, a peer's whole
    /// preamble) within this many ms is closed.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub handshake_timeout_ms: u64,
    /// A peer connection without a frame for this many ms is closed (its sender reconnects).
    #[arg(long, default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub peer_idle_timeout_ms: u64,
    /// A directory whose files VM specs may name as --kernel, --initrd or --rootfs, besides
    /// the image cache (repeatable). /proc, /sys and /dev are never allowed.
    #[arg(long = "allow-image-dir", value_name = "DIR")]
    pub allow_image_dirs: Vec<PathBuf>,
    /// Enforce roles: every request needs a token (--token / BLIXARD_TOKEN) or a client
    /// certificate with a role. A new cluster's first admin token is written to
    /// <data-dir>/admin.token. See SECURITY.md.
    #[arg(long)]
    pub auth: bool,
    /// Requests per second per caller (token, client certificate or source address); 0: no
    /// limit.
    #[arg(long, default_value_t = 200_000)]
    pub rate_requests: u64,
    /// Bytes of mutating requests per second per caller; 0: no limit.
    #[arg(long, default_value_t = 1 << 30)]
    pub rate_write_bytes: u64,
    /// Requests served at once by this node, all callers together; 0: no cap.
    #[arg(long, default_value_t = 8192)]
    pub max_concurrent: usize,
    /// The audit log (one JSON line per mutating request): a file, or `off`. Default:
    /// <data-dir>/audit.log (rotated at 64 MiB, the previous file kept as audit.log.1).
    #[arg(long, value_name = "PATH|off")]
    pub audit_log: Option<String>,
    /// Log filter (tracing's EnvFilter syntax); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log: String,
    /// Log line format on stderr: text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = super::node_ops::LogFormat::Text)]
    pub log_format: super::node_ops::LogFormat,
    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on this address, HOST:PORT
    /// (e.g. 127.0.0.1:7101; default: not served). It has no authentication: keep it on
    /// loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    pub http_bind: Option<String>,
    /// Collect metrics: on, or off (no request, proposal or log write timed or counted;
    /// /metrics answers 404). Off exists to measure what metrics cost.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    pub metrics: String,
}

pub async fn run(a: NodeArgs) -> anyhow::Result<()> {
    super::node_ops::init_logging(a.log_format, &a.log)?;
    if a.heartbeat_ticks >= a.election_ticks {
        anyhow::bail!(
            "invalid --heartbeat-ticks: must be less than --election-ticks ({} >= {})",
            a.heartbeat_ticks,
            a.election_ticks
        );
    }
    let tls_dir = super::cert::plaintext_check(&a.bind, a.insecure)?;
    let listener = tokio::net::TcpListener::bind(&a.bind).await.with_context(|| format!("cannot bind {}", a.bind))?;
    let http = super::node_ops::bind_http(a.http_bind.as_deref()).await?;
    let (Some(id), Some(data_dir)) = (a.id, a.data_dir) else {
        anyhow::bail!("blixard node needs --id and --data-dir (or a --config file setting them)");
    };
    let mut cfg = NodeConfig::new(id, data_dir);
    cfg.advertise = a.advertise;
    cfg.join = a.join;
    cfg.tls_dir = tls_dir;
    cfg.vcpu_overcommit = a.vcpu_overcommit;
    cfg.reserve_memory_mib = a.reserve_memory_mib;
    cfg.memory_mib = a.memory_mib;
    cfg.image_cache = a.image_cache; // BLIXARD_IMAGE_CACHE is read by crate::config::node
    cfg.vm_bridge = a.vm_bridge;
    cfg.vm_backend = match a.vm_backend {
        VmBackend::Qemu => blixard_node::backend::Backend::Qemu,
        VmBackend::MicrovmNix => blixard_node::backend::Backend::MicrovmNix,
    };
    cfg.compact_entries = a.snapshot_entries;
    cfg.compact_bytes = a.snapshot_mib * 1024 * 1024;
    cfg.keep_entries = a.keep_entries.min(a.snapshot_entries.saturating_sub(1));
    cfg.tick = Duration::from_millis(a.tick_ms);
    cfg.election_ticks = a.election_ticks as usize;
    cfg.heartbeat_ticks = a.heartbeat_ticks as usize;
    cfg.idle_spin = Duration::from_micros(a.idle_spin_us);
    cfg.reply_spin = Duration::from_micros(a.reply_spin_us);
    cfg.group_commit = Duration::from_micros(a.group_commit_us);
    cfg.metrics = a.metrics == "on";
    cfg.labels = a.labels.into_iter().collect();
    if let Err(e) = blixard_core::spec::validate_labels(&cfg.labels) {
        anyhow::bail!("invalid --label: {}", e.rule);
    }
    cfg.disk_gib = a.disk_gib;
    cfg.watchdog_exe = std::env::current_exe().ok();
    cfg.allow_image_dirs = a.allow_image_dirs;
    cfg.auth = blixard_node::auth::AuthConfig {
        enforce: a.auth,
        rates: blixard_node::auth::limits::Rates {
            requests_per_s: a.rate_requests,
            write_bytes_per_s: a.rate_write_bytes,
            max_concurrent: a.max_concurrent,
        },
        audit_off: a.audit_log.as_deref() == Some("off"),
        audit_log: a.audit_log.as_deref().filter(|p| *p != "off").map(PathBuf::from),
    };
    cfg.token = crate::client::TOKEN.get().cloned().flatten();
    cfg.limits = blixard_node::transport::Limits {
        max_snapshot_bytes: a.max_snapshot_mib.saturating_mul(1024 * 1024),
        max_conns_per_ip: a.max_conns_per_ip as usize,
        handshake_timeout: Duration::from_millis(a.handshake_timeout_ms),
        idle_timeout: Duration::from_millis(a.peer_idle_timeout_ms),
    };
    cfg.liveness = blixard_node::liveness::Timing {
        heartbeat: Duration::from_millis(a.heartbeat_ms),
        fence_after: Duration::from_millis(a.fence_after_ms),
        down_after: Duration::from_millis(a.down_after_ms),
    };
    cfg.liveness.validate().map_err(|e| anyhow::anyhow!("invalid liveness timing: {e}"))?;
    let mut node = Node::start(cfg, listener).await.map_err(|e| anyhow::anyhow!(blixard_node::status::chain(&e)))?;
    let http = super::node_ops::serve(http, node.ops.clone());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install a SIGTERM handler")?;
    let failed = tokio::select! {
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
        r = node.wait_driver() => Some(r),
    };
    match failed {
        None => {
            tracing::info!("shutting down");
            super::node_ops::stopping(&http);
            node.shutdown().await;
            Ok(())
        }
        Some(Ok(())) => Ok(()),
        Some(Err(e)) => anyhow::bail!("node stopped: {e}"),
    }
}
