//! The invariants of a random fault schedule's run ([`crate::chaos::Outcome`]), one function
//! each: `Ok` says what was checked, `Err` the violation. Each `tests/s4*.rs` file checks one;
//! `tests/s50_all_invariants.rs` checks them all on one run (the cheap way to run many seeds).

use crate::chaos::Outcome;

/// No acknowledged write is lost: every linearizable read during the run, every key read back
/// after healing, and every current node's final state hold the key's last acknowledged write
/// (or a later write whose outcome the client never learned).
pub fn no_lost_writes(o: &Outcome) -> Result<String, String> {
    if !o.bad_reads.is_empty() {
        return Err(format!("reads saw values no write allowed: {:#?}", o.bad_reads));
    }
    let acked = o.allowed.values().filter(|a| a.len() == 1 && a[0].is_some()).count();
    if acked == 0 {
        return Err("no write was acknowledged, nothing was checked".into());
    }
    for (k, allowed) in &o.allowed {
        let got = o.read_back.get(k).ok_or(format!("{k} could not be read back"))?;
        if !allowed.contains(got) {
            return Err(format!("{k} reads {got:?} after healing, allowed {allowed:?}"));
        }
        if let Ok(finals) = &o.finals {
            for (n, f) in finals {
                let v = f.kv.get(k).cloned();
                if !allowed.contains(&v) {
                    return Err(format!("node {n} holds {k} = {v:?}, allowed {allowed:?}"));
                }
            }
        }
    }
    Ok(format!(
        "{} keys checked ({acked} with an acknowledged value); {} host crashes lost {} unsynced bytes",
        o.allowed.len(),
        o.disk_crashes,
        o.disk_lost_bytes
    ))
}

/// At most one leader per term, among the nodes seen claiming leadership.
pub fn one_leader_per_term(o: &Outcome) -> Result<String, String> {
    if o.leaders.is_empty() {
        return Err("no leader was ever seen".into());
    }
    if let Some((term, who)) = o.leaders.iter().find(|(_, who)| who.len() > 1) {
        return Err(format!("term {term} had leaders {who:?}"));
    }
    Ok(format!("{} terms with a leader: {:?}", o.leaders.len(), o.leaders))
}

/// Once every fault is healed, every current node agrees on the members (all voters), the
/// applied index, keys and VM records, and what runs is what the records say.
pub fn converged(o: &Outcome) -> Result<String, String> {
    let finals = o.finals.as_ref().map_err(Clone::clone)?;
    let (n, f) = finals.iter().next().ok_or("no node")?;
    Ok(format!(
        "converged at applied {} (node {n}): members {:?}, {} keys, {} VMs",
        f.applied,
        f.members,
        f.kv.len(),
        f.vms.len()
    ))
}

/// At no instant do two nodes run the same VM.
pub fn one_vm_runner(o: &Outcome) -> Result<String, String> {
    if o.view.starts() == 0 {
        return Err("no VM was ever started, nothing was checked".into());
    }
    let v = o.view.violations();
    if !v.is_empty() {
        let faults: Vec<&String> =
            o.history.iter().filter(|l| l.starts_with("round") || (l.starts_with('c') && l.contains(" vm "))).collect();
        return Err(format!("{v:#?}\nfaults and VM operations: {faults:#?}"));
    }
    Ok(format!("{} starts checked", o.view.starts()))
}

/// Damaged disks are noticed: a node whose old log record had a bit flipped refused to start,
/// naming the file and an offset at or before the flip; a node whose log `fsync` failed with
/// EIO stopped, naming the error.
pub fn disk_faults_noticed(o: &Outcome) -> Result<String, String> {
    let bad: Vec<&String> = o.disk_checks.results.iter().filter_map(|r| r.as_ref().err()).collect();
    if !bad.is_empty() {
        return Err(format!("{bad:#?}"));
    }
    Ok(format!(
        "{} disk faults noticed as expected; faults injected: {:?}",
        o.disk_checks.results.len(),
        o.disk_checks.injected
    ))
}

/// An invariant: `Ok` what was checked, `Err` the violation.
pub type Invariant = fn(&Outcome) -> Result<String, String>;

/// Every invariant above, by name.
pub const ALL: [(&str, Invariant); 5] = [
    ("s40_no_lost_writes", no_lost_writes),
    ("s41_one_leader_per_term", one_leader_per_term),
    ("s42_converged", converged),
    ("s43_one_vm_runner", one_vm_runner),
    ("s48_disk_faults_noticed", disk_faults_noticed),
];

/// Checks `inv` on `o`: panics with the seed and the command that replays it on a violation,
/// prints what was checked otherwise. With `BLIXARD_SIM_HISTORY` set, a violation prints the run's whole history first (every
/// client operation and driver start and stop) for the replay's investigation.
pub fn check(seed: u64, test: &str, o: &Outcome, inv: Invariant) {
    let r = inv(o);
    if r.is_err() && std::env::var_os("BLIXARD_SIM_HISTORY").is_some() {
        eprintln!("seed {seed}: history:\n  {}", o.history.join("\n  "));
    }
    match r {
        Ok(what) => eprintln!("seed {seed}: {test}: {what}"),
        Err(e) => panic!("seed {seed}: {test}: {e}\nreplay: scripts/sim.sh {seed} --test {test}"),
    }
}
