//! Batch tasks end to end: closed-loop submitters, each submitting `true` (a process task, 1
//! vCPU, 16 MiB) through the nodes round robin, then polling it (stale reads on the node that
//! took it, every `poll`) until it is `succeeded`, then submitting the next. Per submitter
//! count: tasks completed per second in the measured window, and submit → succeeded latency
//! as the client saw it (p50/p99) and as the cluster recorded it (finished − submitted, which
//! the polling does not round up). `spawn` is the anchor: the raw cost of starting `true` and
//! waiting for it on this machine, one at a time.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use blixard_core::ClientSession;
use blixard_proto::v1::task_service_client::TaskServiceClient;
use blixard_proto::v1::{ReadOptions, TaskIdRequest, TaskSpec};
use hdrhistogram::Histogram;
use serde::Serialize;
use tonic::transport::Channel;

#[derive(clap::Args)]
pub struct TasksArgs {
    /// blixard endpoints, HOST:PORT, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Submitter counts, one case each.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    submitters: Vec<usize>,
    #[arg(long, value_parser = crate::parse_duration, default_value = "10s")]
    duration: Duration,
    #[arg(long, value_parser = crate::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// How often a submitter asks whether its task is done.
    #[arg(long, value_parser = crate::parse_duration, default_value = "2ms")]
    poll: Duration,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SpawnArgs {
    /// `true` started and waited for this many times.
    #[arg(long, default_value_t = 2000)]
    n: usize,
}

#[derive(Serialize)]
pub struct Case {
    pub submitters: usize,
    pub tasks: u64,
    pub tasks_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// finished − submitted as the cluster recorded them.
    pub recorded_p50_ms: f64,
    pub recorded_p99_ms: f64,
    pub errors: u64,
}

fn spec() -> TaskSpec {
    TaskSpec {
        command: "true".into(),
        vcpus: 1,
        memory_mib: 16,
        timeout_ms: 60_000,
        backoff_ms: 1000,
        backoff_cap_ms: 1000,
        ..Default::default()
    }
}

struct Done {
    client_us: u64,
    recorded_us: u64,
    at: Instant,
}

async fn one(c: &mut TaskServiceClient<Channel>, s: &mut ClientSession, poll: Duration) -> anyhow::Result<Done> {
    let t0 = Instant::now();
    let seq = s.begin();
    let mut req = tonic::Request::new(spec());
    blixard_proto::rpc::set_session(req.metadata_mut(), &seq);
    let r = c.submit_task(req).await;
    s.end(seq.seq);
    let t = r.context("submit")?.into_inner();
    loop {
        let req = TaskIdRequest { id: t.id.clone(), read: Some(ReadOptions { stale: true }) };
        let got = c.get_task(req).await.context("get")?.into_inner();
        match got.state.as_str() {
            "succeeded" => {
                let recorded = got.finished_ms.unwrap_or(got.submitted_ms).saturating_sub(got.submitted_ms);
                let at = Instant::now();
                return Ok(Done { client_us: (at - t0).as_micros() as u64, recorded_us: recorded * 1000, at });
            }
            "failed" | "timed_out" | "cancelled" | "lost" => bail!("task {} ended {}", t.id, got.state),
            _ => tokio::time::sleep(poll).await,
        }
    }
}

async fn case(a: &TasksArgs, chans: &[Channel], n: usize) -> anyhow::Result<Case> {
    let start = Instant::now();
    let from = start + a.warmup;
    let until = from + a.duration;
    let mut handles = Vec::new();
    for i in 0..n {
        let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
        let poll = a.poll;
        handles.push(tokio::spawn(async move {
            let mut s = ClientSession::new(rand::random::<u128>());
            let (mut done, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < until {
                match one(&mut c, &mut s, poll).await {
                    Ok(d) => done.push(d),
                    Err(_) => errors += 1,
                }
            }
            (done, errors)
        }));
    }
    let mut client = Histogram::<u64>::new(3)?;
    let mut recorded = Histogram::<u64>::new(3)?;
    let (mut tasks, mut errors) = (0u64, 0u64);
    for h in handles {
        let (done, e) = h.await?;
        errors += e;
        for d in done.into_iter().filter(|d| d.at >= from && d.at <= until) {
            tasks += 1;
            client.record(d.client_us.max(1))?;
            recorded.record(d.recorded_us.max(1))?;
        }
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Case {
        submitters: n,
        tasks,
        tasks_per_sec: tasks as f64 / a.duration.as_secs_f64(),
        p50_ms: ms(&client, 0.5),
        p99_ms: ms(&client, 0.99),
        recorded_p50_ms: ms(&recorded, 0.5),
        recorded_p99_ms: ms(&recorded, 0.99),
        errors,
    })
}

pub async fn run(a: TasksArgs) -> anyhow::Result<()> {
    let mut chans = Vec::new();
    for ep in &a.endpoints {
        let url = if ep.contains("://") { ep.clone() } else { format!("http://{ep}") };
        chans.push(Channel::from_shared(url)?.connect().await.with_context(|| format!("cannot connect to {ep}"))?);
    }
    let mut out = Vec::new();
    for &n in &a.submitters {
        anyhow::ensure!(n > 0, "--submitters must be positive");
        eprintln!("tasks: {n} submitters, {:?} warm-up + {:?} ...", a.warmup, a.duration);
        let c = case(&a, &chans, n).await?;
        eprintln!(
            "tasks: {n} submitters: {:.0} tasks/s, submit → succeeded p50 {:.1} ms, p99 {:.1} ms (recorded p50 {:.1}, p99 {:.1}), {} errors",
            c.tasks_per_sec, c.p50_ms, c.p99_ms, c.recorded_p50_ms, c.recorded_p99_ms, c.errors
        );
        out.push(c);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

/// Starts `true` and waits for it, `n` times in a row: the machine's raw cost per task.
pub async fn spawn(a: SpawnArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.n > 0, "--n must be positive");
    let mut h = Histogram::<u64>::new(3)?;
    let t0 = Instant::now();
    for _ in 0..a.n {
        let t = Instant::now();
        let st = tokio::process::Command::new("true").status().await?;
        anyhow::ensure!(st.success(), "true failed: {st}");
        h.record((t.elapsed().as_micros() as u64).max(1))?;
    }
    let s = t0.elapsed().as_secs_f64();
    println!(
        "spawn: {} runs of `true`, one at a time: {:.0}/s, p50 {:.2} ms, p99 {:.2} ms",
        a.n,
        a.n as f64 / s,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
    Ok(())
}
