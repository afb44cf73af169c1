//! Random fault schedule ([`blixard_sim::chaos`], every kind of fault): damaged disks are
//! noticed. A node whose old, acknowledged log record had a bit flipped refuses to start, naming
//! the segment file and an offset at or before the flipped byte (the schedule then replaces it);
//! a node whose log `fsync` fails with EIO stops, naming the error, rather than go on.
#![cfg(madsim)]

use blixard_sim::{chaos, invariants, seed};

#[test]
fn damaged_disks_are_noticed() {
    let seed = seed();
    invariants::check(seed, "s48_disk_faults_noticed", &chaos::run(seed), invariants::disk_faults_noticed);
}
