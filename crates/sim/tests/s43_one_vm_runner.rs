//! Random fault schedule ([`blixard_sim::chaos`], every kind of fault): at no instant do two nodes run the same VM,
//! checked on every start the fake drivers make (see [`blixard_sim::running`]).
#![cfg(madsim)]

use blixard_sim::{chaos, invariants, seed};

#[test]
fn at_no_instant_do_two_nodes_run_one_vm() {
    let seed = seed();
    invariants::check(seed, "s43_one_vm_runner", &chaos::run(seed), invariants::one_vm_runner);
}
