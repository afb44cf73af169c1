//! Random fault schedule ([`blixard_sim::chaos`], every kind of fault): once every fault is healed, every node ends
//! with the same state — the same applied index, keys and VM records — and what runs is what
//! the records say.
#![cfg(madsim)]

use blixard_sim::{chaos, invariants, seed};

#[test]
fn every_node_converges_to_the_same_state() {
    let seed = seed();
    invariants::check(seed, "s42_converged", &chaos::run(seed), invariants::converged);
}
