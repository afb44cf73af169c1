//! Random fault schedule ([`blixard_sim::chaos`]): once every fault is healed, every node ends
//! with the same state — the same applied index, keys and VM records — and what runs is what
//! the records say.
#![cfg(madsim)]

use blixard_sim::{chaos, seed};

#[test]
fn every_node_converges_to_the_same_state() {
    let seed = seed();
    let o = chaos::run(seed);
    let finals = o.finals.unwrap_or_else(|e| {
        panic!("seed {seed}: {e}\nreplay: scripts/sim.sh {seed} --test s42_converged");
    });
    let f = &finals[&1];
    eprintln!("seed {seed}: converged at applied {}: {} keys, {} VMs", f.applied, f.kv.len(), f.vms.len());
}
