//! Batch tasks under random faults ([`blixard_sim::taskload`]): every task reaches exactly one
//! terminal state — once the faults are healed every task has ended, every node records the same
//! end (state and each attempt's result), and no task read in a terminal state was ever read in
//! another state after.
#![cfg(madsim)]

use blixard_sim::{seed, taskload};

#[test]
fn every_task_reaches_exactly_one_terminal_state() {
    let seed = seed();
    let o = taskload::run(seed);
    let replay = format!("replay: scripts/sim.sh {seed} --test s45_tasks_one_terminal_state");
    assert!(o.flips.is_empty(), "seed {seed}: a finished task changed state: {:#?}\n{replay}", o.flips);
    let finals = o.finals.as_ref().unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}\n{replay}", o.history.join("\n")));
    let tasks = &finals[&1];
    assert!(!tasks.is_empty(), "seed {seed}: no task was submitted, nothing was checked\n{replay}");
    eprintln!("seed {seed}: {} tasks ended, the same on every node", tasks.len());
}
