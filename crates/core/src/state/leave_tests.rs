//! A member that leaves while it is ready (issue 13's leave bug, found by the random fault
//! schedules): it may still run its VMs until its lease runs out — it hears of its removal late
//! or never, and the leader answered its heartbeats until the removal — so what it ran (or was
//! stopping) starts elsewhere only once the leader declares it down, as it would a silent member.

use super::tests::{add_node, member_node};
use super::*;
use crate::command::{DrainSpec, Outcome};
use crate::scheduler::NodeState;
use crate::spec::VmSpec;
use crate::store::MemStore;

fn env(command: Command) -> Envelope {
    Envelope { session: None, now_ms: 5_000, command }
}

fn run(s: &mut MemStore, index: u64, c: Command) -> Outcome {
    apply(s, index, &env(c)).unwrap().outcome
}

fn spec(name: &str) -> VmSpec {
    VmSpec { name: name.into(), vcpus: 1, memory_mib: 64, ..Default::default() }
}

fn create_on(s: &mut MemStore, index: u64, name: &str, node: Option<u64>) {
    run(s, index, Command::VmCreate { spec: spec(name), node, start: true, queue: false }).unwrap();
}

fn get(s: &MemStore, name: &str) -> VmRecord {
    vm(s, name).unwrap().unwrap_or_else(|| panic!("vm {name}"))
}

fn three_nodes() -> MemStore {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    add_node(&mut s, 3, 8, 4096);
    s
}

#[test]
fn the_vms_of_a_ready_node_that_leaves_start_elsewhere_only_once_it_is_declared_down() {
    let mut s = three_nodes();
    create_on(&mut s, 4, "a", Some(3));
    create_on(&mut s, 5, "b", Some(3));
    nodes::remove(&mut s, 10, 5_000, 3).unwrap();
    assert_eq!(departed_nodes(&s).unwrap(), vec![3]);
    for n in ["a", "b"] {
        let v = get(&s, n);
        assert!(matches!(v.node, Some(1 | 2)), "{n} moved: {v:?}");
        assert_eq!(v.handoff_from, Some(3), "{n} waits for node 3, which may still run it: {:?}", v.events);
    }
    // The leader declares it down once its lease has certainly run out: they may start.
    assert_eq!(run(&mut s, 11, Command::NodeSetState { id: 3, state: NodeState::Down }), Ok(Response::Done));
    assert!(departed_nodes(&s).unwrap().is_empty());
    for n in ["a", "b"] {
        let v = get(&s, n);
        assert_eq!(v.handoff_from, None, "{n}: {:?}", v.events);
        assert_eq!(v.events.last().map(|e| e.what.as_str()), Some("node 3 stopped it"));
    }
    // Declared down again (a late proposal): nothing left to do, and no node of that id.
    assert!(matches!(
        run(&mut s, 12, Command::NodeSetState { id: 3, state: NodeState::Down }),
        Err(CommandError::NotFound(_))
    ));
}

#[test]
fn a_node_that_was_down_when_it_left_holds_nothing_up() {
    let mut s = three_nodes();
    create_on(&mut s, 4, "a", Some(3));
    run(&mut s, 5, Command::NodeSetState { id: 3, state: NodeState::Down }).unwrap();
    nodes::remove(&mut s, 10, 5_000, 3).unwrap();
    assert!(departed_nodes(&s).unwrap().is_empty());
    let v = get(&s, "a");
    assert!(matches!(v.node, Some(1 | 2)) && v.handoff_from.is_none(), "{v:?}");
}

#[test]
fn what_a_drained_node_still_stops_waits_for_it_after_it_leaves() {
    // Seed 41 of s43: node 3 was drained (its VM moved, waiting for node 3 to stop it) and left
    // before it reported the stop; the move's mark went with the removal and the VM started at
    // once on its new node.
    let mut s = three_nodes();
    create_on(&mut s, 4, "a", Some(3));
    run(&mut s, 5, Command::NodeDrain { id: 3, drain: Some(DrainSpec { deadline_ms: 60_000, parallel: 1 }) }).unwrap();
    run(&mut s, 6, Command::VmMove { name: "a".into() }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, Some(3));
    nodes::remove(&mut s, 10, 5_000, 3).unwrap();
    assert_eq!(get(&s, "a").handoff_from, Some(3), "node 3 may still run it: {:?}", get(&s, "a").events);
    // Its report of the stop (if it still gets one through) ends the wait as well.
    run(&mut s, 11, Command::VmHandoff { name: "a".into(), node: 3 }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);
}

#[test]
fn a_vm_deleted_on_a_node_that_left_and_created_again_waits_for_that_node() {
    let mut s = three_nodes();
    create_on(&mut s, 4, "a", Some(3));
    run(&mut s, 5, Command::VmDelete { name: "a".into() }).unwrap();
    nodes::remove(&mut s, 10, 5_000, 3).unwrap();
    create_on(&mut s, 11, "a", None);
    let v = get(&s, "a");
    assert_eq!(v.handoff_from, Some(3), "the new one waits for node 3: {:?}", v.events);
    run(&mut s, 12, Command::NodeSetState { id: 3, state: NodeState::Down }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);
    // Deleted and created again once node 3 is known to run nothing: it waits only for the
    // node it ran on since.
    let on = get(&s, "a").node;
    run(&mut s, 13, Command::VmDelete { name: "a".into() }).unwrap();
    create_on(&mut s, 14, "a", None);
    assert_eq!(get(&s, "a").handoff_from, on);
}

#[test]
fn a_stopped_vm_of_a_node_that_left_started_again_waits_for_that_node() {
    let mut s = three_nodes();
    create_on(&mut s, 4, "a", Some(3));
    nodes::remove(&mut s, 10, 5_000, 3).unwrap();
    // Stopped and started again before node 3 is declared down: still waiting.
    run(&mut s, 11, Command::VmSetDesired { name: "a".into(), desired: crate::spec::PowerState::Stopped }).unwrap();
    run(&mut s, 12, Command::VmSetDesired { name: "a".into(), desired: crate::spec::PowerState::Running }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, Some(3));
}

#[test]
fn a_node_that_left_and_registers_again_is_a_node_like_any_other() {
    let mut s = three_nodes();
    create_on(&mut s, 4, "a", Some(3));
    nodes::remove(&mut s, 10, 5_000, 3).unwrap();
    add_node(&mut s, 3, 8, 4096);
    assert!(departed_nodes(&s).unwrap().is_empty());
    // It still holds the mark until it reports the stop or is declared down.
    assert_eq!(get(&s, "a").handoff_from, Some(3));
    run(&mut s, 11, Command::NodeSetState { id: 3, state: NodeState::Down }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);
}
