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

pub(crate) fn ms(us: f64) -> String {
    let ms = us / 1000.0;
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
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

/// Sort rank of a `via`: leader, follower, all, then anything else.
fn via_rank(via: &str) -> u8 {
    match via {
        "leader" => 0,
        "follower" => 1,
        "all" => 2,
        _ => 3,
    }
}

/// A table row's label: "1 (via leader)", "1 (via a follower)", "16", ...
pub fn row_label(clients: usize, via: &str) -> String {
    match via {
        "all" => clients.to_string(),
        "leader" => format!("{clients} (via leader)"),
        "follower" => format!("{clients} (via a follower)"),
        other => format!("{clients} (via {other})"),
    }
}

/// One case (client count and `via`) of one system over its rounds: medians of the per-round
/// figures, and the per-round figures themselves (`None` for a round without that case).
#[derive(Clone, Debug, PartialEq)]
pub struct Agg {
    /// Rounds that had the case.
    pub rounds: usize,
    pub errors: u64,
    pub ops_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub other_cores: Option<f64>,
    pub per_round_ops: Vec<Option<f64>>,
    pub per_round_p50: Vec<Option<f64>>,
}

/// The case `clients`/`via` over `rounds` (one report per round), or `None` if no round has it.
pub fn aggregate(rounds: &[WriteReport], clients: usize, via: &str) -> Option<Agg> {
    let per_round: Vec<Option<&CaseResult>> =
        rounds.iter().map(|r| r.cases.iter().find(|c| c.clients == clients && c.via == via)).collect();
    let cases: Vec<&CaseResult> = per_round.iter().flatten().copied().collect();
    if cases.is_empty() {
        return None;
    }
    let med = |f: fn(&CaseResult) -> f64| median(&cases.iter().map(|c| f(c)).collect::<Vec<_>>());
    let other: Vec<f64> = cases.iter().filter_map(|c| c.cpu_other_cores).collect();
    Some(Agg {
        rounds: cases.len(),
        errors: cases.iter().map(|c| c.errors).sum(),
        ops_per_sec: med(|c| c.ops_per_sec)?,
        p50_us: med(|c| c.p50_us as f64)?,
        p99_us: med(|c| c.p99_us as f64)?,
        p999_us: med(|c| c.p999_us as f64)?,
        other_cores: median(&other),
        per_round_ops: per_round.iter().map(|c| c.map(|c| c.ops_per_sec)).collect(),
        per_round_p50: per_round.iter().map(|c| c.map(|c| c.p50_us as f64)).collect(),
    })
}

/// min and max of the per-round ratios `b[i] / e[i]`, pairing round i of one system with round i
/// of the other; `None` unless both ran the same number of rounds (rounds missing on either side
/// or with a zero denominator are skipped).
pub fn ratio_range(b: &[Option<f64>], e: &[Option<f64>]) -> Option<(f64, f64)> {
    if b.len() != e.len() {
        return None;
    }
    let rs: Vec<f64> = b
        .iter()
        .zip(e)
        .filter_map(|(b, e)| match (b, e) {
            (Some(b), Some(e)) if *e > 0.0 => Some(b / e),
            _ => None,
        })
        .collect();
    let min = rs.iter().copied().reduce(f64::min)?;
    let max = rs.iter().copied().reduce(f64::max)?;
    Some((min, max))
}

pub(crate) fn fmt_range(r: Option<(f64, f64)>) -> String {
    match r {
        None => "–".into(),
        Some((lo, hi)) if format!("{lo:.2}") == format!("{hi:.2}") => format!("{lo:.2}"),
        Some((lo, hi)) => format!("{lo:.2}–{hi:.2}"),
    }
}

pub(crate) fn fmt_ratio(b: Option<f64>, e: Option<f64>) -> String {
    match (b, e) {
        (Some(b), Some(e)) if e > 0.0 => format!("{:.2}", b / e),
        _ => "–".into(),
    }
}

/// Every (clients, via) that either system has, in table order.
pub(crate) fn case_keys(blixard: &[WriteReport], etcd: &[WriteReport]) -> Vec<(usize, String)> {
    let mut keys: Vec<(usize, String)> =
        blixard.iter().chain(etcd).flat_map(|r| r.cases.iter().map(|c| (c.clients, c.via.clone()))).collect();
    keys.sort_by(|a, b| (a.0, via_rank(&a.1), &a.1).cmp(&(b.0, via_rank(&b.1), &b.1)));
    keys.dedup();
    keys
}

/// `blixard` and `etcd` hold one report per round (empty: not run yet, shown as "pending");
/// round i of one is paired with round i of the other for the per-round ratio range.
/// `blixard_label` names the blixard column (e.g. "blixard (1 node)" when the 3-node run is
/// pending, "blixard (mTLS)"), `etcd_label` etcd's; `failovers` are (row label, runs) pairs.
pub fn table(
    blixard: &[WriteReport],
    etcd: &[WriteReport],
    (blixard_label, etcd_label): (&str, &str),
    failovers: &[(String, Vec<FailoverResult>)],
) -> String {
    let keys = case_keys(blixard, etcd);
    let aggs: Vec<(usize, &str, Option<Agg>, Option<Agg>)> =
        keys.iter().map(|(n, via)| (*n, via.as_str(), aggregate(blixard, *n, via), aggregate(etcd, *n, via))).collect();
    let pending = |sys: &[WriteReport]| if sys.is_empty() { "pending" } else { "–" };

    let mut out = String::new();
    if blixard.len() > 1 || etcd.len() > 1 {
        let _ = writeln!(
            out,
            "Medians over {} rounds of {bl} and {} of {et}: ops/s and each latency percentile are the \
             median of the per-round values; \"per-round ratio\" is the range of the {bl}/{et} ratios \
             of round 1, round 2, ... (round i of one system paired with round i of the other).\n",
            blixard.len(),
            etcd.len(),
            bl = blixard_label,
            et = etcd_label
        );
    }
    let _ = writeln!(
        out,
        "| clients | {bl} ops/s | {et} ops/s | ratio {bl}/{et} | per-round ratio (min–max) | \
         {bl} p50 / p99 / p99.9 (ms) | {et} p50 / p99 / p99.9 (ms) | other CPU load, cores ({bl} / {et} run) |",
        bl = blixard_label,
        et = etcd_label
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (n, via, b, e) in &aggs {
        let ops = |a: &Option<Agg>, sys: &[WriteReport]| match a {
            Some(a) if a.errors > 0 => format!("{:.0} ({} errors)", a.ops_per_sec, a.errors),
            Some(a) => format!("{:.0}", a.ops_per_sec),
            None => pending(sys).into(),
        };
        let lat = |a: &Option<Agg>, sys: &[WriteReport]| match a {
            Some(a) => format!("{} / {} / {}", ms(a.p50_us), ms(a.p99_us), ms(a.p999_us)),
            None => pending(sys).into(),
        };
        let other = |a: &Option<Agg>| match a.as_ref().and_then(|a| a.other_cores) {
            Some(x) => format!("{x:.2}"),
            None => "–".into(),
        };
        let range = match (b, e) {
            (Some(b), Some(e)) => fmt_range(ratio_range(&b.per_round_ops, &e.per_round_ops)),
            _ => "–".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {range} | {} | {} | {} / {} |",
            row_label(*n, via),
            ops(b, blixard),
            ops(e, etcd),
            fmt_ratio(b.as_ref().map(|a| a.ops_per_sec), e.as_ref().map(|a| a.ops_per_sec)),
            lat(b, blixard),
            lat(e, etcd),
            other(b),
            other(e)
        );
    }
    let sequential: Vec<_> = aggs.iter().filter(|(n, ..)| *n == 1).collect();
    if !sequential.is_empty() {
        out.push('\n');
        let _ = writeln!(
            out,
            "| sequential (1 client) | {bl} p50 (ms) | {et} p50 (ms) | ratio {bl}/{et} (goal ≤ 0.6) | per-round ratio (min–max) |",
            bl = blixard_label,
            et = etcd_label
        );
        out.push_str("|---|---:|---:|---:|---:|\n");
        for (_, via, b, e) in sequential {
            let p50 = |a: &Option<Agg>, sys: &[WriteReport]| match a {
                Some(a) => ms(a.p50_us),
                None => pending(sys).into(),
            };
            let range = match (b, e) {
                (Some(b), Some(e)) => fmt_range(ratio_range(&b.per_round_p50, &e.per_round_p50)),
                _ => "–".into(),
            };
            let label = match *via {
                "all" => "via the first endpoint".to_string(),
                "follower" => "via a follower".to_string(),
                v => format!("via {v}"),
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {range} |",
                p50(b, blixard),
                p50(e, etcd),
                fmt_ratio(b.as_ref().map(|a| a.p50_us), e.as_ref().map(|a| a.p50_us)),
            );
        }
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

    use crate::target::Target;

    fn case(target: Target, clients: usize, via: &str, ops: f64, p50: u64) -> CaseResult {
        CaseResult {
            target,
            clients,
            via: via.into(),
            endpoints: if via == "all" { 3 } else { 1 },
            single_endpoint: None,
            duration_s: 10.0,
            ops: (ops * 10.0) as u64,
            errors: 0,
            redirects: 0,
            ops_per_sec: ops,
            mean_us: p50 as f64,
            p50_us: p50,
            p99_us: p50 * 2,
            p999_us: p50 * 4,
            max_us: p50 * 8,
            first_error: None,
            cpu_busy_cores: Some(1.9),
            cpu_other_cores: Some(0.01),
            server_cpu_us_per_op: None,
        }
    }

    fn round(target: Target, cases: Vec<CaseResult>) -> WriteReport {
        WriteReport {
            target,
            endpoints: vec!["a:1".into(), "b:2".into(), "c:3".into()],
            keys: 100_000,
            value_size: 64,
            warmup_s: 2.0,
            cases,
        }
    }

    /// Three rounds per system: 1 client via leader and via a follower, and 16 clients.
    fn rounds() -> (Vec<WriteReport>, Vec<WriteReport>) {
        let b = [
            (900.0, 1100, 700.0, 1400, 4000.0),
            (800.0, 1300, 650.0, 1500, 3600.0),
            (1000.0, 1000, 750.0, 1300, 4400.0),
        ];
        let e = [
            (1000.0, 900, 1000.0, 900, 5000.0),
            (1000.0, 1000, 1000.0, 1000, 4000.0),
            (1100.0, 800, 1100.0, 800, 5500.0),
        ];
        let mk = |t: Target, v: &[(f64, u64, f64, u64, f64)]| {
            v.iter()
                .map(|&(lo, lp, fo, fp, o16)| {
                    round(
                        t,
                        vec![
                            case(t, 1, "leader", lo, lp),
                            case(t, 1, "follower", fo, fp),
                            case(t, 16, "all", o16, 3000),
                        ],
                    )
                })
                .collect::<Vec<_>>()
        };
        (mk(Target::Blixard, &b), mk(Target::Etcd, &e))
    }

    #[test]
    fn aggregates_are_medians_of_rounds() {
        let (b, e) = rounds();
        let a = aggregate(&b, 1, "leader").unwrap();
        assert_eq!(a.rounds, 3);
        assert_eq!(a.ops_per_sec, 900.0);
        assert_eq!(a.p50_us, 1100.0);
        assert_eq!(a.p99_us, 2200.0);
        assert_eq!(a.p999_us, 4400.0);
        assert_eq!(a.other_cores, Some(0.01));
        assert_eq!(a.per_round_ops, vec![Some(900.0), Some(800.0), Some(1000.0)]);
        assert_eq!(aggregate(&e, 16, "all").unwrap().ops_per_sec, 5000.0);
        assert_eq!(aggregate(&b, 64, "all"), None);
        // An even number of rounds: the mean of the middle two.
        assert_eq!(aggregate(&b[..2], 1, "follower").unwrap().p50_us, 1450.0);
    }

    #[test]
    fn ratio_range_pairs_rounds() {
        let (b, e) = rounds();
        let (b, e) = (aggregate(&b, 1, "leader").unwrap(), aggregate(&e, 1, "leader").unwrap());
        assert_eq!(ratio_range(&b.per_round_ops, &e.per_round_ops), Some((0.8, 1000.0 / 1100.0)));
        assert_eq!(ratio_range(&b.per_round_p50, &e.per_round_p50), Some((1100.0 / 900.0, 1.3)));
        // Different numbers of rounds: no pairing.
        assert_eq!(ratio_range(&b.per_round_ops[..2], &e.per_round_ops), None);
        // A round missing on one side is skipped.
        assert_eq!(ratio_range(&[Some(1.0), None], &[Some(2.0), Some(1.0)]), Some((0.5, 0.5)));
        assert_eq!(ratio_range(&[], &[]), None);
        assert_eq!(fmt_range(Some((0.8, 1000.0 / 1100.0))), "0.80–0.91");
        assert_eq!(fmt_range(Some((0.5, 0.5))), "0.50");
    }

    #[test]
    fn row_labels() {
        assert_eq!(row_label(1, "leader"), "1 (via leader)");
        assert_eq!(row_label(1, "follower"), "1 (via a follower)");
        assert_eq!(row_label(1, "all"), "1");
        assert_eq!(row_label(16, "all"), "16");
    }

    #[test]
    fn table_rows_in_order_with_medians_and_ranges() {
        let (b, e) = rounds();
        let t = table(&b, &e, ("blixard", "etcd"), &[]);
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).collect();
        assert!(t.starts_with("Medians over 3 rounds of blixard and 3 of etcd"), "{t}");
        assert_eq!(
            rows[1],
            "| 1 (via leader) | 900 | 1000 | 0.90 | 0.80–0.91 | 1.10 / 2.20 / 4.40 | 0.90 / 1.80 / 3.60 | 0.01 / 0.01 |"
        );
        assert!(rows[2].starts_with("| 1 (via a follower) | 700 | 1000 | 0.70 | 0.65–0.70 |"), "{t}");
        assert!(rows[3].starts_with("| 16 | 4000 | 5000 | 0.80 | 0.80–0.90 |"), "{t}");
        // The sequential p50 table.
        assert!(rows[4].starts_with("| sequential (1 client) |"), "{t}");
        assert_eq!(rows[5], "| via leader | 1.10 | 0.90 | 1.22 | 1.22–1.30 |");
        assert_eq!(rows[6], "| via a follower | 1.40 | 0.90 | 1.56 | 1.50–1.62 |");
        assert_eq!(rows.len(), 7);
    }

    #[test]
    fn pending_side_and_single_round() {
        let (b, _) = rounds();
        let t = table(&b[..1], &[], ("blixard", "etcd"), &[]);
        assert!(!t.contains("Medians over"), "{t}");
        assert!(t.contains("| 16 | 4000 | pending | – | – | 3.00 / 6.00 / 12.0 | pending | 0.01 / – |"), "{t}");
    }

    #[test]
    fn old_json_without_via_parses_as_all() {
        let old = r#"{"target":"etcd","endpoints":["127.0.0.1:2379"],"keys":100000,"value_size":64,"warmup_s":2.0,
            "cases":[{"target":"etcd","clients":1,"endpoints":3,"duration_s":10.0,"ops":10710,"errors":0,
            "redirects":0,"ops_per_sec":1071.0,"mean_us":930.0,"p50_us":900,"p99_us":1620,"p999_us":4570,
            "max_us":9000,"cpu_busy_cores":1.8,"cpu_other_cores":0.0}]}"#;
        let r: WriteReport = serde_json::from_str(old).unwrap();
        assert_eq!(r.cases[0].via, "all");
        assert_eq!(r.cases[0].single_endpoint, None);
        let t = table(&[], &[r], ("blixard", "etcd"), &[]);
        assert!(t.contains("| 1 | pending | 1071 | – | – | pending | 0.90 / 1.62 / 4.57 | – / 0.00 |"), "{t}");
        assert!(t.contains("| via the first endpoint | pending | 0.90 | – | – |"), "{t}");
    }

    #[test]
    fn new_json_round_trips_via() {
        let r = round(Target::Blixard, vec![case(Target::Blixard, 1, "follower", 700.0, 1400)]);
        let back: WriteReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.cases[0].via, "follower");
    }
}
