//! Blixard's own TLS cost: the same cases with and without TLS, from rounds that ran next to each
//! other (`scripts/bench/raft-vs-etcd.sh` with `TLS=both`), as a markdown table.

use std::fmt::Write as _;

use crate::report::{aggregate, case_keys, fmt_range, fmt_ratio, ms, ratio_range, row_label, Agg, WriteReport};

/// The cost of TLS in percent of the plaintext throughput: `1 − tls/plain`, as "5.0 %"
/// (negative when the TLS run was faster, i.e. within the noise); "–" without both figures.
pub fn cost_percent(tls: Option<f64>, plain: Option<f64>) -> String {
    match (tls, plain) {
        (Some(t), Some(p)) if p > 0.0 => format!("{:.1} %", (1.0 - t / p) * 100.0),
        _ => "–".into(),
    }
}

/// `tls` and `plain` hold one report of blixard per round, round i of one paired with round i of
/// the other; each row gives the medians of both, the ratio of the medians, the range of the
/// per-round ratios and the TLS cost (goal ≤ 10 %).
pub fn table(tls: &[WriteReport], plain: &[WriteReport], tls_label: &str, plain_label: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{tl} against {pl}, the same rounds ({} and {}; round i of one paired with round i of the \
         other, which ran next to each other). TLS cost = 1 − {tl}/{pl} ops/s, of the medians.\n",
        tls.len(),
        plain.len(),
        tl = tls_label,
        pl = plain_label
    );
    let _ = writeln!(
        out,
        "| clients | {tl} ops/s | {pl} ops/s | ratio {tl}/{pl} | per-round ratio (min–max) | TLS cost (goal ≤ 10 %) | \
         {tl} p50 / p99 / p99.9 (ms) | {pl} p50 / p99 / p99.9 (ms) |",
        tl = tls_label,
        pl = plain_label
    );
    out.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (n, via) in case_keys(tls, plain) {
        let (t, p) = (aggregate(tls, n, &via), aggregate(plain, n, &via));
        let ops = |a: &Option<Agg>| match a {
            Some(a) if a.errors > 0 => format!("{:.0} ({} errors)", a.ops_per_sec, a.errors),
            Some(a) => format!("{:.0}", a.ops_per_sec),
            None => "–".into(),
        };
        let lat = |a: &Option<Agg>| match a {
            Some(a) => format!("{} / {} / {}", ms(a.p50_us), ms(a.p99_us), ms(a.p999_us)),
            None => "–".into(),
        };
        let range = match (&t, &p) {
            (Some(t), Some(p)) => fmt_range(ratio_range(&t.per_round_ops, &p.per_round_ops)),
            _ => "–".into(),
        };
        let (to, po) = (t.as_ref().map(|a| a.ops_per_sec), p.as_ref().map(|a| a.ops_per_sec));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {range} | {} | {} | {} |",
            row_label(n, &via),
            ops(&t),
            ops(&p),
            fmt_ratio(to, po),
            cost_percent(to, po),
            lat(&t),
            lat(&p)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::CaseResult;
    use crate::target::Target;

    fn round(cases: &[(usize, &str, f64, u64)]) -> WriteReport {
        WriteReport {
            target: Target::Blixard,
            endpoints: vec!["a:1".into(), "b:2".into(), "c:3".into()],
            keys: 100_000,
            value_size: 64,
            warmup_s: 2.0,
            cases: cases
                .iter()
                .map(|&(clients, via, ops, p50)| CaseResult {
                    target: Target::Blixard,
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
                    p999_us: p50 * 3,
                    max_us: p50 * 4,
                    first_error: None,
                    cpu_busy_cores: Some(1.9),
                    cpu_other_cores: Some(0.0),
                    server_cpu_us_per_op: None,
                })
                .collect(),
        }
    }

    #[test]
    fn cost_is_one_minus_the_ratio_of_medians() {
        assert_eq!(cost_percent(Some(18_000.0), Some(20_000.0)), "10.0 %");
        assert_eq!(cost_percent(Some(20_400.0), Some(20_000.0)), "-2.0 %");
        assert_eq!(cost_percent(None, Some(1.0)), "–");
        assert_eq!(cost_percent(Some(1.0), Some(0.0)), "–");
    }

    #[test]
    fn rows_pair_tls_and_plaintext_rounds() {
        // Three rounds each: medians 64 clients 19,000 (TLS) and 20,000 (plaintext).
        let tls = vec![
            round(&[(1, "leader", 1800.0, 500), (64, "all", 19_000.0, 3000)]),
            round(&[(1, "leader", 1700.0, 520), (64, "all", 18_000.0, 3100)]),
            round(&[(1, "leader", 1900.0, 480), (64, "all", 19_500.0, 2900)]),
        ];
        let plain = vec![
            round(&[(1, "leader", 2000.0, 450), (64, "all", 20_000.0, 2800)]),
            round(&[(1, "leader", 2000.0, 460), (64, "all", 20_000.0, 2900)]),
            round(&[(1, "leader", 2100.0, 440), (64, "all", 21_000.0, 2700)]),
        ];
        let t = table(&tls, &plain, "blixard (mTLS)", "blixard (plaintext)");
        assert!(t.starts_with("blixard (mTLS) against blixard (plaintext), the same rounds (3 and 3;"), "{t}");
        let rows: Vec<&str> = t.lines().filter(|l| l.starts_with("| ")).collect();
        assert!(rows[0].contains("| ratio blixard (mTLS)/blixard (plaintext) |"), "{t}");
        assert!(rows[0].contains("| TLS cost (goal ≤ 10 %) |"), "{t}");
        // 1800/2000 = 0.90; per round 0.85, 0.90, 0.905 → 0.85–0.90 (two decimals).
        assert_eq!(
            rows[1],
            "| 1 (via leader) | 1800 | 2000 | 0.90 | 0.85–0.90 | 10.0 % | 0.50 / 1.00 / 1.50 | 0.45 / 0.90 / 1.35 |"
        );
        // 19000/20000; per round 0.95, 0.90, 0.93.
        assert_eq!(
            rows[2],
            "| 64 | 19000 | 20000 | 0.95 | 0.90–0.95 | 5.0 % | 3.00 / 6.00 / 9.00 | 2.80 / 5.60 / 8.40 |"
        );
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn a_case_missing_on_one_side_shows_a_dash() {
        let t = table(&[round(&[(64, "all", 19_000.0, 3000)])], &[round(&[(16, "all", 9000.0, 1500)])], "tls", "plain");
        assert!(t.contains("| 16 | – | 9000 | – | – | – | – | 1.50 / 3.00 / 4.50 |"), "{t}");
        assert!(t.contains("| 64 | 19000 | – | – | – | – | 3.00 / 6.00 / 9.00 | – |"), "{t}");
    }
}
