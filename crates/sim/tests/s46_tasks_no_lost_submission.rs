//! Batch tasks under random faults ([`blixard_sim::taskload`]): no acknowledged submission is
//! lost — every task the cluster acknowledged is held, ended, by every node at the end.
#![cfg(madsim)]

use blixard_sim::{seed, taskload};

#[test]
fn no_acknowledged_task_submission_is_lost() {
    let seed = seed();
    let o = taskload::run(seed);
    let replay = format!("replay: scripts/sim.sh {seed} --test s46_tasks_no_lost_submission");
    assert!(!o.acked.is_empty(), "seed {seed}: no submission was acknowledged, nothing was checked\n{replay}");
    let finals = o.finals.as_ref().unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}\n{replay}", o.history.join("\n")));
    for (id, client) in &o.acked {
        for (n, tasks) in finals {
            assert!(
                tasks.contains_key(id),
                "seed {seed}: node {n} lost t{id} (acknowledged to client {client})\n{replay}"
            );
        }
    }
    eprintln!("seed {seed}: {} acknowledged submissions, all held by every node", o.acked.len());
}
