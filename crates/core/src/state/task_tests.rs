//! Tasks in the state machine: placement and resource reservation, pending FIFO, reports fenced
//! by attempt, retries with backoff, lost attempts placed elsewhere, cancel, retention.

use super::tests::{add_node, member_node};
use super::*;
use crate::command::Outcome;
use crate::scheduler::NodeState;
use crate::store::MemStore;
use crate::task::{AttemptResult, Enforcement, TaskRecord, TaskSpec, TaskState};

fn env(command: Command) -> Envelope {
    Envelope { session: None, now_ms: 5_000, command }
}

fn run(s: &mut MemStore, index: u64, c: Command) -> Outcome {
    apply(s, index, &env(c)).unwrap().outcome
}

fn spec(memory_mib: u32) -> TaskSpec {
    TaskSpec { command: "true".into(), memory_mib, ..Default::default() }
}

fn submit(s: &mut MemStore, index: u64, sp: TaskSpec) -> TaskRecord {
    match run(s, index, Command::TaskSubmit { spec: Box::new(sp) }) {
        Ok(Response::Task(t)) => *t,
        other => panic!("submit: {other:?}"),
    }
}

fn get(s: &MemStore, id: u64) -> TaskRecord {
    tasks::get(s, id).unwrap().unwrap_or_else(|| panic!("task {id}"))
}

fn used(s: &MemStore, id: u64) -> u64 {
    nodes::get(s, id).unwrap().unwrap().used.memory_mib
}

fn finished(result: AttemptResult) -> TaskUpdate {
    TaskUpdate::Finished { result, stdout_tail: b"out".to_vec(), stderr_tail: Vec::new() }
}

fn report(s: &mut MemStore, index: u64, t: &TaskRecord, update: TaskUpdate) -> Outcome {
    let a = get(s, t.submit_index).current().cloned().expect("an open attempt");
    run(s, index, Command::TaskReport { id: t.submit_index, attempt: a.id, node: a.node, update })
}

#[test]
fn a_task_is_placed_reserves_memory_and_releases_it_when_it_succeeds() {
    let mut s = member_node(1, 4, 1024);
    let t = submit(&mut s, 2, spec(256));
    assert_eq!((t.id.as_str(), t.state, t.attempts[0].node, t.attempts[0].id), ("t2", TaskState::Assigned, 1, 2));
    assert_eq!(used(&s, 1), 256);
    assert_eq!(t.attempts[0].enforcement, None);
    report(&mut s, 3, &t, TaskUpdate::Started { enforcement: Enforcement::CgroupV2 }).unwrap();
    assert_eq!(get(&s, 2).state, TaskState::Running);
    assert_eq!(get(&s, 2).attempts[0].enforcement, Some(Enforcement::CgroupV2));
    report(&mut s, 4, &t, finished(AttemptResult::Exited { code: 0 })).unwrap();
    let t = get(&s, 2);
    assert_eq!(
        (t.state, t.exit_code(), t.attempts[0].stdout_tail.as_slice()),
        (TaskState::Succeeded, Some(0), &b"out"[..])
    );
    assert_eq!(used(&s, 1), 0);
    assert!(tasks::on_node(&s, 1).unwrap().is_empty());
}

#[test]
fn a_task_that_fits_nowhere_waits_with_reasons_and_pending_ones_are_placed_in_order() {
    let mut s = member_node(1, 4, 1024);
    let big = submit(&mut s, 2, spec(4096));
    assert_eq!(big.state, TaskState::Pending);
    assert!(big.pending.as_deref().unwrap().contains("memory"), "{:?}", big.pending);
    let a = submit(&mut s, 3, spec(800));
    let b = submit(&mut s, 4, spec(800));
    let c = submit(&mut s, 5, spec(100));
    assert_eq!((a.state, b.state), (TaskState::Assigned, TaskState::Pending));
    // FIFO is per-queue-scan: c fits beside a, b does not, and c was placed when submitted.
    assert_eq!(c.state, TaskState::Assigned);
    report(&mut s, 6, &a, finished(AttemptResult::Exited { code: 0 })).unwrap();
    assert_eq!(get(&s, 4).state, TaskState::Assigned);
    assert_eq!(get(&s, 2).state, TaskState::Pending);
}

#[test]
fn a_non_zero_exit_fails_and_a_signal_is_recorded() {
    let mut s = member_node(1, 4, 1024);
    let t = submit(&mut s, 2, spec(64));
    report(&mut s, 3, &t, finished(AttemptResult::Exited { code: 3 })).unwrap();
    assert_eq!((get(&s, 2).state, get(&s, 2).exit_code()), (TaskState::Failed, Some(3)));
    let t = submit(&mut s, 4, spec(64));
    report(&mut s, 5, &t, finished(AttemptResult::Signaled { signal: 9 })).unwrap();
    assert_eq!((get(&s, 4).state, get(&s, 4).exit_code()), (TaskState::Failed, Some(137)));
    let t = submit(&mut s, 6, spec(64));
    report(&mut s, 7, &t, finished(AttemptResult::TimedOut { killed: true })).unwrap();
    assert_eq!(get(&s, 6).state, TaskState::TimedOut);
}

#[test]
fn a_failed_attempt_is_retried_with_backoff_until_the_retries_run_out() {
    let mut s = member_node(1, 4, 1024);
    let t = submit(&mut s, 2, TaskSpec { retries: 2, backoff_ms: 100, backoff_cap_ms: 150, ..spec(64) });
    report(&mut s, 3, &t, finished(AttemptResult::Exited { code: 1 })).unwrap();
    let r = get(&s, 2);
    assert_eq!((r.state, r.attempts.len(), r.retries_used), (TaskState::Assigned, 2, 1));
    assert_eq!(r.attempts[1].not_before_ms, 5_100);
    assert_eq!(r.attempts[1].number, 2);
    report(&mut s, 4, &t, finished(AttemptResult::Exited { code: 1 })).unwrap();
    assert_eq!(get(&s, 2).attempts[2].not_before_ms, 5_150);
    report(&mut s, 5, &t, finished(AttemptResult::Exited { code: 1 })).unwrap();
    let r = get(&s, 2);
    assert_eq!((r.state, r.attempts.len()), (TaskState::Failed, 3));
    assert_eq!(used(&s, 1), 0);
}

#[test]
fn an_oom_is_its_own_result_retried_as_a_failure_and_ends_failed() {
    let mut s = member_node(1, 4, 1024);
    let t = submit(&mut s, 2, TaskSpec { retries: 1, backoff_ms: 0, backoff_cap_ms: 0, ..spec(64) });
    report(&mut s, 3, &t, TaskUpdate::Started { enforcement: Enforcement::CgroupV1 }).unwrap();
    report(&mut s, 4, &t, finished(AttemptResult::Oom)).unwrap();
    let r = get(&s, 2);
    assert_eq!((r.state, r.attempts.len(), r.retries_used), (TaskState::Assigned, 2, 1));
    assert_eq!(r.attempts[0].result, Some(AttemptResult::Oom));
    report(&mut s, 5, &t, finished(AttemptResult::Oom)).unwrap();
    let r = get(&s, 2);
    assert_eq!((r.state, r.exit_code()), (TaskState::Failed, Some(137)));
    assert_eq!(r.attempts[1].result.as_ref().map(AttemptResult::kind), Some("oom"));
}

#[test]
fn a_report_for_an_old_attempt_or_from_another_node_is_refused() {
    let mut s = member_node(1, 4, 1024);
    let t = submit(&mut s, 2, TaskSpec { retries: 1, ..spec(64) });
    report(&mut s, 3, &t, finished(AttemptResult::Exited { code: 1 })).unwrap();
    // The first attempt's result again (attempt id 2): stale.
    let stale =
        TaskUpdate::Finished { result: AttemptResult::Exited { code: 0 }, stdout_tail: vec![], stderr_tail: vec![] };
    let r = run(&mut s, 4, Command::TaskReport { id: 2, attempt: 2, node: 1, update: stale.clone() });
    assert!(matches!(r, Err(CommandError::FailedPrecondition(ref m)) if m.contains("stale")), "{r:?}");
    let r = run(&mut s, 5, Command::TaskReport { id: 2, attempt: 3, node: 9, update: stale });
    assert!(r.is_err());
    assert_eq!(get(&s, 2).state, TaskState::Assigned);
    // A restarted daemon reports the attempt it no longer watches as lost: placed again, no
    // retry used.
    report(&mut s, 6, &t, finished(AttemptResult::Lost)).unwrap();
    let r = get(&s, 2);
    assert_eq!((r.state, r.attempts.len(), r.retries_used), (TaskState::Assigned, 3, 1));
}

#[test]
fn tails_are_bounded_in_the_record() {
    let mut s = member_node(1, 4, 1024);
    let t = submit(&mut s, 2, spec(64));
    let big = TaskUpdate::Finished {
        result: AttemptResult::Exited { code: 0 },
        stdout_tail: vec![b'x'; 10_000],
        stderr_tail: vec![b'y'; 5],
    };
    report(&mut s, 3, &t, big).unwrap();
    let a = &get(&s, 2).attempts[0];
    assert_eq!((a.stdout_tail.len(), a.stderr_tail.len()), (crate::task::MAX_TAIL, 5));
}

#[test]
fn a_node_going_down_loses_its_attempts_and_they_run_elsewhere_without_using_a_retry() {
    let mut s = member_node(1, 4, 1024);
    add_node(&mut s, 2, 4, 1024);
    let t = submit(&mut s, 5, spec(512));
    let first = t.attempts[0].node;
    let other = if first == 1 { 2 } else { 1 };
    run(&mut s, 6, Command::NodeSetState { id: first, state: NodeState::Down }).unwrap();
    let r = get(&s, 5);
    assert_eq!(r.attempts[0].result, Some(AttemptResult::Lost));
    assert_eq!((r.state, r.attempts[1].node, r.retries_used), (TaskState::Assigned, other, 0));
    assert_eq!((used(&s, first), used(&s, other)), (0, 512));
    // The fenced node's late result is refused.
    let late =
        TaskUpdate::Finished { result: AttemptResult::Exited { code: 0 }, stdout_tail: vec![], stderr_tail: vec![] };
    let r = run(&mut s, 7, Command::TaskReport { id: 5, attempt: 5, node: first, update: late });
    assert!(r.is_err());
    report(&mut s, 8, &t, finished(AttemptResult::Exited { code: 0 })).unwrap();
    assert_eq!(get(&s, 5).state, TaskState::Succeeded);
}

#[test]
fn a_lost_attempt_with_no_other_node_waits_pending() {
    let mut s = member_node(1, 4, 1024);
    let _ = submit(&mut s, 2, spec(64));
    run(&mut s, 3, Command::NodeSetState { id: 1, state: NodeState::Down }).unwrap();
    assert_eq!(get(&s, 2).state, TaskState::Pending);
    run(&mut s, 4, Command::NodeSetState { id: 1, state: NodeState::Ready }).unwrap();
    let r = get(&s, 2);
    assert_eq!((r.state, r.attempts.len(), r.attempts[1].id), (TaskState::Assigned, 2, 4));
}

#[test]
fn cancel_ends_a_pending_task_at_once_and_a_running_one_through_its_node() {
    let mut s = member_node(1, 4, 1024);
    let _ = submit(&mut s, 2, spec(4096));
    run(&mut s, 3, Command::TaskCancel { id: 2 }).unwrap();
    assert_eq!(get(&s, 2).state, TaskState::Cancelled);
    let t = submit(&mut s, 4, TaskSpec { retries: 3, ..spec(64) });
    run(&mut s, 5, Command::TaskCancel { id: 4 }).unwrap();
    let r = get(&s, 4);
    assert!(r.cancel_requested);
    assert_eq!(r.state, TaskState::Assigned);
    // The node killed it: no retry, cancelled.
    report(&mut s, 6, &t, finished(AttemptResult::Signaled { signal: 15 })).unwrap();
    assert_eq!((get(&s, 4).state, get(&s, 4).attempts.len()), (TaskState::Cancelled, 1));
    assert!(matches!(run(&mut s, 7, Command::TaskCancel { id: 99 }), Err(CommandError::NotFound(_))));
}

#[test]
fn an_invalid_spec_is_refused_naming_the_field() {
    let mut s = member_node(1, 4, 1024);
    let r = run(&mut s, 2, Command::TaskSubmit { spec: Box::new(TaskSpec { command: String::new(), ..spec(64) }) });
    assert!(matches!(r, Err(CommandError::Invalid(ref e)) if e.field == "command"), "{r:?}");
}

#[test]
fn prune_keeps_the_newest_finished_and_never_touches_open_ones() {
    let mut s = member_node(1, 64, 1 << 20);
    for i in 0..5u64 {
        let t = submit(&mut s, 10 + 2 * i, spec(1));
        report(&mut s, 11 + 2 * i, &t, finished(AttemptResult::Exited { code: 0 })).unwrap();
    }
    let _open = submit(&mut s, 30, spec(1));
    assert_eq!(run(&mut s, 31, Command::TaskPrune { keep: 2 }), Ok(Response::Pruned { count: 3 }));
    let QueryResult::Tasks { tasks, more } =
        query(&s, &Query::TaskList { state: None, start_after: None, limit: 100 }).unwrap()
    else {
        panic!()
    };
    let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    assert_eq!((ids, more), (vec!["t16", "t18", "t30"], false));
    let QueryResult::Tasks { tasks, .. } =
        query(&s, &Query::TaskList { state: Some(TaskState::Assigned), start_after: None, limit: 100 }).unwrap()
    else {
        panic!()
    };
    assert_eq!(tasks.len(), 1);
    let QueryResult::Tasks { tasks, more } =
        query(&s, &Query::TaskList { state: None, start_after: Some(16), limit: 1 }).unwrap()
    else {
        panic!()
    };
    assert_eq!((tasks[0].id.as_str(), more), ("t18", true));
}

#[test]
fn the_executor_query_lists_the_open_attempts_of_a_node() {
    let mut s = member_node(1, 4, 1024);
    let _ = submit(&mut s, 2, spec(64));
    let QueryResult::Tasks { tasks, .. } = query(&s, &Query::TasksOnNode { node: 1 }).unwrap() else { panic!() };
    assert_eq!(tasks.len(), 1);
    let QueryResult::Tasks { tasks, .. } = query(&s, &Query::TasksOnNode { node: 2 }).unwrap() else { panic!() };
    assert!(tasks.is_empty());
}

#[test]
fn at_most_max_finished_tasks_are_kept_the_oldest_pruned_first() {
    let mut s = member_node(1, 64, 1 << 20);
    let n = tasks::MAX_FINISHED + 3;
    for i in 0..n {
        let t = submit(&mut s, 10 + 2 * i, spec(1));
        report(&mut s, 11 + 2 * i, &t, finished(AttemptResult::Exited { code: 0 })).unwrap();
    }
    // The three oldest went; the newest are all there.
    for i in 0..3 {
        assert!(tasks::get(&s, 10 + 2 * i).unwrap().is_none(), "task {i} kept");
    }
    assert!(tasks::get(&s, 10 + 2 * 3).unwrap().is_some());
    assert!(tasks::get(&s, 10 + 2 * (n - 1)).unwrap().is_some());
    let QueryResult::Tasks { tasks, more } =
        query(&s, &Query::TaskList { state: None, start_after: None, limit: usize::MAX }).unwrap()
    else {
        panic!()
    };
    assert_eq!((tasks.len() as u64, more), (tasks::MAX_FINISHED, false));
}

#[test]
fn tasks_are_counted_by_state_reading_each_finished_one_once() {
    let by_state = |s: &MemStore, cache: &mut std::collections::BTreeMap<u64, TaskState>| {
        let c = tasks::count_by_state(s, cache).unwrap();
        TaskState::ALL.iter().zip(c).filter(|(_, n)| *n > 0).map(|(s, n)| (s.as_str(), n)).collect::<Vec<_>>()
    };
    let mut cache = std::collections::BTreeMap::new();
    let mut s = member_node(1, 4, 1024);
    assert_eq!(by_state(&s, &mut cache), []);
    let a = submit(&mut s, 2, spec(256));
    let b = submit(&mut s, 3, spec(256));
    submit(&mut s, 4, spec(4096));
    report(&mut s, 5, &b, TaskUpdate::Started { enforcement: Default::default() }).unwrap();
    assert_eq!(by_state(&s, &mut cache), [("pending", 1), ("assigned", 1), ("running", 1)]);
    report(&mut s, 6, &a, finished(AttemptResult::Exited { code: 0 })).unwrap();
    report(&mut s, 7, &b, finished(AttemptResult::Exited { code: 0 })).unwrap();
    assert_eq!(by_state(&s, &mut cache), [("pending", 1), ("succeeded", 2)]);
    assert_eq!(cache.len(), 2, "finished tasks remembered");
    // A remembered state is not read again; a pruned task is forgotten.
    cache.insert(a.submit_index, TaskState::Cancelled);
    assert_eq!(by_state(&s, &mut cache), [("pending", 1), ("succeeded", 1), ("cancelled", 1)]);
    run(&mut s, 8, Command::TaskPrune { keep: 0 }).unwrap();
    assert_eq!(by_state(&s, &mut cache), [("pending", 1)]);
    assert!(cache.is_empty());
}
