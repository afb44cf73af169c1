//! Random fault schedule ([`blixard_sim::chaos`]): no acknowledged write is lost. Every
//! linearizable read during the run, every key read back after healing, and every node's final
//! state hold the key's last acknowledged write (or a later write whose outcome the client never
//! learned).
#![cfg(madsim)]

use blixard_sim::{chaos, seed};

#[test]
fn no_acknowledged_write_is_lost() {
    let seed = seed();
    let o = chaos::run(seed);
    let replay = format!("replay: scripts/sim.sh {seed} --test s40_no_lost_writes");
    assert!(o.bad_reads.is_empty(), "seed {seed}: reads saw values no write allowed: {:#?}\n{replay}", o.bad_reads);
    let acked = o.allowed.values().filter(|a| a.len() == 1 && a[0].is_some()).count();
    assert!(acked > 0, "seed {seed}: no write was acknowledged, nothing was checked\n{replay}");
    for (k, allowed) in &o.allowed {
        let got = o.read_back.get(k).unwrap_or_else(|| panic!("seed {seed}: {k} could not be read back\n{replay}"));
        assert!(allowed.contains(got), "seed {seed}: {k} reads {got:?} after healing, allowed {allowed:?}\n{replay}");
        if let Ok(finals) = &o.finals {
            for (n, f) in finals {
                let v = f.kv.get(k).cloned();
                assert!(allowed.contains(&v), "seed {seed}: node {n} holds {k} = {v:?}, allowed {allowed:?}\n{replay}");
            }
        }
    }
    eprintln!(
        "seed {seed}: {} keys checked ({acked} with an acknowledged value); {} host crashes lost {} unsynced bytes",
        o.allowed.len(),
        o.disk_crashes,
        o.disk_lost_bytes
    );
}
