//! The side-by-side markdown table from the JSON that `write --json` and `failover --json` print.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::failover::FailoverResult;
use crate::load::CaseResult;

/// What `write --json` prints: the setup, then one entry per client count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteReport {
    pub target: crate::target::Target,
    pub endpoints: Vec<String>,
    pub keys: u64,
    pub value_size: usize,
    pub warmup_s: f64,
    pub cases: Vec<CaseResult>,
}

pub fn read_write(path: &Path) -> anyhow::Result<WriteReport> {
    let s = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&s).with_context(|| format!("{} is not `write --json` output", path.display()))
}

/// One `failover --json` result per non-empty line.
pub fn read_failovers(path: &Path) -> anyhow::Result<Vec<FailoverResult>> {
    let s = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("{}: not `failover --json` output", path.display())))
        .collect()
}

fn ms(us: u64) -> String {
    let ms = us as f64 / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn lat(c: &CaseResult) -> String {
    format!("{} / {} / {}", ms(c.p50_us), ms(c.p99_us), ms(c.p999_us))
}

fn errs(c: &CaseResult) -> String {
    if c.errors == 0 {
        String::new()
    } else {
        format!(" ({} errors)", c.errors)
    }
}

pub fn median(xs: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

fn failover_row(label: &str, runs: &[FailoverResult]) -> String {
    let xs: Vec<f64> = runs.iter().map(|r| r.failover_ms).collect();
    match median(&xs) {
        None => format!("| {label} | pending | | | 0 |"),
        Some(m) => {
            let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let max = xs.iter().copied().fold(0.0, f64::max);
            format!("| {label} | {m:.0} | {min:.0} | {max:.0} | {} |", xs.len())
        }
    }
}

/// `blixard_label` names the blixard column (e.g. "blixard (1 node)" when the 3-node run is pending);
/// `failovers` are (row label, runs) pairs.
pub fn table(
    blixard: Option<&WriteReport>,
    etcd: Option<&WriteReport>,
    blixard_label: &str,
    failovers: &[(String, Vec<FailoverResult>)],
) -> String {
    let mut clients: Vec<usize> =
        blixard.iter().chain(etcd.iter()).flat_map(|r| r.cases.iter().map(|c| c.clients)).collect();
    clients.sort_unstable();
    clients.dedup();
    let find = |r: Option<&WriteReport>, n: usize| r.and_then(|r| r.cases.iter().find(|c| c.clients == n).cloned());

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| clients | {bl} ops/s | etcd ops/s | ratio {bl}/etcd | {bl} p50 / p99 / p99.9 (ms) | \
         etcd p50 / p99 / p99.9 (ms) | other CPU load, cores ({bl} / etcd run) |",
        bl = blixard_label
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|\n");
    for n in clients {
        let (b, e) = (find(blixard, n), find(etcd, n));
        let ops = |c: &Option<CaseResult>| match c {
            Some(c) => format!("{:.0}{}", c.ops_per_sec, errs(c)),
            None => "pending".into(),
        };
        let ratio = match (&b, &e) {
            (Some(b), Some(e)) if e.ops_per_sec > 0.0 => format!("{:.2}", b.ops_per_sec / e.ops_per_sec),
            _ => "–".into(),
        };
        let l = |c: &Option<CaseResult>| c.as_ref().map(lat).unwrap_or_else(|| "pending".into());
        let other = |c: &Option<CaseResult>| match c.as_ref().and_then(|c| c.cpu_other_cores) {
            Some(x) => format!("{x:.2}"),
            None => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {n} | {} | {} | {ratio} | {} | {} | {} / {} |",
            ops(&b),
            ops(&e),
            l(&b),
            l(&e),
            other(&b),
            other(&e)
        );
    }
    if !failovers.is_empty() {
        out.push('\n');
        out.push_str("| leader failover: SIGKILL → first write (ms) | median | min | max | runs |\n");
        out.push_str("|---|---:|---:|---:|---:|\n");
        for (label, runs) in failovers {
            let _ = writeln!(out, "{}", failover_row(label, runs));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
