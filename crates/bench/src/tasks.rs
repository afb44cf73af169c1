//! Batch tasks end to end: closed-loop submitters, each submitting `true` (a process task, 1
//! vCPU, 16 MiB) through the nodes round robin, then waiting for it on the node that took it
//! (`WaitTask`, one request answered when that node applies the task's end; or, with `--poll`,
//! stale `GetTask` reads every so often, as before `WaitTask` existed) until it is `succeeded`,
//! then submitting the next. Per submitter
//! count: tasks completed per second in the measured window, and submit → succeeded latency
//! as the client saw it (p50/p99) and as the cluster recorded it (finished − submitted, which
//! polling does not round up), split at the attempt's recorded start (submitted → started:
//! placement, the runner noticing it and its `started` report; started → finished: the process
//! with its cgroup, and the `finished` report). With `--server-pids`, the CPU the servers (and
//! the processes they started) used per task, and the cores the rest of the machine used in the
//! window. `spawn` is the anchor: the raw cost of starting `true` and
//! waiting for it on this machine, one at a time.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use blixard_core::ClientSession;
use blixard_proto::v1::task_service_client::TaskServiceClient;
use blixard_proto::v1::{ReadOptions, TaskIdRequest, TaskSpec, WaitTaskRequest};
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
    /// Poll with stale `GetTask` reads this often instead of one `WaitTask` per task (for a
    /// server without `WaitTask`, or to compare the two).
    #[arg(long, value_parser = crate::parse_duration)]
    poll: Option<Duration>,
    /// Pids of the servers under test (comma-separated): their CPU (with their children's) per
    /// task is reported, and is not counted as other load.
    #[arg(long, value_delimiter = ',')]
    server_pids: Vec<i32>,
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
    /// submitted → the attempt's `started` applied, as recorded.
    pub to_started_p50_ms: f64,
    pub to_started_p99_ms: f64,
    /// the attempt's `started` → `finished` applied, as recorded.
    pub to_finished_p50_ms: f64,
    pub to_finished_p99_ms: f64,
    /// CPU milliseconds the servers and their children used per completed task (whole case,
    /// warm-up included, over the tasks completed in it); absent without `--server-pids`.
    pub server_cpu_ms_per_task: Option<f64>,
    /// Cores used by other processes than the servers and this benchmark during the case.
    pub other_cores: Option<f64>,
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
    to_started_us: u64,
    to_finished_us: u64,
    at: Instant,
}

async fn one(
    c: &mut TaskServiceClient<Channel>,
    s: &mut ClientSession,
    poll: Option<Duration>,
) -> anyhow::Result<Done> {
    let t0 = Instant::now();
    let seq = s.begin();
    let mut req = tonic::Request::new(spec());
    blixard_proto::rpc::set_session(req.metadata_mut(), &seq);
    let r = c.submit_task(req).await;
    s.end(seq.seq);
    let t = r.context("submit")?.into_inner();
    loop {
        let got = match poll {
            Some(_) => {
                let req = TaskIdRequest { id: t.id.clone(), read: Some(ReadOptions { stale: true }) };
                c.get_task(req).await.context("get")?.into_inner()
            }
            None => {
                let req = WaitTaskRequest { id: t.id.clone(), timeout_ms: 30_000, read: None };
                match c.wait_task(req).await {
                    Ok(r) => r.into_inner(),
                    // Its read barrier refused for a moment (no leader known, under load):
                    // asked again, as the CLI does.
                    Err(e) if e.code() == tonic::Code::Unavailable && t0.elapsed() < Duration::from_secs(30) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("wait")),
                }
            }
        };
        match got.state.as_str() {
            "succeeded" => {
                let finished = got.finished_ms.unwrap_or(got.submitted_ms);
                let started = got.attempts.last().and_then(|a| a.started_ms).unwrap_or(got.submitted_ms);
                let at = Instant::now();
                return Ok(Done {
                    client_us: (at - t0).as_micros() as u64,
                    recorded_us: finished.saturating_sub(got.submitted_ms) * 1000,
                    to_started_us: started.saturating_sub(got.submitted_ms) * 1000,
                    to_finished_us: finished.saturating_sub(started) * 1000,
                    at,
                });
            }
            "failed" | "timed_out" | "cancelled" | "lost" => bail!("task {} ended {}", t.id, got.state),
            _ => {
                if let Some(every) = poll {
                    tokio::time::sleep(every).await;
                }
            }
        }
    }
}

async fn case(a: &TasksArgs, chans: &[Channel], n: usize) -> anyhow::Result<Case> {
    let start = Instant::now();
    let (cpu0, machine) = (crate::cpu::servers_cpu_secs(&a.server_pids), crate::cpu::CpuSample::take(&a.server_pids));
    let from = start + a.warmup;
    let until = from + a.duration;
    let mut handles = Vec::new();
    for i in 0..n {
        let mut c = TaskServiceClient::new(chans[i % chans.len()].clone());
        let poll = a.poll;
        handles.push(tokio::spawn(async move {
            let mut s = ClientSession::new(rand::random::<u128>());
            let (mut done, mut errors, mut first) = (Vec::new(), 0u64, None);
            while Instant::now() < until {
                match one(&mut c, &mut s, poll).await {
                    Ok(d) => done.push(d),
                    Err(e) => {
                        errors += 1;
                        first.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            (done, errors, first)
        }));
    }
    let mut client = Histogram::<u64>::new(3)?;
    let mut recorded = Histogram::<u64>::new(3)?;
    let mut to_started = Histogram::<u64>::new(3)?;
    let mut to_finished = Histogram::<u64>::new(3)?;
    let (mut tasks, mut all, mut errors) = (0u64, 0u64, 0u64);
    for h in handles {
        let (done, e, first) = h.await?;
        errors += e;
        if let Some(first) = first {
            eprintln!("tasks: {n} submitters: an error: {first}");
        }
        all += done.len() as u64;
        for d in done.into_iter().filter(|d| d.at >= from && d.at <= until) {
            tasks += 1;
            client.record(d.client_us.max(1))?;
            recorded.record(d.recorded_us.max(1))?;
            to_started.record(d.to_started_us.max(1))?;
            to_finished.record(d.to_finished_us.max(1))?;
        }
    }
    let pids = &a.server_pids;
    let cpu = crate::cpu::servers_cpu_secs(pids) - cpu0;
    let server_cpu_ms_per_task = (!pids.is_empty() && all > 0).then(|| cpu * 1000.0 / all as f64);
    let other_cores = machine.and_then(|m| m.since(pids)).map(|c| c.other).filter(|_| !pids.is_empty());
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Case {
        submitters: n,
        tasks,
        tasks_per_sec: tasks as f64 / a.duration.as_secs_f64(),
        p50_ms: ms(&client, 0.5),
        p99_ms: ms(&client, 0.99),
        recorded_p50_ms: ms(&recorded, 0.5),
        recorded_p99_ms: ms(&recorded, 0.99),
        to_started_p50_ms: ms(&to_started, 0.5),
        to_started_p99_ms: ms(&to_started, 0.99),
        to_finished_p50_ms: ms(&to_finished, 0.5),
        to_finished_p99_ms: ms(&to_finished, 0.99),
        server_cpu_ms_per_task,
        other_cores,
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
            "tasks: {n} submitters: {:.0} tasks/s, submit → succeeded p50 {:.1} ms, p99 {:.1} ms (recorded p50 {:.1}, p99 {:.1}; to started {:.1} / {:.1}, started to finished {:.1} / {:.1}), {} errors",
            c.tasks_per_sec, c.p50_ms, c.p99_ms, c.recorded_p50_ms, c.recorded_p99_ms,
            c.to_started_p50_ms, c.to_started_p99_ms, c.to_finished_p50_ms, c.to_finished_p99_ms, c.errors
        );
        if let (Some(cpu), Some(other)) = (c.server_cpu_ms_per_task, c.other_cores) {
            eprintln!("tasks: {n} submitters: servers' CPU {cpu:.2} ms per task; other load {other:.2} cores");
        }
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
