//! Batch tasks under random faults ([`blixard_sim::taskload`]): never two attempts of one task
//! running at the same instant, checked on every start the fake executors make (see
//! [`blixard_sim::tasks`]).
#![cfg(madsim)]

use blixard_sim::{seed, taskload};

#[test]
fn never_two_attempts_of_a_task_run_at_once() {
    let seed = seed();
    let o = taskload::run(seed);
    assert!(o.view.starts() > 0, "seed {seed}: no attempt ever started, nothing was checked");
    let v = o.view.violations();
    assert!(
        v.is_empty(),
        "seed {seed}: {v:#?}\nhistory: {:#?}\nreplay: scripts/sim.sh {seed} --test s47_tasks_one_attempt_running",
        o.history
    );
    eprintln!("seed {seed}: {} attempt starts checked", o.view.starts());
}
