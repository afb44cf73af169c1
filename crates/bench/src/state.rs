//! State at scale (`scripts/bench/state-at-scale.sh`): `vm-fill` creates VM records through
//! Raft until the cluster holds a given number, and `vm-list` walks the whole paged `vm list`
//! timing each page, so the daemon's memory, snapshot, restart and listing can be measured
//! with that many records.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use blixard_proto::v1::vm_service_client::VmServiceClient;
use blixard_proto::v1::{ListVmsRequest, ReadOptions};

use crate::target::{blixard_channel, Writer};
use crate::tls::TlsArgs;

#[derive(clap::Args)]
pub struct FillArgs {
    /// The cluster's API endpoints (HOST:PORT), comma-separated; clients are spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// How many new VMs to create (stopped, 1 vCPU, 64 MiB; each a placement in apply).
    #[arg(long, default_value_t = 100_000)]
    vms: u64,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
}

/// Creates `vms` new VMs with `clients` closed-loop clients; fails on the first refusal.
pub async fn fill(a: FillArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.clients > 0 && !a.endpoints.is_empty(), "--clients and --endpoints must not be empty");
    let tls = a.tls.load()?;
    let mut writers = Vec::new();
    for i in 0..a.clients {
        writers.push(Writer::vm_creates(&a.endpoints[i % a.endpoints.len()], &tls).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut w| {
            let (next, total) = (next.clone(), a.vms);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    w.put(Vec::new(), Vec::new()).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await.context("a client panicked")??;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("created {} VMs in {secs:.1} s ({:.0}/s, {} clients)", a.vms, a.vms as f64 / secs, a.clients);
    Ok(())
}

#[derive(clap::Args)]
pub struct ListArgs {
    /// A blixard node's API (HOST:PORT).
    #[arg(long)]
    endpoint: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// VMs per page (the server allows at most 10,000, fewer if they are large).
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Whole walks, one after the other (the figures are over all of them).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Read the node's local state (`--stale`) instead of a linearizable read.
    #[arg(long)]
    stale: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile of sorted `v`.
fn quantile(v: &[Duration], q: f64) -> Duration {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// Walks every page of `vm list`, `rounds` times: first-page, per-page and whole-walk latency.
pub async fn list(a: ListArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rounds > 0, "--rounds must be at least 1");
    let tls = a.tls.load()?;
    let mut c = VmServiceClient::new(blixard_channel(&a.endpoint, &tls).await?);
    let (mut pages, mut firsts, mut walks) = (Vec::new(), Vec::new(), Vec::new());
    let mut count = 0;
    for _ in 0..a.rounds {
        let (walk, mut start_after, mut n) = (Instant::now(), String::new(), 0usize);
        loop {
            let t = Instant::now();
            let req = ListVmsRequest { read: Some(ReadOptions { stale: a.stale }), limit: a.limit, start_after };
            let r = c
                .list_vms(req)
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))
                .context("vm list")?
                .into_inner();
            let took = t.elapsed();
            if n == 0 {
                firsts.push(took);
            }
            pages.push(took);
            n += r.vms.len();
            if !r.more {
                break;
            }
            start_after = r.next;
        }
        walks.push(walk.elapsed());
        count = n;
    }
    for v in [&mut pages, &mut firsts, &mut walks] {
        v.sort();
    }
    println!(
        "vm list of {count} VMs, pages of {} ({}): first page p50 {:.1} ms; every page p50 {:.1} / p99 {:.1} / max \
         {:.1} ms over {} pages; whole walk p50 {:.0} ms over {} rounds",
        a.limit,
        if a.stale { "stale" } else { "linearizable" },
        ms(quantile(&firsts, 0.5)),
        ms(quantile(&pages, 0.5)),
        ms(quantile(&pages, 0.99)),
        ms(quantile(&pages, 1.0)),
        pages.len(),
        ms(quantile(&walks, 0.5)),
        walks.len(),
    );
    Ok(())
}
