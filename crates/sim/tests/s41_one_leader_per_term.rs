//! Random fault schedule ([`blixard_sim::chaos`]): at most one leader per term, among the nodes
//! seen claiming leadership (every node sampled every 50 ms of simulated time).
#![cfg(madsim)]

use blixard_sim::{chaos, seed};

#[test]
fn at_most_one_leader_per_term() {
    let seed = seed();
    let o = chaos::run(seed);
    assert!(!o.leaders.is_empty(), "seed {seed}: no leader was ever seen");
    for (term, who) in &o.leaders {
        assert!(
            who.len() <= 1,
            "seed {seed}: term {term} had leaders {who:?}\nreplay: scripts/sim.sh {seed} --test s41_one_leader_per_term"
        );
    }
    eprintln!("seed {seed}: {} terms with a leader: {:?}", o.leaders.len(), o.leaders);
}
