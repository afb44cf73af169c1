//! Random fault schedule ([`blixard_sim::chaos`]): at no instant do two nodes run the same VM,
//! checked on every start the fake drivers make (see [`blixard_sim::running`]).
#![cfg(madsim)]

use blixard_sim::{chaos, seed};

#[test]
fn at_no_instant_do_two_nodes_run_one_vm() {
    let seed = seed();
    let o = chaos::run(seed);
    assert!(o.view.starts() > 0, "seed {seed}: no VM was ever started, nothing was checked");
    if !o.view.violations().is_empty() {
        let faults: Vec<&String> =
            o.history.iter().filter(|l| l.starts_with("round") || (l.starts_with('c') && l.contains(" vm "))).collect();
        eprintln!("faults and VM operations: {faults:#?}\nreplay: scripts/sim.sh {seed} --test s43_one_vm_runner");
    }
    o.view.assert_ok(seed);
    eprintln!("seed {seed}: {} starts checked", o.view.starts());
}
