//! The closed-loop write load: each client sends a put, waits for the answer, records the latency
//! and sends the next one, so offered load is set by the number of clients, never by a rate.

use std::time::Duration;

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::target::{Target, Writer};

/// A put slower than this counts as an error (it would otherwise stall a client forever).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Histogram range: 1 µs to 60 s, 3 significant digits.
const MAX_US: u64 = 60_000_000;

pub struct LoadConfig {
    pub clients: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub keys: u64,
    pub value_size: usize,
    pub seed: u64,
    /// The servers under test, so their CPU is not counted as interference.
    pub server_pids: Vec<i32>,
    /// Which endpoints the writers handed to [`run_case`] are: recorded in [`CaseResult::via`].
    pub via: Via,
    /// All clients together start at most this many puts per second (each client paces itself
    /// at its share, still waiting for each answer); `None`: as fast as answers come. A fixed
    /// rate compares two builds' CPU per put at the same load, which a busy machine's
    /// closed-loop throughput does not.
    pub rate: Option<f64>,
}

/// Which endpoint(s) a case's clients write through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    /// Only the current leader's endpoint.
    Leader,
    /// Only the first endpoint that is not the leader's (its writes are forwarded).
    Follower,
    /// Round-robin over all endpoints (with 1 client: the first endpoint).
    All,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Leader => "leader",
            Via::Follower => "follower",
            Via::All => "all",
        }
    }
}

fn via_all() -> String {
    Via::All.as_str().to_string()
}

/// One benchmark case: one target, one client count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaseResult {
    pub target: Target,
    pub clients: usize,
    /// "leader", "follower" or "all" (see [`Via`]); output from before the field existed was "all".
    #[serde(default = "via_all")]
    pub via: String,
    /// How many endpoints the clients were spread over.
    pub endpoints: usize,
    /// The endpoint a single client wrote through (1-client cases only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_endpoint: Option<String>,
    pub duration_s: f64,
    /// Successful puts that completed in the measured window.
    pub ops: u64,
    pub errors: u64,
    /// Puts a blixard follower bounced and the client re-sent to the leader (0 when followers forward).
    pub redirects: u64,
    pub ops_per_sec: f64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// CPU cores busy machine-wide during the measured window (all processes).
    #[serde(default)]
    pub cpu_busy_cores: Option<f64>,
    /// Of those, cores used by processes other than the servers and this benchmark:
    /// interference from whatever else runs on the machine.
    #[serde(default)]
    pub cpu_other_cores: Option<f64>,
    /// CPU time (user + system) of the servers (`--server-pids`) per successful operation, in
    /// µs: what an operation costs, whatever else runs on the machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_op: Option<f64>,
}

struct ClientStats {
    hist: Histogram<u64>,
    errors: u64,
    redirects: u64,
    first_error: Option<String>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// An 8-byte key: the zero-padded decimal of a number below `keys` (≤ 10^8 keeps it 8 bytes).
pub fn key(n: u64) -> Vec<u8> {
    format!("{n:08}").into_bytes()
}

pub fn value(rng: &mut impl Rng, size: usize) -> Vec<u8> {
    (0..size).map(|_| rng.gen_range(b'a'..=b'z')).collect()
}

async fn client(
    mut w: Writer,
    seed: u64,
    keys: u64,
    value_size: usize,
    measure_from: Instant,
    end: Instant,
    pace: Option<(Duration, Duration)>,
) -> ClientStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let val = value(&mut rng, value_size);
    let mut st = ClientStats { hist: new_hist(), errors: 0, redirects: 0, first_error: None };
    // (interval between this client's puts, its offset among the clients)
    let mut next = pace.map(|(_, offset)| Instant::now() + offset);
    loop {
        if let (Some(n), Some((interval, _))) = (next.as_mut(), pace) {
            tokio::time::sleep_until(*n).await;
            *n = (*n + interval).max(Instant::now());
        }
        let start = Instant::now();
        if start >= end {
            break;
        }
        let k = key(rng.gen_range(0..keys));
        let r = tokio::time::timeout(OP_TIMEOUT, w.put(k, val.clone())).await;
        let done = Instant::now();
        // Count what completed inside the window; the ops straddling its start are warm-up.
        if done < measure_from || done > end {
            continue;
        }
        match r {
            Ok(Ok(ok)) => {
                let us = done.duration_since(start).as_micros().clamp(1, MAX_US as u128) as u64;
                st.hist.record(us).expect("value within bounds");
                st.redirects += u64::from(ok.redirected);
            }
            Ok(Err(e)) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(_) => {
                st.errors += 1;
                st.first_error.get_or_insert_with(|| format!("put timed out after {OP_TIMEOUT:?}"));
            }
        }
    }
    st
}

/// Runs one case: `cfg.clients` closed loops spread round-robin over `writers` (one per endpoint,
/// in the order of `endpoints`, their addresses).
pub async fn run_case(target: Target, writers: &[Writer], endpoints: &[String], cfg: &LoadConfig) -> CaseResult {
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let tasks: Vec<_> = (0..cfg.clients)
        .map(|i| {
            let w = writers[i % writers.len()].clone();
            let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
            let pace = cfg.rate.map(|r| {
                let interval = Duration::from_secs_f64(cfg.clients as f64 / r);
                (interval, interval.mul_f64(i as f64 / cfg.clients as f64))
            });
            tokio::spawn(client(w, seed, cfg.keys, cfg.value_size, measure_from, end, pace))
        })
        .collect();
    tokio::time::sleep_until(measure_from).await;
    let cpu = crate::cpu::CpuSample::take(&cfg.server_pids);
    let mut hist = new_hist();
    let (mut errors, mut redirects, mut first_error) = (0, 0, None);
    for t in tasks {
        let st = t.await.expect("client task panicked");
        hist.add(&st.hist).expect("same histogram bounds");
        errors += st.errors;
        redirects += st.redirects;
        if first_error.is_none() {
            first_error = st.first_error;
        }
    }
    let cpu = cpu.and_then(|c| c.since(&cfg.server_pids));
    let secs = cfg.duration.as_secs_f64();
    CaseResult {
        target,
        clients: cfg.clients,
        via: cfg.via.as_str().to_string(),
        endpoints: writers.len(),
        single_endpoint: if cfg.clients == 1 { endpoints.first().cloned() } else { None },
        duration_s: secs,
        ops: hist.len(),
        errors,
        redirects,
        ops_per_sec: hist.len() as f64 / secs,
        mean_us: if hist.is_empty() { 0.0 } else { hist.mean() },
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        max_us: hist.max(),
        first_error,
        cpu_busy_cores: cpu.map(|c| c.all),
        cpu_other_cores: cpu.map(|c| c.other),
        server_cpu_us_per_op: cpu
            .filter(|_| !cfg.server_pids.is_empty() && !hist.is_empty())
            .map(|c| c.servers_s * 1e6 / hist.len() as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_eight_bytes() {
        assert_eq!(key(0), b"00000000");
        assert_eq!(key(99_999), b"00099999");
    }

    #[test]
    fn values_have_the_asked_size() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(value(&mut rng, 64).len(), 64);
    }
}
