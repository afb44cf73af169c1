//! `--isolation vm` overhead: `task submit --isolation vm -- true` → the task recorded
//! `succeeded`, against the very same QEMU command line (same kernel, same initramfs with the
//! task appended, same task mode) started by hand → the guest's exit report on its console.
//! The command line and the initramfs are copied from a first, unmeasured attempt while its VM
//! runs. Pairs are interleaved (and their order alternates) so drift hits both sides.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use blixard_proto::v1::task_service_client::TaskServiceClient;
use blixard_proto::v1::{ReadOptions, TaskIdRequest, TaskSpec};
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tonic::transport::Channel;

use crate::vmstart::median;

const EXIT_REPORT: &[u8] = b"BLIXARD-TASK-EXIT ";
const POLL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_secs(180);

pub struct Config {
    pub addr: String,
    pub data_dir: PathBuf,
    pub memory_mib: u32,
    pub pairs: usize,
}

#[derive(Serialize)]
pub struct Report {
    pub pairs: usize,
    pub memory_mib: u32,
    pub blixard_ms: Vec<f64>,
    pub raw_ms: Vec<f64>,
    pub median_blixard_ms: f64,
    pub median_raw_ms: f64,
    /// Median of the per-pair differences (blixard − raw).
    pub median_added_ms: f64,
    pub ratio_of_medians: f64,
}

fn spec(memory_mib: u32) -> TaskSpec {
    TaskSpec {
        command: "true".into(),
        vcpus: 1,
        memory_mib,
        timeout_ms: TIMEOUT.as_millis() as u64,
        backoff_ms: 1000,
        backoff_cap_ms: 1000,
        isolation: "vm".into(),
        ..Default::default()
    }
}

fn wall_ms() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// One submit → `succeeded`, in ms: until the cluster time at which the result was applied
/// (`finished_ms`: the leader's clock, this host's on a one-node cluster), so the polling can
/// be slow (100 ms) and take no CPU from the booting guest (2 ms linearizable reads cost the
/// guest a second on 2 cores).
async fn blixard_once(tasks: &mut TaskServiceClient<Channel>, memory_mib: u32) -> anyhow::Result<f64> {
    let (t0, wall0) = (Instant::now(), wall_ms());
    let id = tasks.submit_task(spec(memory_mib)).await.context("task submit")?.into_inner().id;
    loop {
        tokio::time::sleep(POLL).await;
        let req = TaskIdRequest { id: id.clone(), read: Some(ReadOptions { stale: false }) };
        let t = tasks.get_task(req).await.context("task get")?.into_inner();
        if let (Some(_), Some(done)) = (t.exit_code, t.finished_ms) {
            if t.state != "succeeded" {
                bail!("task {id} ended {}: {:?}", t.state, t.attempts.last().map(|a| &a.error));
            }
            return Ok(done as f64 - wall0);
        }
        if t0.elapsed() > TIMEOUT {
            bail!("task {id} still {} after {TIMEOUT:?}", t.state);
        }
    }
}

/// The command line of a task VM of `tasks_dir` once one runs, and a copy of its initramfs in
/// `raw_dir` (taken while the attempt runs: it is removed when it ends).
async fn capture(tasks_dir: &Path, raw_dir: &Path) -> anyhow::Result<Vec<String>> {
    let needle = tasks_dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for e in std::fs::read_dir("/proc")?.flatten() {
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !(args.iter().any(|a| a.contains("qemu-system")) && args.iter().any(|a| a.contains(&needle))) {
                continue;
            }
            let Some(initrd) = args.iter().position(|a| a == "-initrd").and_then(|i| args.get(i + 1)) else { continue };
            let attempt = Path::new(initrd).parent().context("initrd in a directory")?.to_path_buf();
            std::fs::create_dir_all(raw_dir)?;
            std::fs::copy(initrd, raw_dir.join("initrd.img")).context("copy the task VM's initramfs")?;
            let (from, to) = (attempt.to_string_lossy().into_owned(), raw_dir.to_string_lossy().into_owned());
            let qemu = args.iter().position(|a| a.contains("qemu-system")).unwrap_or(0);
            return Ok(args[qemu..].iter().map(|a| a.replace(&from, &to)).collect());
        }
        if Instant::now() > deadline {
            bail!("no task VM appeared under {}", tasks_dir.display());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One raw QEMU start → the exit report on its console; then kills it. In ms.
async fn raw_once(cmd: &[String], raw_dir: &Path) -> anyhow::Result<f64> {
    use std::os::unix::process::CommandExt;
    let listen = |n: &str| -> anyhow::Result<tokio::net::UnixListener> {
        let p = raw_dir.join(n);
        let _ = std::fs::remove_file(&p);
        Ok(tokio::net::UnixListener::bind(&p)?)
    };
    let (con, out, err) = (listen("console.sock")?, listen("stdout.sock")?, listen("stderr.sock")?);
    // The guest blocks writing a port nobody reads: drain both.
    let drain = |l: tokio::net::UnixListener| {
        tokio::spawn(async move {
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
        })
    };
    let (d1, d2) = (drain(out), drain(err));
    let t0 = Instant::now();
    let mut child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .current_dir(raw_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("spawn raw qemu")?;
    let seen = tokio::time::timeout(TIMEOUT, async {
        let (mut s, _) = con.accept().await?;
        let mut log = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                bail!("the console closed before the exit report");
            }
            log.extend_from_slice(&buf[..n]);
            if log.windows(EXIT_REPORT.len()).any(|w| w == EXIT_REPORT) {
                return Ok(Instant::now());
            }
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    d1.abort();
    d2.abort();
    Ok((seen.context("no exit report")?? - t0).as_secs_f64() * 1e3)
}

pub async fn run(c: Config) -> anyhow::Result<Report> {
    if c.pairs == 0 {
        bail!("invalid --pairs: must be at least 1");
    }
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))?.connect().await?;
    let mut tasks = TaskServiceClient::new(ch);
    let data_dir = std::fs::canonicalize(&c.data_dir)?;
    let raw_dir = data_dir.join("bench-task-raw");
    // A first, unmeasured attempt: warms caches and shows the exact command line.
    let tasks_dir = data_dir.join("tasks");
    let (first, cmd) = tokio::join!(blixard_once(&mut tasks, c.memory_mib), capture(&tasks_dir, &raw_dir));
    first?;
    let cmd = cmd?;
    raw_once(&cmd, &raw_dir).await?;

    let (mut b, mut r) = (Vec::new(), Vec::new());
    for i in 0..c.pairs {
        let blixard_first = i % 2 == 0;
        for side in [blixard_first, !blixard_first] {
            if side {
                b.push(blixard_once(&mut tasks, c.memory_mib).await?);
            } else {
                r.push(raw_once(&cmd, &raw_dir).await?);
            }
        }
        eprintln!("pair {}: blixard {:.1} ms, raw {:.1} ms", i + 1, b[i], r[i]);
    }
    let _ = std::fs::remove_dir_all(&raw_dir);
    let diffs: Vec<f64> = b.iter().zip(&r).map(|(x, y)| x - y).collect();
    let (mb, mr) = (median(&b), median(&r));
    Ok(Report {
        pairs: c.pairs,
        memory_mib: c.memory_mib,
        median_blixard_ms: mb,
        median_raw_ms: mr,
        median_added_ms: median(&diffs),
        ratio_of_medians: mb / mr,
        blixard_ms: b,
        raw_ms: r,
    })
}
