//! Random fault schedule ([`blixard_sim::chaos`]): the same seed gives the same history —
//! faults, every client operation with its outcome, Raft index and simulated instant, every VM
//! start and stop with its instant — in two fresh processes, as a replay
//! (`scripts/sim.sh SEED`) is one. (Two runs in one process do not always agree: something in
//! the stack keeps process-wide state from one simulation to the next; see the README.)
#![cfg(madsim)]

use blixard_sim::{chaos, seed};

const OUT: &str = "BLIXARD_SIM_HISTORY_OUT";

#[test]
fn the_same_seed_gives_the_same_history() {
    let seed = seed();
    if let Ok(out) = std::env::var(OUT) {
        // The child: one run, its history (then its driver events) to the file.
        let o = chaos::run(seed);
        let mut lines = o.history;
        lines.push("-- driver events".into());
        lines.extend(o.view.log());
        std::fs::write(out, lines.join("\n")).expect("write the history");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("this test's executable");
    let runs: Vec<Vec<String>> = (0..2)
        .map(|i| {
            let out = dir.path().join(format!("run{i}"));
            let st = std::process::Command::new(&exe)
                .args(["--exact", "the_same_seed_gives_the_same_history", "--test-threads", "1"])
                .env(OUT, &out)
                .env("BLIXARD_SIM_SEED", seed.to_string())
                .status()
                .expect("run the child");
            assert!(st.success(), "seed {seed}: run {i} failed: {st}");
            std::fs::read_to_string(&out).expect("the child's history").lines().map(String::from).collect()
        })
        .collect();
    let (first, second) = (&runs[0], &runs[1]);
    if first != second {
        let at = first.iter().zip(second).position(|(a, b)| a != b).unwrap_or(first.len().min(second.len()));
        panic!(
            "seed {seed}: the histories differ at line {at}: {:?} vs {:?}\nreplay: scripts/sim.sh {seed} --test s44_same_seed",
            first.get(at),
            second.get(at)
        );
    }
    let faults: Vec<&str> = first.iter().filter(|l| l.starts_with("round")).map(|s| s.as_str()).collect();
    eprintln!("seed {seed}: {} events, faults:\n  {}", first.len(), faults.join("\n  "));
}
