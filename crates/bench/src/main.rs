//! `blixard-bench`: closed-loop write load and leader-failover timing against a blixard or an etcd
//! cluster, with the same client code path for both (tonic over one HTTP/2 connection per endpoint).
//!
//! `scripts/bench/raft-vs-etcd.sh` runs it end to end; `docs/BENCHMARKS.md` has the results.

mod apply;
mod cpu;
mod failover;
mod load;
mod place;
mod report;
mod simnodes;
mod state;
mod target;
mod tasks;
mod taskvm;
mod tls;
mod tlscost;
mod vmstart;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::load::Via;
use crate::target::{Target, Writer};

#[derive(Parser)]
#[command(name = "blixard-bench", about = "Write benchmark and failover timer for blixard and etcd")]
struct Cli {
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Closed-loop puts: for each client count, warm up, then measure throughput and latency.
    Write(WriteArgs),
    /// SIGKILL the leader and time the first successful put through a surviving node.
    Failover(FailoverArgs),
    /// Print the side-by-side markdown table from saved `--json` outputs.
    Report(ReportArgs),
    /// VM start overhead: `vm start` → boot marker vs the same QEMU command → boot marker.
    Vmstart(VmstartArgs),
    /// `--isolation vm` overhead: submit → succeeded vs the same QEMU command → exit report.
    Taskvm(TaskvmArgs),
    /// Scheduler placements per second, in memory, on one thread.
    Place(place::PlaceArgs),
    /// The state machine's CPU cost per put, with and without client sessions (one thread).
    Apply(apply::ApplyArgs),
    /// Batch tasks end to end: closed-loop submitters of `true`, tasks/s and submit → succeeded.
    Tasks(tasks::TasksArgs),
    /// The raw cost of starting `true` and waiting for it, one at a time.
    Spawn(tasks::SpawnArgs),
    /// Registers capacity-only simulated nodes through Raft (an admin method; benchmarks only).
    SimulatedNodes(simnodes::RegisterArgs),
    /// Simulated nodes heartbeat the leader; its CPU is read from /proc over the window.
    Heartbeats(simnodes::HeartbeatArgs),
    /// Creates new stopped VMs through Raft until that many exist (state at scale).
    VmFill(state::FillArgs),
    /// Walks the whole paged `vm list`, timing each page (state at scale).
    VmList(state::ListArgs),
}

#[derive(Args)]
struct VmstartArgs {
    /// A blixard node (the VM is placed on it: use a one-node cluster).
    #[arg(long)]
    addr: String,
    /// That node's --data-dir (its VM directories are read for the console and command line).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value = "bench-vm")]
    name: String,
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// Interleaved (blixard, raw) pairs.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TaskvmArgs {
    /// A blixard node (the tasks are placed on it: use a one-node cluster).
    #[arg(long)]
    addr: String,
    /// That node's --data-dir (its task attempts are read for the QEMU command line).
    #[arg(long)]
    data_dir: PathBuf,
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    /// Interleaved (blixard, raw) pairs.
    #[arg(long, default_value_t = 10)]
    pairs: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct Cluster {
    /// The system under test.
    #[arg(long, value_enum)]
    target: Target,
    /// Client endpoints (HOST:PORT), comma-separated; clients are spread over them round-robin.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[command(flatten)]
    tls: tls::TlsArgs,
}

#[derive(Args)]
struct WriteArgs {
    #[command(flatten)]
    cluster: Cluster,
    /// Concurrent closed-loop clients; one case per value (for 1: one per --single-via role).
    /// More than one client are spread round-robin over all endpoints.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Where a single client writes, one case each: `leader` (the current leader's endpoint),
    /// `follower` (the first endpoint that is not the leader's), `all` (round-robin over all
    /// endpoints, i.e. the first one). Comma-separated or repeated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "leader,follower")]
    single_via: Vec<Via>,
    /// Measured time per case (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured load before each case's measured window.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Keys are drawn uniformly from this many (8-byte, zero-padded decimal).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Puts per second started by all clients together, at most (each paces itself at its
    /// share); unset: closed loop, as fast as answers come. For comparing CPU per put at one
    /// fixed load.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Seed for keys and values.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Pids of the servers under test (comma-separated): their CPU is not reported as interference.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<i32>,
    /// Print one JSON document (see `report`) instead of a table.
    #[arg(long)]
    json: bool,
    /// Blixard only: every write is a `vm create` of a new stopped VM (a placement through
    /// Raft) instead of a put.
    #[arg(long)]
    vm_creates: bool,
}

#[derive(Args)]
struct FailoverArgs {
    #[command(flatten)]
    cluster: Cluster,
    /// Which process serves which endpoint: ENDPOINT=PID, comma-separated.
    #[arg(long, required = true)]
    pids: String,
    /// Timeout of each put after the kill.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Start a new put through each survivor this often, whatever became of the earlier ones.
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    probe_every: Duration,
    /// Give up when no put succeeded this long after the kill.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    give_up: Duration,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 64)]
    value_size: usize,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ReportArgs {
    /// `write --json` output for blixard; repeat it, one file per round (figures are medians).
    #[arg(long)]
    blixard: Vec<PathBuf>,
    /// `write --json` output for etcd; repeat it, one file per round, in the same round order.
    #[arg(long)]
    etcd: Vec<PathBuf>,
    /// A failover row: LABEL=FILE, FILE holding `failover --json` lines. Repeatable.
    #[arg(long = "failover", value_name = "LABEL=FILE")]
    failovers: Vec<String>,
    /// Column title for blixard, e.g. "blixard (1 node)", "blixard (mTLS)".
    #[arg(long, default_value = "blixard")]
    blixard_label: String,
    /// Column title for etcd, e.g. "etcd (TLS)".
    #[arg(long, default_value = "etcd")]
    etcd_label: String,
    /// `write --json` output of blixard without TLS, one file per round in the same round order as
    /// --blixard (which then holds the TLS rounds): adds a table of blixard's own TLS cost.
    #[arg(long)]
    blixard_plain: Vec<PathBuf>,
    /// Column title for --blixard-plain.
    #[arg(long, default_value = "blixard (plaintext)")]
    plain_label: String,
}

/// `10s`, `200ms`, `1.5s`, `2m`, `500us`.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && (1.0..=10_000_000.0).contains(&r) => Ok(r),
        _ => Err(format!("invalid rate {s:?}: puts per second, from 1 to 10000000")),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid duration {s:?}: expected e.g. 10s, 200ms"))?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("invalid duration unit in {s:?}: use us, ms, s or m")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// The endpoints a case writes through (indexes into the endpoint list) for `via`: all of them,
/// or the leader's, or the first that is not the leader's.
fn pick_endpoints(via: Via, n: usize, leader: Option<usize>) -> anyhow::Result<Vec<usize>> {
    Ok(match (via, leader) {
        (Via::All, _) => (0..n).collect(),
        (Via::Leader, Some(l)) => vec![l],
        (Via::Follower, Some(l)) => match (0..n).find(|&i| i != l) {
            Some(f) => vec![f],
            None => bail!("--single-via follower: every endpoint is the leader's (give at least two)"),
        },
        (_, None) => bail!("--single-via {}: the leader is not known", via.as_str()),
    })
}

/// Where the current leader is, as an index into `endpoints`.
async fn leader_index(target: Target, endpoints: &[String], tls: &tls::Tls) -> anyhow::Result<usize> {
    let (leader, _) = target::find_leader(target, endpoints, tls).await.context("cannot find the leader")?;
    endpoints.iter().position(|e| *e == leader).with_context(|| format!("the leader {leader} is not an endpoint"))
}

async fn write(a: WriteArgs) -> anyhow::Result<()> {
    let target = a.cluster.target;
    let endpoints = &a.cluster.endpoints;
    let tls = a.cluster.tls.load()?;
    if a.clients.contains(&0) {
        bail!("invalid --clients: every count must be at least 1");
    }
    let mut vias: Vec<Via> = Vec::new();
    for v in &a.single_via {
        if !vias.contains(v) {
            vias.push(*v);
        }
    }
    if vias.contains(&Via::Follower) && endpoints.len() < 2 {
        bail!("--single-via follower needs at least two endpoints");
    }
    if a.vm_creates && target != Target::Blixard {
        bail!("--vm-creates needs --target blixard");
    }
    let mut writers = Vec::new();
    for ep in endpoints {
        writers.push(if a.vm_creates {
            Writer::vm_creates(ep, &tls).await?
        } else {
            Writer::connect(target, ep, &tls).await?
        });
    }
    let mut cases = Vec::new();
    for &clients in &a.clients {
        let runs = if clients == 1 { vias.clone() } else { vec![Via::All] };
        for via in runs {
            // Looked up before every case that needs it, in case leadership moved.
            let leader = match via {
                Via::All => None,
                Via::Leader | Via::Follower => Some(leader_index(target, endpoints, &tls).await?),
            };
            let picked = pick_endpoints(via, endpoints.len(), leader)?;
            let ws: Vec<Writer> = picked.iter().map(|&i| writers[i].clone()).collect();
            let eps: Vec<String> = picked.iter().map(|&i| endpoints[i].clone()).collect();
            let what = if clients == 1 {
                format!("1 client via {} ({})", via.as_str(), eps[0])
            } else {
                format!("{clients} clients")
            };
            eprintln!("{}: {what}, {:?} warm-up + {:?} ...", target.name(), a.warmup, a.duration);
            let cfg = load::LoadConfig {
                clients,
                warmup: a.warmup,
                duration: a.duration,
                keys: a.keys,
                value_size: a.value_size,
                seed: a.seed,
                server_pids: a.server_pids.clone(),
                via,
                rate: a.rate,
            };
            let r = load::run_case(target, &ws, &eps, &cfg).await;
            if let Some(before) = leader {
                match leader_index(target, endpoints, &tls).await {
                    Ok(after) if after == before => {}
                    Ok(after) => eprintln!(
                        "{}: warning: the leader moved from {} to {} during the case",
                        target.name(),
                        endpoints[before],
                        endpoints[after]
                    ),
                    Err(e) => eprintln!("{}: warning: after the case: {e:#}", target.name()),
                }
            }
            eprintln!(
                "{}: {what}: {:.0} ops/s, p50 {} µs, p99 {} µs, p99.9 {} µs, {} errors{}; \
                 CPU busy {:.2} cores, {:.2} of them other processes; servers' CPU {:.1} µs per op",
                target.name(),
                r.ops_per_sec,
                r.p50_us,
                r.p99_us,
                r.p999_us,
                r.errors,
                r.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default(),
                r.cpu_busy_cores.unwrap_or(f64::NAN),
                r.cpu_other_cores.unwrap_or(f64::NAN),
                r.server_cpu_us_per_op.unwrap_or(f64::NAN),
            );
            cases.push(r);
        }
    }
    let rep = report::WriteReport {
        target,
        endpoints: endpoints.clone(),
        keys: a.keys,
        value_size: a.value_size,
        warmup_s: a.warmup.as_secs_f64(),
        cases,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        let one = std::slice::from_ref(&rep);
        let (b, e): (&[report::WriteReport], &[report::WriteReport]) = match target {
            Target::Blixard => (one, &[]),
            Target::Etcd => (&[], one),
        };
        print!("{}", report::table(b, e, ("blixard", "etcd"), &[]));
    }
    Ok(())
}

async fn taskvm_cmd(a: TaskvmArgs) -> anyhow::Result<()> {
    let r =
        taskvm::run(taskvm::Config { addr: a.addr, data_dir: a.data_dir, memory_mib: a.memory_mib, pairs: a.pairs })
            .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "| pairs | blixard `task submit --isolation vm -- true` → succeeded (median) | raw QEMU, same command line → exit report (median) | added (median of pair differences) | ratio |"
        );
        println!("|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:+.1} ms | {:.3} |",
            r.pairs, r.median_blixard_ms, r.median_raw_ms, r.median_added_ms, r.ratio_of_medians
        );
    }
    Ok(())
}

async fn vmstart_cmd(a: VmstartArgs) -> anyhow::Result<()> {
    let r = vmstart::run(vmstart::Config {
        addr: a.addr,
        data_dir: a.data_dir,
        name: a.name,
        memory_mib: a.memory_mib,
        pairs: a.pairs,
    })
    .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "| pairs | blixard `vm start` → boot marker (median) | raw QEMU → boot marker (median) | added at the marker (median of pair differences) | ratio | added by the time QEMU wrote its pidfile (median) |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        println!(
            "| {} | {:.1} ms | {:.1} ms | {:+.1} ms | {:.3} | {:+.2} ms |",
            r.pairs,
            r.median_blixard_ms,
            r.median_raw_ms,
            r.median_added_ms,
            r.ratio_of_medians,
            r.median_added_to_pidfile_ms
        );
    }
    Ok(())
}

async fn failover(a: FailoverArgs) -> anyhow::Result<()> {
    let pids = failover::parse_pids(&a.pids)?;
    let cfg = failover::FailoverConfig {
        per_request: a.request_timeout,
        give_up_after: a.give_up,
        probe_every: a.probe_every.max(Duration::from_millis(1)),
        value_size: a.value_size,
        keys: a.keys.max(1),
        tls: a.cluster.tls.load()?,
    };
    let r = failover::run(a.cluster.target, &a.cluster.endpoints, &pids, &cfg).await?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{}: killed leader {} ({}, pid {}); first write through {} after {:.1} ms ({} puts started there)",
            r.target.name(),
            r.leader_id,
            r.killed_endpoint,
            r.killed_pid,
            r.first_success_endpoint,
            r.failover_ms,
            r.attempts
        );
    }
    Ok(())
}

fn report(a: ReportArgs) -> anyhow::Result<()> {
    let b = a.blixard.iter().map(|p| report::read_write(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let e = a.etcd.iter().map(|p| report::read_write(p)).collect::<anyhow::Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for f in &a.failovers {
        let (label, file) = f.rsplit_once('=').with_context(|| format!("--failover {f:?}: expected LABEL=FILE"))?;
        rows.push((label.to_string(), report::read_failovers(std::path::Path::new(file))?));
    }
    print!("{}", report::table(&b, &e, (&a.blixard_label, &a.etcd_label), &rows));
    if !a.blixard_plain.is_empty() {
        let p = a.blixard_plain.iter().map(|p| report::read_write(p)).collect::<anyhow::Result<Vec<_>>>()?;
        println!();
        print!("{}", tlscost::table(&b, &p, &a.blixard_label, &a.plain_label));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build().context("cannot start the runtime") {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.cmd {
            Cmd::Write(a) => write(a).await,
            Cmd::Failover(a) => failover(a).await,
            Cmd::Report(a) => report(a),
            Cmd::Vmstart(a) => vmstart_cmd(a).await,
            Cmd::Taskvm(a) => taskvm_cmd(a).await,
            Cmd::Place(a) => place::run(a),
            Cmd::Apply(a) => apply::run(a),
            Cmd::Tasks(a) => tasks::run(a).await,
            Cmd::Spawn(a) => tasks::spawn(a).await,
            Cmd::SimulatedNodes(a) => simnodes::register(a).await,
            Cmd::Heartbeats(a) => simnodes::heartbeats(a).await,
            Cmd::VmFill(a) => state::fill(a).await,
            Cmd::VmList(a) => state::list(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("4000"), Ok(4000.0));
        for bad in ["0", "-5", "NaN", "inf", "fast", "1e9"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_by_role() {
        assert_eq!(pick_endpoints(Via::All, 3, None).unwrap(), vec![0, 1, 2]);
        assert_eq!(pick_endpoints(Via::Leader, 3, Some(2)).unwrap(), vec![2]);
        assert_eq!(pick_endpoints(Via::Follower, 3, Some(0)).unwrap(), vec![1]);
        assert_eq!(pick_endpoints(Via::Follower, 3, Some(1)).unwrap(), vec![0]);
        assert!(pick_endpoints(Via::Follower, 1, Some(0)).is_err());
        assert!(pick_endpoints(Via::Leader, 3, None).is_err());
    }

    #[test]
    fn report_takes_plaintext_rounds_and_labels_with_the_old_defaults() {
        let parse = |args: &[&str]| match Cli::try_parse_from(["blixard-bench", "report"].iter().chain(args)) {
            Ok(Cli { cmd: Cmd::Report(r), .. }) => r,
            _ => panic!("does not parse: {args:?}"),
        };
        let r = parse(&["--blixard", "b1", "--etcd", "e1"]);
        assert_eq!((r.blixard_label.as_str(), r.etcd_label.as_str()), ("blixard", "etcd"));
        assert!(r.blixard_plain.is_empty());
        let r = parse(&[
            "--blixard",
            "t1",
            "--blixard-plain",
            "p1",
            "--blixard",
            "t2",
            "--blixard-plain",
            "p2",
            "--etcd-label",
            "etcd (TLS)",
        ]);
        assert_eq!(r.blixard_plain, vec![PathBuf::from("p1"), PathBuf::from("p2")]);
        assert_eq!((r.etcd_label.as_str(), r.plain_label.as_str()), ("etcd (TLS)", "blixard (plaintext)"));
    }

    #[test]
    fn write_and_failover_take_the_tls_flags() {
        let w =
            Cli::try_parse_from(["blixard-bench", "write", "--target", "etcd", "--endpoints", "a:1", "--tls-dir", "d"]);
        assert!(
            matches!(w, Ok(Cli { cmd: Cmd::Write(ref a), .. }) if a.cluster.tls.tls_dir == Some(PathBuf::from("d")))
        );
        let f = Cli::try_parse_from([
            "blixard-bench",
            "failover",
            "--target",
            "blixard",
            "--endpoints",
            "a:1",
            "--pids",
            "a:1=1",
            "--tls-ca",
            "ca",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ]);
        assert!(
            matches!(f, Ok(Cli { cmd: Cmd::Failover(ref a), .. }) if a.cluster.tls.tls_key == Some(PathBuf::from("k")))
        );
        // Half a client certificate is refused.
        assert!(Cli::try_parse_from([
            "blixard-bench",
            "write",
            "--target",
            "etcd",
            "--endpoints",
            "a:1",
            "--tls-cert",
            "c"
        ])
        .is_err());
    }

    #[test]
    fn single_via_parses_lists_and_repeats() {
        let parse = |args: &[&str]| {
            let mut v = vec!["blixard-bench", "write", "--target", "etcd", "--endpoints", "a:1,b:2"];
            v.extend_from_slice(args);
            match Cli::try_parse_from(v).expect("parses").cmd {
                Cmd::Write(w) => w.single_via,
                _ => unreachable!(),
            }
        };
        assert_eq!(parse(&[]), vec![Via::Leader, Via::Follower]);
        assert_eq!(parse(&["--single-via", "all"]), vec![Via::All]);
        assert_eq!(
            parse(&["--single-via", "leader,all", "--single-via", "follower"]),
            vec![Via::Leader, Via::All, Via::Follower]
        );
        assert!(Cli::try_parse_from([
            "blixard-bench",
            "write",
            "--target",
            "etcd",
            "--endpoints",
            "a:1",
            "--single-via",
            "x"
        ])
        .is_err());
    }
}
