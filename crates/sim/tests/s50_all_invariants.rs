//! Random fault schedule ([`blixard_sim::chaos`], every kind of fault): every invariant of
//! `s40`–`s43` and `s48` on one run of the seed — the cheap way to run many seeds
//! (`scripts/sim.sh --seeds A..B --test s50_all_invariants`); CI runs one invariant per file.
//! (`s44_same_seed` needs two runs of its own.)
#![cfg(madsim)]

use blixard_sim::{chaos, invariants, seed};

#[test]
fn every_invariant_holds_on_one_run() {
    let seed = seed();
    let o = chaos::run(seed);
    for (name, inv) in invariants::ALL {
        invariants::check(seed, name, &o, inv);
    }
}
