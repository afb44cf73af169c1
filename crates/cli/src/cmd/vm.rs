use std::collections::BTreeMap;

use blixard_core::quoted;
use blixard_proto::v1::vm_service_client::VmServiceClient;
use blixard_proto::v1::{
    self, CreateVmRequest, DeleteVmRequest, GetVmRequest, ListVmsRequest, ReadOptions, VmNameRequest,
};
use serde::Serialize;

use crate::client::{connect, Conn};
use crate::output::{emit, Table};
use crate::page::{Pager, Printer};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum VmCmd {
    /// Record a new VM (desired state).
    Create(Box<CreateArgs>),
    /// Show one VM.
    Get {
        name: String,
        #[arg(long)]
        stale: bool,
    },
    /// List VMs by name (fetched and printed page by page).
    List {
        /// At most this many VMs.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// Start after this name (exclusive), e.g. the `next` of an earlier listing.
        #[arg(long, value_name = "NAME")]
        start_after: Option<String>,
        #[arg(long)]
        stale: bool,
    },
    /// Delete a VM (its node stops it and removes its files).
    Delete { name: String },
    /// Set the VM's desired state to running.
    Start { name: String },
    /// Set the VM's desired state to stopped.
    Stop { name: String },
    /// Restart a running VM once.
    Restart { name: String },
    /// Print the VM's serial console output (from whichever node hosts it).
    Logs {
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
    },
    /// Attach to the VM's serial console (line by line; Ctrl-D leaves).
    Console { name: String },
    /// Wait until the VM's observed phase is STATE (exit 1 on timeout or if it fails).
    Wait {
        name: String,
        /// pending | starting | running | stopping | stopped | failed
        #[arg(long, default_value = "running")]
        state: String,
        /// How long to wait, e.g. 60s, 2m, 500ms.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: std::time::Duration,
    },
}

/// Parses `500ms`, `60s`, `2m`.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("expected a duration like 60s, got {}", quoted(s)))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {} (use ms, s or m)", quoted(s))),
    }
}

const PHASES: [&str; 6] = ["pending", "starting", "running", "stopping", "stopped", "failed"];

#[derive(clap::Args)]
pub struct CreateArgs {
    /// DNS label: [a-z0-9-], 1–63 chars, starting with a letter.
    pub name: String,
    /// Virtual CPUs (1–32).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory in MiB (64–65536).
    #[arg(long = "memory", default_value_t = 128)]
    pub memory_mib: u32,
    /// Size of a per-VM disk, in GiB (1–1024).
    #[arg(long)]
    pub disk_gib: Option<u32>,
    /// Kernel image reference.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Initrd image reference.
    #[arg(long)]
    pub initrd: Option<String>,
    /// Root filesystem base image reference.
    #[arg(long)]
    pub rootfs: Option<String>,
    /// Extra kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Forward a host TCP port to a guest port: HOST:GUEST (repeatable).
    #[arg(long = "port", value_parser = parse_port)]
    pub ports: Vec<(u32, u32)>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// never | on-failure | always.
    #[arg(long = "restart", default_value = "on-failure")]
    pub restart_policy: String,
    /// HTTP health check: GUESTPORT/PATH (the guest port must be forwarded with --port).
    #[arg(long, value_name = "PORT/PATH", conflicts_with = "health_tcp")]
    pub health_http: Option<String>,
    /// TCP health check on a forwarded guest port.
    #[arg(long, value_name = "PORT")]
    pub health_tcp: Option<u32>,
    /// Time between health checks.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub health_interval: std::time::Duration,
    /// Failed checks in a row that make the VM unhealthy (it is then restarted per --restart).
    #[arg(long, default_value_t = 3)]
    pub health_threshold: u32,
    /// Place the VM on this node (default: the scheduler picks one).
    #[arg(long)]
    pub node: Option<u64>,
    /// Start it right away (default: created stopped).
    #[arg(long)]
    pub start: bool,
}

fn parse_port(s: &str) -> Result<(u32, u32), String> {
    let (h, g) = s.split_once(':').ok_or_else(|| format!("expected HOST:GUEST, got {}", quoted(s)))?;
    let p = |x: &str| x.parse::<u32>().map_err(|_| format!("{} is not a port number", quoted(x)));
    Ok((p(h)?, p(g)?))
}

fn health_arg(a: &CreateArgs) -> anyhow::Result<Option<v1::HealthCheck>> {
    let interval_ms = u32::try_from(a.health_interval.as_millis()).unwrap_or(u32::MAX);
    let (kind, port, path) = match (&a.health_http, a.health_tcp) {
        (Some(spec), _) => {
            let (port, path) = spec.split_once('/').unwrap_or((spec.as_str(), ""));
            let port: u32 = port
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid --health-http: expected PORT/PATH, got {}", quoted(spec)))?;
            ("http", port, format!("/{path}"))
        }
        (None, Some(port)) => ("tcp", port, String::new()),
        (None, None) => return Ok(None),
    };
    Ok(Some(v1::HealthCheck { kind: kind.into(), port, path, interval_ms, threshold: a.health_threshold }))
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {}", quoted(s)))?;
    Ok((k.to_string(), v.to_string()))
}

#[derive(Serialize)]
struct PortOut {
    host: u32,
    guest: u32,
}

/// The JSON shape of a VM (documented in README).
#[derive(Serialize)]
struct VmOut {
    name: String,
    vcpus: u32,
    memory_mib: u32,
    disk_gib: Option<u32>,
    kernel: Option<String>,
    initrd: Option<String>,
    rootfs: Option<String>,
    cmdline: Option<String>,
    ports: Vec<PortOut>,
    labels: BTreeMap<String, String>,
    restart_policy: String,
    created_at_ms: u64,
    create_index: u64,
    desired: String,
    node: u64,
    restart_generation: u64,
    observed: Option<ObservedOut>,
}

/// The JSON shape of a VM's observed state (documented in README).
#[derive(Serialize)]
struct ObservedOut {
    phase: String,
    reason: Option<String>,
    pid: Option<u32>,
    boot_ms: Option<u64>,
    started_at_ms: Option<u64>,
    restarts: u32,
    accel: Option<String>,
    last_exit: Option<String>,
    reported_at_ms: u64,
}

fn opt(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

fn vm_out(v: v1::Vm) -> VmOut {
    let s = v.spec.unwrap_or_default();
    VmOut {
        name: s.name,
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        disk_gib: s.disk_gib,
        kernel: opt(s.kernel),
        initrd: opt(s.initrd),
        rootfs: opt(s.rootfs),
        cmdline: opt(s.cmdline),
        ports: s.ports.into_iter().map(|p| PortOut { host: p.host, guest: p.guest }).collect(),
        labels: s.labels.into_iter().collect(),
        restart_policy: s.restart_policy,
        created_at_ms: v.created_at_ms,
        create_index: v.create_index,
        desired: v.desired,
        node: v.node,
        restart_generation: v.restart_generation,
        observed: v.observed.map(|o| ObservedOut {
            phase: o.phase,
            reason: opt(o.reason),
            pid: o.pid,
            boot_ms: o.boot_ms,
            started_at_ms: o.started_at_ms,
            restarts: o.restarts,
            accel: opt(o.accel),
            last_exit: opt(o.last_exit),
            reported_at_ms: o.reported_at_ms,
        }),
    }
}

fn table(vms: &[VmOut]) -> Table {
    let mut t =
        Table::new(vec!["NAME", "NODE", "DESIRED", "OBSERVED", "VCPUS", "MEMORY", "PORTS", "RESTART", "REASON"]);
    for v in vms {
        let ports: Vec<String> = v.ports.iter().map(|p| format!("{}:{}", p.host, p.guest)).collect();
        let (phase, reason) = match &v.observed {
            None => ("pending".to_string(), String::new()),
            Some(o) => (o.phase.clone(), o.reason.clone().unwrap_or_default()),
        };
        t = t.row(vec![
            v.name.clone(),
            v.node.to_string(),
            v.desired.clone(),
            phase,
            v.vcpus.to_string(),
            format!("{} MiB", v.memory_mib),
            if ports.is_empty() { "-".into() } else { ports.join(",") },
            v.restart_policy.clone(),
            reason,
        ]);
    }
    t
}

/// A client that agrees with the node on the largest message.
fn client(ch: tonic::transport::Channel) -> VmServiceClient<tonic::transport::Channel> {
    VmServiceClient::new(ch)
        .max_decoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
}

#[derive(Clone, Copy)]
enum Power {
    Start,
    Stop,
    Restart,
}

/// `vm start|stop|restart`: one write, the record as the answer.
async fn set_power(conn: &mut Conn, fmt: Format, name: String, p: Power) -> anyhow::Result<()> {
    let req = VmNameRequest { name };
    let r = conn
        .write(req, |ch, r| async move {
            let mut c = client(ch);
            match p {
                Power::Start => c.start_vm(r).await,
                Power::Stop => c.stop_vm(r).await,
                Power::Restart => c.restart_vm(r).await,
            }
        })
        .await?;
    let out = vm_out(r.vm.unwrap_or_default());
    emit(fmt, &out, || table(std::slice::from_ref(&out)));
    Ok(())
}

pub async fn run(addr: &str, fmt: Format, c: VmCmd) -> anyhow::Result<()> {
    let mut conn = connect(addr).await?;
    let vm = client;
    match c {
        VmCmd::Create(a) => {
            let health = health_arg(&a)?;
            let spec = v1::VmSpec {
                name: a.name,
                vcpus: a.vcpus,
                memory_mib: a.memory_mib,
                disk_gib: a.disk_gib,
                kernel: a.kernel.unwrap_or_default(),
                initrd: a.initrd.unwrap_or_default(),
                rootfs: a.rootfs.unwrap_or_default(),
                cmdline: a.cmdline.unwrap_or_default(),
                ports: a.ports.into_iter().map(|(host, guest)| v1::PortForward { host, guest }).collect(),
                labels: a.labels.into_iter().collect(),
                restart_policy: a.restart_policy,
                health,
            };
            let req = CreateVmRequest { spec: Some(spec), node: a.node, start: a.start };
            let r = conn.write(req, |ch, r| async move { vm(ch).create_vm(r).await }).await?;
            let out = vm_out(r.vm.unwrap_or_default());
            emit(fmt, &out, || table(std::slice::from_ref(&out)));
        }
        VmCmd::Get { name, stale } => {
            let req = GetVmRequest { name, read: Some(ReadOptions { stale }) };
            let r = conn.read(req, |ch, r| async move { vm(ch).get_vm(r).await }).await?;
            let out = vm_out(r.vm.unwrap_or_default());
            emit(fmt, &out, || table(std::slice::from_ref(&out)));
        }
        VmCmd::List { limit, start_after, stale } => {
            let mut out = Printer::stdout(fmt, "vms");
            let mut pager = Pager::new(limit, start_after.unwrap_or_default());
            while let Some((start_after, limit)) = pager.request() {
                let req = ListVmsRequest { read: Some(ReadOptions { stale }), limit, start_after };
                let r = conn.read(req, |ch, r| async move { vm(ch).list_vms(r).await }).await?;
                let got = r.vms.len();
                out.page(&r.vms.into_iter().map(vm_out).collect::<Vec<_>>(), table)?;
                pager.answered(got, r.more, r.next)?;
            }
            out.finish(pager.stop(), || {
                let mut t = table(&[]);
                t.rows.push(vec!["…".into(), format!("(more past --limit {limit})")]);
                t
            })?;
        }
        VmCmd::Start { name } => set_power(&mut conn, fmt, name, Power::Start).await?,
        VmCmd::Stop { name } => set_power(&mut conn, fmt, name, Power::Stop).await?,
        VmCmd::Restart { name } => set_power(&mut conn, fmt, name, Power::Restart).await?,
        VmCmd::Logs { name, follow } => {
            use std::io::Write;
            let req = v1::VmLogsRequest { name, follow, offset: 0 };
            let mut stream = conn.read(req, |ch, r| async move { vm(ch).vm_logs(r).await }).await?;
            let mut out = std::io::stdout().lock();
            loop {
                match stream.message().await {
                    Ok(Some(chunk)) => {
                        out.write_all(&chunk.data)?;
                        out.flush()?;
                    }
                    Ok(None) => break,
                    Err(s) => anyhow::bail!("{}", s.message()),
                }
            }
        }
        VmCmd::Console { name } => {
            use std::io::Write;
            let (tx, rx) = tokio::sync::mpsc::channel::<v1::ConsoleInput>(16);
            tx.send(v1::ConsoleInput { name: name.clone(), data: Vec::new() }).await?;
            let mut out = vm(conn.channel())
                .vm_console(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                .into_inner();
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("connected to the console of vm {name:?}; Ctrl-D leaves");
            }
            // stdin is read on a thread of its own (blocking reads); EOF ends the session.
            let (eof_tx, mut eof) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let mut line = String::new();
                while matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0) {
                    if tx
                        .blocking_send(v1::ConsoleInput { name: String::new(), data: line.clone().into_bytes() })
                        .is_err()
                    {
                        break;
                    }
                    line.clear();
                }
                let _ = eof_tx.send(());
            });
            let mut stdout = std::io::stdout();
            loop {
                tokio::select! {
                    m = out.message() => match m {
                        Ok(Some(chunk)) => { stdout.write_all(&chunk.data)?; stdout.flush()?; }
                        Ok(None) => break,
                        Err(s) => anyhow::bail!("{}", s.message()),
                    },
                    _ = &mut eof => break,
                }
            }
        }
        VmCmd::Wait { name, state, timeout } => {
            if !PHASES.contains(&state.as_str()) {
                anyhow::bail!("invalid --state: must be one of {} (got {})", PHASES.join(", "), quoted(&state));
            }
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let deadline = tokio::time::Instant::now() + timeout;
            let spin = ['|', '/', '-', '\\'];
            let mut i = 0usize;
            let out = loop {
                let req = GetVmRequest { name: name.clone(), read: Some(ReadOptions { stale: false }) };
                let r = conn.read(req, |ch, r| async move { vm(ch).get_vm(r).await }).await?;
                let v = vm_out(r.vm.unwrap_or_default());
                let phase = v.observed.as_ref().map_or("pending".to_string(), |o| o.phase.clone());
                if phase == state {
                    break v;
                }
                if phase == "failed" {
                    let why = v.observed.and_then(|o| o.reason).unwrap_or_default();
                    anyhow::bail!("vm {name:?} failed: {why}");
                }
                if tokio::time::Instant::now() >= deadline {
                    anyhow::bail!("vm {name:?} is {phase}, not {state}, after {timeout:?}");
                }
                if tty {
                    eprint!("\r{} waiting for vm {name:?} to be {state} (now {phase})   ", spin[i % 4]);
                    i += 1;
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            };
            if tty {
                eprintln!("\r✓ vm {name:?} is {state}{}", " ".repeat(30));
            }
            emit(fmt, &out, || table(std::slice::from_ref(&out)));
        }
        VmCmd::Delete { name } => {
            let req = DeleteVmRequest { name: name.clone() };
            let r = conn.write(req, |ch, r| async move { vm(ch).delete_vm(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                name: String,
                deleted: bool,
                index: u64,
            }
            let out = Out { name, deleted: true, index: r.index };
            emit(fmt, &out, || Table::new(vec!["NAME", "DELETED"]).row(vec![out.name.clone(), "true".into()]));
        }
    }
    Ok(())
}
