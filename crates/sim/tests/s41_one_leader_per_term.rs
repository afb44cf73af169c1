//! Random fault schedule ([`blixard_sim::chaos`], every kind of fault): at most one leader per term, among the nodes
//! seen claiming leadership (every node sampled every 50 ms of simulated time).
#![cfg(madsim)]

use blixard_sim::{chaos, invariants, seed};

#[test]
fn at_most_one_leader_per_term() {
    let seed = seed();
    invariants::check(seed, "s41_one_leader_per_term", &chaos::run(seed), invariants::one_leader_per_term);
}
