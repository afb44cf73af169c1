//! Orchestration in the state machine: pending VMs placed when capacity appears, resources
//! released by stopped VMs, VMs moved off nodes that are down or removed (per their policies),
//! anti-affinity, drains with a handoff.

use super::tests::{add_node, member_node};
use super::*;
use crate::command::{DrainSpec, Outcome, Response};
use crate::placement::{OnNodeLoss, PlacementSpec};
use crate::scheduler::NodeState;
use crate::spec::{Observed, Phase, PowerState, RestartPolicy, VmSpec};
use crate::store::MemStore;
use crate::Registration;

fn env(command: Command) -> Envelope {
    Envelope { session: None, now_ms: 5_000, command }
}

fn run(s: &mut MemStore, index: u64, c: Command) -> Outcome {
    apply(s, index, &env(c)).unwrap().outcome
}

fn spec(name: &str, memory_mib: u32) -> VmSpec {
    VmSpec { name: name.into(), vcpus: 1, memory_mib, ..Default::default() }
}

fn create(s: &mut MemStore, index: u64, sp: VmSpec) -> Outcome {
    run(s, index, Command::VmCreate { spec: sp, node: None, start: true, queue: true })
}

fn get(s: &MemStore, name: &str) -> VmRecord {
    vm(s, name).unwrap().unwrap_or_else(|| panic!("vm {name}"))
}

fn events(s: &MemStore, name: &str) -> Vec<String> {
    get(s, name).events.into_iter().map(|e| e.what).collect()
}

fn used(s: &MemStore, id: u64) -> u64 {
    nodes::get(s, id).unwrap().unwrap().used.memory_mib
}

#[test]
fn a_vm_created_before_any_node_registered_waits_and_is_placed_when_one_does() {
    let mut s = MemStore::default();
    super::run(&mut s, 1, &env(Command::Bootstrap { id: 1, addr: "h:1".into() })).unwrap().unwrap();
    assert!(create(&mut s, 2, spec("web", 256)).is_ok());
    let v = get(&s, "web");
    assert_eq!((v.node, v.pending.as_deref()), (None, Some("no node has registered its capacity yet")));
    let node = Registration { id: 1, vcpus: 4, memory_mib: 1024, ..Default::default() };
    run(&mut s, 3, Command::NodeRegister { node }).unwrap();
    let v = get(&s, "web");
    assert_eq!((v.node, v.pending, v.placed_index), (Some(1), None, 3));
    assert_eq!(events(&s, "web"), ["pending: no node has registered its capacity yet", "placed on node 1"]);
    assert_eq!(used(&s, 1), 256);
}

#[test]
fn a_vm_no_node_could_ever_hold_is_refused_at_once_even_when_queueing() {
    let mut s = member_node(1, 4, 1024);
    let r = create(&mut s, 2, spec("huge", 4096));
    assert_eq!(
        r,
        Err(CommandError::FailedPrecondition(
            "cannot place vm \"huge\": node 1: needs 4096 MiB memory, 1024 MiB free".into()
        ))
    );
    // Without --no-queue a VM that would fit an empty node waits.
    create(&mut s, 3, spec("a", 800)).unwrap();
    create(&mut s, 4, spec("b", 800)).unwrap();
    assert_eq!(get(&s, "b").node, None);
    let no_queue = Command::VmCreate { spec: spec("c", 800), node: None, start: true, queue: false };
    assert!(matches!(run(&mut s, 5, no_queue), Err(CommandError::FailedPrecondition(_))));
}

#[test]
fn stopped_vms_release_their_resources_and_starting_one_rechecks() {
    let mut s = member_node(1, 4, 1024);
    create(&mut s, 2, spec("a", 800)).unwrap();
    create(&mut s, 3, spec("b", 800)).unwrap();
    assert_eq!((get(&s, "b").node, used(&s, 1)), (None, 800));
    run(&mut s, 4, Command::VmSetDesired { name: "a".into(), desired: PowerState::Stopped }).unwrap();
    // a's memory went to b, which was waiting for it.
    assert_eq!((get(&s, "b").node, used(&s, 1)), (Some(1), 800));
    // a cannot start again where it is, nor anywhere: it waits.
    run(&mut s, 5, Command::VmSetDesired { name: "a".into(), desired: PowerState::Running }).unwrap();
    assert_eq!(get(&s, "a").node, None);
    add_node(&mut s, 2, 4, 1024);
    assert_eq!(get(&s, "a").node, Some(2));
    assert!(get(&s, "a").fresh_disk, "it moved: a fresh disk");
    run(&mut s, 9, Command::VmDelete { name: "b".into() }).unwrap();
    assert_eq!(used(&s, 1), 0);
}

#[test]
fn vms_of_a_node_that_is_down_move_wait_or_are_lost_per_their_policies() {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    let pinned = |name: &str, f: &dyn Fn(&mut VmSpec)| {
        let mut sp = spec(name, 256);
        f(&mut sp);
        Command::VmCreate { spec: sp, node: Some(1), start: true, queue: false }
    };
    run(&mut s, 3, pinned("moves", &|sp| sp.restart_policy = RestartPolicy::Always)).unwrap();
    run(&mut s, 4, pinned("lost", &|sp| sp.restart_policy = RestartPolicy::Never)).unwrap();
    run(&mut s, 5, pinned("waits", &|sp| sp.placement.on_node_loss = OnNodeLoss::Wait)).unwrap();
    run(&mut s, 6, Command::VmCreate { spec: spec("off", 256), node: Some(1), start: false, queue: false }).unwrap();
    let running = Observed { phase: Phase::Running, ..Default::default() };
    run(&mut s, 7, Command::VmReport { name: "moves".into(), incarnation: 3, node: 1, observed: running }).unwrap();
    assert_eq!(get(&s, "moves").observed.map(|o| o.phase), Some(Phase::Running));
    run(&mut s, 7, Command::NodeSetState { id: 1, state: NodeState::Down }).unwrap();
    let m = get(&s, "moves");
    assert_eq!((m.node, m.placed_index, m.fresh_disk), (Some(2), 7, true));
    assert_eq!(m.observed, None, "what node 1 observed is not what node 2 runs");
    assert_eq!(events(&s, "moves").last().unwrap(), "node 1 is down; moved to node 2");
    let l = get(&s, "lost");
    assert!(l.lost && !l.reserves());
    assert_eq!(events(&s, "lost").last().unwrap(), "node 1 is down: lost (restart policy never)");
    assert_eq!(get(&s, "waits").node, Some(1));
    assert_eq!(get(&s, "off").node, Some(1), "a stopped VM is not moved");
    assert_eq!(used(&s, 2), 256);
    // A new placement avoids the down node.
    create(&mut s, 8, spec("new", 256)).unwrap();
    assert_eq!(get(&s, "new").node, Some(2));
    // Back up: it takes work again.
    run(&mut s, 9, Command::NodeSetState { id: 1, state: NodeState::Ready }).unwrap();
    assert_eq!(nodes::get(&s, 1).unwrap().unwrap().state, NodeState::Ready);
}

#[test]
fn a_node_that_leaves_loses_its_capacity_row_and_its_vms_move() {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    add_node(&mut s, 3, 8, 4096);
    run(&mut s, 4, Command::VmCreate { spec: spec("web", 256), node: Some(3), start: true, queue: false }).unwrap();
    nodes::remove(&mut s, 5, 5_000, 3).unwrap();
    assert!(nodes::get(&s, 3).unwrap().is_none());
    assert!(matches!(get(&s, "web").node, Some(1 | 2)));
    // Slots stay dense: the scheduler still sees two nodes.
    assert_eq!(crate::scheduler::Nodes::count(&NodeTable::new(&s).unwrap()), 2);
    let r = run(&mut s, 6, Command::VmCreate { spec: spec("x", 64), node: Some(3), start: true, queue: true });
    assert_eq!(
        r,
        Err(CommandError::FailedPrecondition("cannot place vm \"x\": node 3 is not a registered node".into()))
    );
}

/// Found by the random fault schedules (seed 3 of `s42_converged`): a VM of a node that left
/// was "moved" to that very node (it was still a placement candidate while its VMs moved), so
/// it never ran again.
#[test]
fn the_vms_of_a_node_that_leaves_never_move_to_that_node() {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    add_node(&mut s, 3, 8, 4096);
    let names: Vec<String> = (0..8).map(|i| format!("vm{i}")).collect();
    for (i, n) in names.iter().enumerate() {
        let c = Command::VmCreate { spec: spec(n, 64), node: Some(3), start: true, queue: false };
        run(&mut s, 4 + i as u64, c).unwrap();
    }
    nodes::remove(&mut s, 20, 5_000, 3).unwrap();
    for n in &names {
        let v = get(&s, n);
        assert!(matches!(v.node, Some(1 | 2)), "{n} is on {:?}: {:?}", v.node, events(&s, n));
    }
    assert_eq!(used(&s, 1) + used(&s, 2), 8 * 64);
}

#[test]
fn hard_anti_affinity_leaves_the_third_of_a_group_pending_with_the_reason() {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    let web = |n: &str| {
        let mut sp = spec(n, 128);
        sp.placement = PlacementSpec { group: Some("web".into()), hard: true, ..Default::default() };
        sp
    };
    create(&mut s, 3, web("w1")).unwrap();
    create(&mut s, 4, web("w2")).unwrap();
    create(&mut s, 5, web("w3")).unwrap();
    assert_ne!(get(&s, "w1").node, get(&s, "w2").node);
    let w3 = get(&s, "w3");
    assert_eq!(w3.node, None);
    let why = w3.pending.unwrap();
    assert!(why.contains("a VM of group \"web\" is already there"), "{why}");
    // A third node lets it go.
    add_node(&mut s, 3, 8, 4096);
    assert_eq!(get(&s, "w3").node, Some(3));
}

#[test]
fn a_register_from_a_node_that_is_not_a_member_is_refused() {
    let mut s = member_node(1, 8, 4096);
    let node = Registration { id: 9, vcpus: 8, memory_mib: 4096, ..Default::default() };
    assert!(matches!(run(&mut s, 2, Command::NodeRegister { node }), Err(CommandError::FailedPrecondition(_))));
}

#[test]
fn simulated_nodes_register_in_their_id_range_only_all_or_none_and_take_placements() {
    let mut s = member_node(1, 1, 512);
    let sim =
        |id: u64| Registration { id, vcpus: 8, memory_mib: 4096, backend: "simulated".into(), ..Default::default() };
    let reg =
        |s: &mut MemStore, index, nodes: Vec<Registration>| run(s, index, Command::NodeRegisterSimulated { nodes });
    // A member's id, or one below the range, refuses the whole command.
    let e = reg(&mut s, 2, vec![sim(SIMULATED_NODE_IDS), sim(5)]).unwrap_err().to_string();
    assert!(e.contains("id") && e.contains(&SIMULATED_NODE_IDS.to_string()), "{e}");
    assert!(nodes::get(&s, SIMULATED_NODE_IDS).unwrap().is_none(), "nothing registered");
    assert!(matches!(reg(&mut s, 3, vec![]), Err(CommandError::Invalid(_))));
    let too_many = (0..=MAX_SIMULATED_PER_COMMAND as u64).map(|i| sim(SIMULATED_NODE_IDS + i)).collect();
    assert!(matches!(reg(&mut s, 4, too_many), Err(CommandError::Invalid(_))));
    super::run(&mut s, 5, &env(Command::AddLearner { id: SIMULATED_NODE_IDS + 7, addr: "h:7".into() }))
        .unwrap()
        .unwrap();
    let member = reg(&mut s, 6, vec![sim(SIMULATED_NODE_IDS + 7)]).unwrap_err().to_string();
    assert!(member.contains("is a member"), "{member}");
    // A VM waiting for room is placed on one as it registers.
    assert!(create(&mut s, 7, spec("fill", 512)).is_ok());
    assert!(create(&mut s, 8, spec("big", 512)).is_ok());
    assert_eq!(get(&s, "big").node, None);
    reg(&mut s, 9, (0..3).map(|i| sim(SIMULATED_NODE_IDS + i)).collect()).unwrap();
    assert_eq!(crate::scheduler::Nodes::count(&NodeTable::new(&s).unwrap()), 4);
    assert!(get(&s, "big").node.is_some_and(|n| n >= SIMULATED_NODE_IDS));
}

#[test]
fn a_drained_node_hands_its_vms_over_and_ends_its_drain_when_empty() {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    run(&mut s, 3, Command::VmCreate { spec: spec("a", 256), node: Some(1), start: true, queue: false }).unwrap();
    run(&mut s, 4, Command::NodeDrain { id: 1, drain: Some(DrainSpec { deadline_ms: 60_000, parallel: 1 }) }).unwrap();
    let n = nodes::get(&s, 1).unwrap().unwrap();
    assert!(n.drain.is_some() && !n.eligible);
    let Ok(Response::Vm(v)) = run(&mut s, 5, Command::VmMove { name: "a".into() }) else { panic!() };
    assert_eq!((v.node, v.handoff_from), (Some(2), Some(1)));
    assert!(nodes::get(&s, 1).unwrap().unwrap().drain.is_none(), "empty: the drain is over");
    assert_eq!(vms::handing_off_from(&s, 1).unwrap(), ["a"]);
    run(&mut s, 6, Command::VmHandoff { name: "a".into(), node: 1 }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);
    assert!(vms::handing_off_from(&s, 1).unwrap().is_empty());
    assert_eq!((used(&s, 1), used(&s, 2)), (0, 256));
}

#[test]
fn a_node_declared_down_mid_handoff_releases_it() {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    run(&mut s, 3, Command::VmCreate { spec: spec("a", 256), node: Some(1), start: true, queue: false }).unwrap();
    run(&mut s, 4, Command::NodeDrain { id: 1, drain: Some(DrainSpec { deadline_ms: 60_000, parallel: 1 }) }).unwrap();
    run(&mut s, 5, Command::VmMove { name: "a".into() }).unwrap();
    run(&mut s, 6, Command::NodeSetState { id: 1, state: NodeState::Down }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None, "a down node has fenced itself");
}

#[test]
fn a_vm_created_again_under_a_deleted_name_waits_for_the_node_that_may_still_run_it() {
    let mut s = member_node(1, 8, 4096);
    add_node(&mut s, 2, 8, 4096);
    run(&mut s, 3, Command::VmCreate { spec: spec("a", 256), node: Some(1), start: true, queue: false }).unwrap();
    run(&mut s, 4, Command::VmDelete { name: "a".into() }).unwrap();
    assert_eq!(vms::handing_off_from(&s, 1).unwrap(), ["a"], "node 1 may still run it");
    run(&mut s, 5, Command::VmCreate { spec: spec("a", 256), node: Some(2), start: true, queue: false }).unwrap();
    let v = get(&s, "a");
    assert_eq!((v.node, v.handoff_from), (Some(2), Some(1)));
    assert_eq!(events(&s, "a"), ["placed on node 2", "starts once node 1 stopped the VM deleted under this name"]);
    run(&mut s, 6, Command::VmHandoff { name: "a".into(), node: 1 }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);
    assert!(vms::handing_off_from(&s, 1).unwrap().is_empty());

    // Deleted, then its old node reports it stopped: the name is free, nothing is left behind.
    run(&mut s, 7, Command::VmDelete { name: "a".into() }).unwrap();
    assert_eq!(vms::handing_off_from(&s, 2).unwrap(), ["a"]);
    run(&mut s, 8, Command::VmHandoff { name: "a".into(), node: 2 }).unwrap();
    assert!(vms::handing_off_from(&s, 2).unwrap().is_empty());
    assert!(s.scan(Table::Placements, b"", usize::MAX).unwrap().is_empty(), "no mark left");
    run(&mut s, 9, Command::VmCreate { spec: spec("a", 256), node: Some(1), start: true, queue: false }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);

    // A node declared down fenced itself: a VM deleted there leaves no wait behind.
    run(&mut s, 10, Command::VmDelete { name: "a".into() }).unwrap();
    run(&mut s, 11, Command::NodeSetState { id: 1, state: NodeState::Down }).unwrap();
    assert!(s.scan(Table::Placements, b"", usize::MAX).unwrap().iter().all(|(k, _)| k[8] == b'p'));
    run(&mut s, 12, Command::VmCreate { spec: spec("a", 256), node: Some(2), start: true, queue: false }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);
}

#[test]
fn a_stopped_vm_started_again_where_it_no_longer_fits_waits_for_its_old_node() {
    let mut s = member_node(1, 8, 1024);
    add_node(&mut s, 2, 8, 4096);
    run(&mut s, 3, Command::VmCreate { spec: spec("a", 512), node: Some(1), start: true, queue: false }).unwrap();
    run(&mut s, 4, Command::VmSetDesired { name: "a".into(), desired: PowerState::Stopped }).unwrap();
    run(&mut s, 5, Command::VmCreate { spec: spec("b", 1024), node: Some(1), start: true, queue: false }).unwrap();
    run(&mut s, 6, Command::VmSetDesired { name: "a".into(), desired: PowerState::Running }).unwrap();
    let v = get(&s, "a");
    assert_eq!((v.node, v.handoff_from), (Some(2), Some(1)), "node 1 may not have stopped it yet");
    run(&mut s, 7, Command::VmHandoff { name: "a".into(), node: 1 }).unwrap();
    assert_eq!(get(&s, "a").handoff_from, None);
}

#[test]
fn node_states_reads_the_id_and_state_of_every_full_record() {
    use crate::scheduler::{Drain, NodeRecord};
    let mut s = MemStore::default();
    let full = NodeRecord {
        id: 7,
        vcpus: 8,
        memory_mib: 4096,
        disk_gib: 100,
        accel: "kvm".into(),
        backend: "qemu".into(),
        labels: [("zone".to_string(), "a".to_string()), ("rack".to_string(), "r1".to_string())].into(),
        agent_version: "0.1.0".into(),
        state: NodeState::Down,
        state_since_ms: 99,
        eligible: false,
        drain: Some(Drain { deadline_ms: 5, parallel: 2, started_ms: 1 }),
        used: Default::default(),
        ports: [80, 443].into(),
        groups: [("web".to_string(), 2)].into(),
        slot: 3,
    };
    let bare = NodeRecord { id: 1 << 40, ..Default::default() };
    for n in [&full, &bare] {
        s.put(Table::Nodes, &n.id.to_be_bytes(), &postcard::to_allocvec(n).unwrap()).unwrap();
    }
    assert_eq!(node_states(&s).unwrap(), vec![(7, NodeState::Down), (1 << 40, NodeState::Ready)]);
    assert_eq!(
        node_states(&s).unwrap(),
        nodes(&s).unwrap().into_iter().map(|n| (n.id, n.state)).collect::<Vec<_>>(),
        "the same as decoding every record"
    );
    // A record cut short is an error naming the table, not a panic.
    s.put(Table::Nodes, &9u64.to_be_bytes(), &[9, 1]).unwrap();
    assert!(node_states(&s).unwrap_err().0.contains("undecodable record in sm_nodes"), "{:?}", node_states(&s));
}
