use blixard_core::quoted;
use blixard_proto::v1::vm_service_client::VmServiceClient;
use blixard_proto::v1::{
    self, CreateVmRequest, DeleteVmRequest, GetVmRequest, ListVmsRequest, ReadOptions, VmNameRequest,
};
use serde::Serialize;

use super::vm_args::CreateArgs;
use super::vm_out::{events_table, plan_out, plan_table, table, vm_out};
use crate::client::{connect, Conn};
use crate::output::{emit, Table};
use crate::page::{Pager, Printer};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum VmCmd {
    /// Record a new VM (desired state).
    Create(Box<CreateArgs>),
    /// Where the VM would be placed now and why not on each other node (why it is pending).
    Explain { name: String },
    /// What happened to the VM: placed, moved, started, its node lost...
    Events { name: String },
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
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("expected a duration like 60s, got {}", quoted(s)))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("unknown unit in {} (use ms, s or m)", quoted(s))),
    }
}

const PHASES: [&str; 7] = ["pending", "starting", "running", "stopping", "stopped", "failed", "lost"];

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
            let spec = a.spec()?;
            let req = CreateVmRequest {
                spec: Some(spec),
                node: a.node,
                start: a.start,
                no_queue: a.no_queue,
                dry_run: a.dry_run,
            };
            if a.dry_run {
                let r = conn.read(req, |ch, r| async move { vm(ch).create_vm(r).await }).await?;
                let out = plan_out(r.plan.unwrap_or_default());
                emit(fmt, &out, || plan_table(&out));
                return Ok(());
            }
            let r = conn.write(req, |ch, r| async move { vm(ch).create_vm(r).await }).await?;
            let out = vm_out(r.vm.unwrap_or_default());
            emit(fmt, &out, || table(std::slice::from_ref(&out)));
        }
        VmCmd::Explain { name } => {
            let req = v1::ExplainRequest { name };
            let r = conn.read(req, |ch, r| async move { vm(ch).explain(r).await }).await?;
            let out = plan_out(r);
            emit(fmt, &out, || plan_table(&out));
        }
        VmCmd::Events { name } => {
            let req = GetVmRequest { name: name.clone(), read: Some(ReadOptions { stale: false }) };
            let r = conn.read(req, |ch, r| async move { vm(ch).get_vm(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                name: String,
                events: Vec<super::vm_out::EventOut>,
            }
            let out = Out { name, events: vm_out(r.vm.unwrap_or_default()).events };
            emit(fmt, &out, || events_table(&out.events));
        }
        VmCmd::Get { name, stale } => {
            let req = GetVmRequest { name, read: Some(ReadOptions { stale }) };
            let r = conn.read(req, |ch, r| async move { vm(ch).get_vm(r).await }).await?;
            let out = super::vm_out::vm_get_out(r);
            emit(fmt, &out, || super::vm_out::get_table(&out));
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
            let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            crate::client::tag(&mut req);
            crate::client::authorize(&mut req);
            let mut out =
                vm(conn.channel()).vm_console(req).await.map_err(|s| anyhow::anyhow!("{}", s.message()))?.into_inner();
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
