//! The recording client of `scripts/chaos.sh`: KV operations against real nodes, each recorded
//! with invoke and complete times and an ok / fail / unknown outcome, as the JSON lines that
//! `blixard-check` reads.
//!
//! ```text
//! blixard-chaos-client run --addrs A,B,.. [--clients-per-node 2] [--duration-secs 60]
//!                          [--keys 8] [--seed 1] --out FILE
//! blixard-chaos-client final --addrs A,B,.. [--keys 8] [--timeout-secs 60] --out FILE
//! blixard-chaos-client converge --addrs A,B,.. [--keys 8] [--timeout-secs 60]
//! ```
//!
//! `run`: every node gets `--clients-per-node` clients, each talking to that node only, one
//! operation at a time (puts of unique values, linearizable gets, deletes over `--keys` keys),
//! until the duration has passed. A write that failed with the typed reason `NOT_APPLIED`, or
//! whose connection was refused, is `fail`; any other error of a write (timeout, lost connection, lost leader) is `unknown`,
//! and its client continues under a new client id (the checker's clients are sequential). A
//! failed get is `fail`: a read has no effect. Each request is a single attempt (no retries),
//! so no write can be applied twice by this client.
//!
//! `final`: after the faults stop, one linearizable get of every key (retried on any node
//! until it succeeds), appended to the history: with the checker this proves that no
//! acknowledged write was lost. Times are wall-clock nanoseconds, so both invocations share
//! one clock. `converge`: polls every node's local (stale) value of every key until all nodes
//! agree; exits 1 when they do not within the timeout.
//!
//! Exit status: 0 done; 1 did not converge / final reads failed; 2 bad usage.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blixard_proto::rpc;
use blixard_proto::v1::error_detail::Reason;
use blixard_proto::v1::kv_service_client::KvServiceClient;
use blixard_proto::v1::{DeleteRequest, GetRequest, PutRequest, ReadOptions};
use blixard_testkit::{KvInput, KvOutput, OpResult, Operation};
use rand::{Rng, SeedableRng};
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "usage: blixard-chaos-client run|final|converge --addrs HOST:PORT,.. [--clients-per-node N] \
                     [--duration-secs S] [--keys N] [--seed N] [--timeout-secs S] [--out FILE]";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

type Op = Operation<KvInput, KvOutput>;

struct Args {
    mode: String,
    addrs: Vec<String>,
    clients_per_node: u64,
    duration: Duration,
    keys: u64,
    seed: u64,
    timeout: Duration,
    out: Option<String>,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mode = args.next().ok_or("a mode is missing: run, final or converge")?;
    if !["run", "final", "converge"].contains(&mode.as_str()) {
        return Err(format!("unknown mode `{mode}`: expected run, final or converge"));
    }
    let mut a = Args {
        mode,
        addrs: Vec::new(),
        clients_per_node: 2,
        duration: Duration::from_secs(60),
        keys: 8,
        seed: 1,
        timeout: Duration::from_secs(60),
        out: None,
    };
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let num = || value.parse::<u64>().map_err(|_| format!("{flag}: `{value}` is not a whole number"));
        match flag.as_str() {
            "--addrs" => a.addrs = value.split(',').map(str::to_string).filter(|s| !s.is_empty()).collect(),
            "--clients-per-node" => a.clients_per_node = num()?.clamp(1, 64),
            "--duration-secs" => a.duration = Duration::from_secs(num()?),
            "--keys" => a.keys = num()?.clamp(1, 1000),
            "--seed" => a.seed = num()?,
            "--timeout-secs" => a.timeout = Duration::from_secs(num()?),
            "--out" => a.out = Some(value),
            _ => return Err(format!("unknown option `{flag}`")),
        }
    }
    if a.addrs.is_empty() {
        return Err("--addrs is missing".into());
    }
    if a.mode != "converge" && a.out.is_none() {
        return Err("--out is missing".into());
    }
    Ok(a)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

fn channel(addr: &str) -> Result<Channel, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .timeout(REQUEST_TIMEOUT)
        .connect_lazy())
}

fn key(i: u64) -> String {
    format!("k{i}")
}

fn value_text(found: bool, value: Vec<u8>) -> Option<String> {
    found.then(|| String::from_utf8_lossy(&value).into_owned())
}

/// Whether the request surely never reached a node: its connection was refused (a typed
/// `io::ErrorKind` in the error's source chain, not its text).
fn refused(s: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused) {
            return true;
        }
        source = e.source();
    }
    false
}

/// One request; `Err(true)` when it surely had no effect, `Err(false)` when unknown.
async fn call(kv: &mut KvServiceClient<Channel>, input: &KvInput) -> Result<KvOutput, bool> {
    let not_applied = |s: tonic::Status| rpc::reason(&s) == Some(Reason::NotApplied) || refused(&s);
    match input {
        KvInput::Put { key, value } => kv
            .put(PutRequest { key: key.clone().into_bytes(), value: value.clone().into_bytes() })
            .await
            .map(|_| KvOutput::Written)
            .map_err(not_applied),
        KvInput::Delete { key } => kv
            .delete(DeleteRequest { key: key.clone().into_bytes() })
            .await
            .map(|r| KvOutput::Existed(r.into_inner().existed))
            .map_err(not_applied),
        KvInput::Get { key } => kv
            .get(GetRequest { key: key.clone().into_bytes(), read: Some(ReadOptions { stale: false }) })
            .await
            .map(|r| {
                let r = r.into_inner();
                KvOutput::Value(value_text(r.found, r.value))
            })
            .map_err(|_| true),
    }
}

struct Shared {
    out: Mutex<BufWriter<std::fs::File>>,
}

impl Shared {
    fn record(&self, op: &Op) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let line = serde_json::to_string(op).unwrap_or_default();
        if line.is_empty() || writeln!(out, "{line}").is_err() {
            eprintln!("blixard-chaos-client: cannot write the history");
            std::process::exit(1);
        }
    }

    fn flush(&self) -> Result<(), String> {
        self.out.lock().unwrap_or_else(|p| p.into_inner()).flush().map_err(|e| format!("flush history: {e}"))
    }
}

#[derive(Default, Clone, Copy)]
struct Counts {
    ok: u64,
    fail: u64,
    unknown: u64,
}

async fn client(index: u64, addr: String, args: Arc<Args>, shared: Arc<Shared>) -> Result<Counts, String> {
    let mut kv = KvServiceClient::new(channel(&addr)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(index));
    let deadline = Instant::now() + args.duration;
    let mut generation = 0u64;
    let mut counts = Counts::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let k = key(rng.gen_range(0..args.keys));
        let input = match rng.gen_range(0..10) {
            0..=3 => KvInput::Put { key: k, value: format!("c{index}-{n}") },
            4..=7 => KvInput::Get { key: k },
            _ => KvInput::Delete { key: k },
        };
        let id = index + 1 + 100_000 * generation;
        let invoke = now();
        let result = call(&mut kv, &input).await;
        let complete = now();
        let op = match result {
            Ok(output) => {
                counts.ok += 1;
                Op::ok(id, input, invoke, complete, output)
            }
            Err(true) => {
                counts.fail += 1;
                Op::fail(id, input, invoke, complete)
            }
            Err(false) => {
                counts.unknown += 1;
                generation += 1;
                Op::unknown(id, input, invoke, Some(complete))
            }
        };
        let failed = !matches!(op.result, OpResult::Ok(_));
        shared.record(&op);
        if failed {
            // The node is down or has no leader: do not spin against it.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(counts)
}

fn open_out(path: &str) -> Result<Shared, String> {
    let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| format!("--out {path}: {e}"))?;
    Ok(Shared { out: Mutex::new(BufWriter::new(file)) })
}

async fn run(args: Args) -> Result<(), String> {
    let shared = Arc::new(open_out(args.out.as_deref().unwrap_or_default())?);
    let args = Arc::new(args);
    let mut tasks = Vec::new();
    for (node, addr) in args.addrs.iter().enumerate() {
        for c in 0..args.clients_per_node {
            let index = node as u64 * args.clients_per_node + c;
            tasks.push(tokio::spawn(client(index, addr.clone(), args.clone(), shared.clone())));
        }
    }
    let mut total = Counts::default();
    for t in tasks {
        let c = t.await.map_err(|e| format!("a client task failed: {e}"))??;
        total.ok += c.ok;
        total.fail += c.fail;
        total.unknown += c.unknown;
    }
    shared.flush()?;
    println!(
        "operations {} ok {} fail {} unknown {}",
        total.ok + total.fail + total.unknown,
        total.ok,
        total.fail,
        total.unknown
    );
    Ok(())
}

async fn final_reads(args: Args) -> Result<(), String> {
    let shared = open_out(args.out.as_deref().unwrap_or_default())?;
    let mut clients = Vec::new();
    for a in &args.addrs {
        clients.push(KvServiceClient::new(channel(a)?));
    }
    let deadline = Instant::now() + args.timeout;
    for k in 0..args.keys {
        let input = KvInput::Get { key: key(k) };
        let mut attempt = 0usize;
        loop {
            let kv = &mut clients[attempt % args.addrs.len()];
            attempt += 1;
            let invoke = now();
            if let Ok(output) = call(kv, &input).await {
                shared.record(&Op::ok(1_000_000_000, input, invoke, now(), output));
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("no linearizable read of {} succeeded within {:?}", key(k), args.timeout));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    shared.flush()
}

/// Every node's local value of every key (`None` for a node that did not answer).
async fn local_states(args: &Args) -> Vec<Option<BTreeMap<String, Option<String>>>> {
    let mut states = Vec::new();
    for a in &args.addrs {
        let Ok(ch) = channel(a) else {
            states.push(None);
            continue;
        };
        let mut kv = KvServiceClient::new(ch);
        let mut state = Some(BTreeMap::new());
        for k in 0..args.keys {
            let req = GetRequest { key: key(k).into_bytes(), read: Some(ReadOptions { stale: true }) };
            match kv.get(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    if let Some(s) = state.as_mut() {
                        s.insert(key(k), value_text(r.found, r.value));
                    }
                }
                Err(_) => state = None,
            }
        }
        states.push(state);
    }
    states
}

async fn converge(args: Args) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let states = local_states(&args).await;
        if states.iter().all(Option::is_some) && states.windows(2).all(|w| w[0] == w[1]) {
            println!("converged in {:.1}s", start.elapsed().as_secs_f64());
            return Ok(());
        }
        if start.elapsed() > args.timeout {
            for (a, s) in args.addrs.iter().zip(&states) {
                eprintln!("{a}: {s:?}");
            }
            return Err(format!("the nodes did not converge to one KV state within {:?}", args.timeout));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(problem) => {
            eprintln!("blixard-chaos-client: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blixard-chaos-client: cannot start a runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async move {
        match args.mode.as_str() {
            "run" => run(args).await,
            "final" => final_reads(args).await,
            _ => converge(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("blixard-chaos-client: {e}");
            ExitCode::from(1)
        }
    }
}
