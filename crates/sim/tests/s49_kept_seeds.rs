//! Seeds of the random fault schedules that once found a bug, kept as regression cases (each
//! runs whatever seed the run was given; `scripts/sim.sh --seeds` skips this file).
//!
//! - seed 7: a VM deleted while its node could not hear, and created again under its name at
//!   once, started on another node while the old node still ran it (fixed: a deleted or moved
//!   VM leaves a handoff mark on a node that may still run it, and the next VM of the name
//!   starts only once that node reported it stopped or was declared down).
//! - seeds 12 and 27: a node fenced while the leader still counted it ready (it could send but
//!   not hear) kept its VMs stopped for good once it held a lease again: fencing stops a VM as
//!   a graceful stop would, and the reconciler took it for the guest's own power-off, which the
//!   default restart policy (on-failure) does not restart (fixed: the lease remembers what
//!   fencing killed, and the reconciler counts it as a failure).
//!
//! (Those three replay the schedules they were found with: [`Faults::Classic`].)
//!
//! Schedules with every kind of fault ([`Faults::All`]: leader transfers, membership changes,
//! disk faults too):
//! - seed 3: a node left the cluster while it held a VM, and the VM was "moved" to that very
//!   node — the leaving node was still a placement candidate while its VMs moved — so it never
//!   ran again (fixed: a leaving node's capacity row goes before its VMs and tasks move; unit
//!   test `the_vms_of_a_node_that_leaves_never_move_to_that_node`).
//! - seed 10: after an fsync EIO stopped a node's Raft driver, its VM reconciler waited on the
//!   driver's closed channel, which returns at once: a loop that never yielded, so the node
//!   could never exit (the whole simulation spun forever; a single-threaded daemon would hang
//!   the same way). Fixed: the reconciler ends when the driver stops.
//! - seeds 41 and 138 (of `s43`): a node was drained and left before it reported its moved VMs
//!   stopped; the removal cleared their handoff marks and they started at once on their new
//!   nodes while the node that left still ran them (seed 41 through a VM deleted and created
//!   again under its name). Fixed: a node that leaves while ready stays "departed" until the
//!   leader declares it down as a silent member (its lease has certainly run out); what it ran
//!   waits until then (unit tests `leave_tests` in `blixard-core`, scenario
//!   `tests/s32_leave_undrained.rs`).
//! - seeds 18, 126 and 208 (of `s42`): a node never came back after a crash: the claim its log
//!   wrote when idle was never synced before a snapshot's reset moved to a new segment, and the
//!   crash tore it in a segment taken as complete, so the log refused to open (fixed: a reset
//!   and a rollover sync the active segment's every byte first; `disk_lies`
//!   `a_crash_after_a_reset_reopens`).
//! - seeds 236 and 351 (of `s48`): a bit flip past the log's last durability claim was
//!   expected to be refused (a defect of the schedule: such a byte cannot be told from a torn
//!   write; it now expects a refusal where a claim covers the byte).
//! - seeds 370, 653 and 863 (of `s43`: a VM on two nodes within ~0.5 s after a paused daemon
//!   resumed) and 848, 1068, 1083, 2063 and 2106 (of `s42`: a node added right after a
//!   replacement never became a voter; a member's view of the membership stuck before two
//!   replacements) failed on the `sim` branch of stop 21 and pass at the merged code (streamed
//!   heartbeats changed how those schedules unfold). Their causes were not found, so they are
//!   kept here: a change that brings one back fails this test (docs/RELIABILITY.md, section 3).
//!
//! Task schedules ([`blixard_sim::taskload`]):
//! - seeds 9 and 10: a node's `Started` report for a task attempt, made before a partition,
//!   was applied but answered only after the partition healed, by when the node had been
//!   declared down and the task started elsewhere; the node then started its old attempt too
//!   (fixed: after its `Started` report is answered a node starts the attempt only if it still
//!   holds its lease and the attempt is still current in what it has applied).
#![cfg(madsim)]

use blixard_sim::nemesis::Faults;
use blixard_sim::{chaos, invariants, taskload};

#[test]
fn kept_seeds_pass_every_invariant() {
    for seed in [7, 12, 27] {
        let o = chaos::run_with(seed, Faults::Classic);
        o.view.assert_ok(seed);
        let finals = o.finals.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for (k, allowed) in &o.allowed {
            for (n, f) in &finals {
                let v = f.kv.get(k).cloned();
                assert!(allowed.contains(&v), "seed {seed}: node {n} holds {k} = {v:?}, allowed {allowed:?}");
            }
        }
        assert!(o.leaders.values().all(|w| w.len() <= 1), "seed {seed}: two leaders in a term: {:?}", o.leaders);
    }
}

#[test]
fn kept_seeds_of_every_kind_of_fault_pass_every_invariant() {
    for seed in [3, 10, 18, 41, 126, 138, 208, 236, 351, 370, 653, 848, 863, 1068, 1083, 2063, 2106] {
        let o = chaos::run_with(seed, Faults::All);
        for (name, inv) in invariants::ALL {
            invariants::check(seed, name, &o, inv);
        }
    }
}

#[test]
fn kept_task_seeds_pass_every_invariant() {
    for seed in [9, 10] {
        let o = taskload::run(seed);
        assert!(o.view.violations().is_empty(), "seed {seed}: {:#?}", o.view.violations());
        assert!(o.flips.is_empty(), "seed {seed}: {:#?}", o.flips);
        let finals = o.finals.unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        for id in o.acked.keys() {
            assert!(finals.values().all(|f| f.contains_key(id)), "seed {seed}: t{id} lost");
        }
    }
}
