//! Random fault schedule ([`blixard_sim::chaos`]): the same seed gives the same history —
//! faults, every client operation with its outcome and Raft index, every VM start and stop with
//! its simulated instant.
#![cfg(madsim)]

use blixard_sim::{chaos, seed};

#[test]
fn the_same_seed_gives_the_same_history() {
    let seed = seed();
    let first = chaos::run(seed).history;
    let second = chaos::run(seed).history;
    if first != second {
        let at = first.iter().zip(&second).position(|(a, b)| a != b).unwrap_or(first.len().min(second.len()));
        panic!(
            "seed {seed}: the histories differ at line {at}: {:?} vs {:?}\nreplay: scripts/sim.sh {seed} --test s44_same_seed",
            first.get(at),
            second.get(at)
        );
    }
    let faults: Vec<&String> = first.iter().filter(|l| l.starts_with("round")).collect();
    eprintln!("seed {seed}: {} events, faults:\n  {}", first.len(), faults.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "));
}
