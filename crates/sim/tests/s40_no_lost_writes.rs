//! Random fault schedule ([`blixard_sim::chaos`], every kind of fault): no acknowledged write is lost. Every
//! linearizable read during the run, every key read back after healing, and every node's final
//! state hold the key's last acknowledged write (or a later write whose outcome the client never
//! learned).
#![cfg(madsim)]

use blixard_sim::{chaos, invariants, seed};

#[test]
fn no_acknowledged_write_is_lost() {
    let seed = seed();
    invariants::check(seed, "s40_no_lost_writes", &chaos::run(seed), invariants::no_lost_writes);
}
