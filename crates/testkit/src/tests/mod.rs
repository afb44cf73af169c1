//! Unit tests: hand-made histories for each model, generated ones, the JSON form.

mod cluster;
mod generated;
mod json;
mod kv;
mod rng;
mod vm;

use crate::{check, CheckReport, History, KvInput, KvModel, KvOutput, Model, Operation};
use crate::{VmInput, VmModel, VmOutput};

type KvOp = Operation<KvInput, KvOutput>;
type VmOp = Operation<VmInput, VmOutput>;

fn put(client: u64, key: &str, value: &str, invoke: u64, complete: u64) -> KvOp {
    Operation::ok(client, put_input(key, value), invoke, complete, KvOutput::Written)
}

fn put_input(key: &str, value: &str) -> KvInput {
    KvInput::Put { key: key.into(), value: value.into() }
}

fn get(client: u64, key: &str, invoke: u64, complete: u64, value: Option<&str>) -> KvOp {
    let input = KvInput::Get { key: key.into() };
    let output = KvOutput::Value(value.map(Into::into));
    Operation::ok(client, input, invoke, complete, output)
}

fn delete(client: u64, key: &str, invoke: u64, complete: u64, existed: bool) -> KvOp {
    let input = KvInput::Delete { key: key.into() };
    Operation::ok(client, input, invoke, complete, KvOutput::Existed(existed))
}

fn create(client: u64, name: &str, invoke: u64, complete: u64, output: VmOutput) -> VmOp {
    let input = VmInput::Create { name: name.into() };
    Operation::ok(client, input, invoke, complete, output)
}

fn destroy(client: u64, name: &str, invoke: u64, complete: u64, output: VmOutput) -> VmOp {
    let input = VmInput::Delete { name: name.into() };
    Operation::ok(client, input, invoke, complete, output)
}

fn run<M: Model>(model: &M, ops: Vec<Operation<M::Input, M::Output>>) -> CheckReport<M> {
    let history = History::from(ops);
    match check(model, &history) {
        Ok(report) => report,
        Err(error) => panic!("the test history is malformed: {error}"),
    }
}

#[track_caller]
fn assert_linearizable<M: Model>(model: &M, ops: Vec<Operation<M::Input, M::Output>>) {
    let report = run(model, ops);
    assert!(report.is_linearizable(), "expected linearizable:\n{report}");
}

/// Asserts one violation, in `partition`, and returns it for further checks.
#[track_caller]
fn assert_violation<M: Model>(
    model: &M,
    ops: Vec<Operation<M::Input, M::Output>>,
    partition: M::Partition,
) -> crate::Violation<M> {
    let mut report = run(model, ops);
    assert!(!report.is_linearizable(), "expected a violation:\n{report}");
    assert_eq!(report.violations.len(), 1, "{report}");
    assert_eq!(report.violations[0].partition, partition, "{report}");
    report.violations.remove(0)
}

fn kv_key(key: &str) -> crate::Key {
    crate::Key(key.into())
}

#[test]
fn an_empty_history_is_linearizable() {
    let report = run(&KvModel, Vec::new());
    assert!(report.is_linearizable());
    assert_eq!(report.partitions, 0);
}

#[test]
fn a_violation_prints_the_window_not_the_history() {
    let mut ops = Vec::new();
    for i in 0..100 {
        ops.push(put(1, "a", &i.to_string(), i * 10, i * 10 + 5));
    }
    ops.push(get(2, "a", 1000, 1010, Some("3")));
    let violation = assert_violation(&KvModel, ops, kv_key("a"));
    let text = violation.to_string();
    assert_eq!(violation.linearized, 100);
    assert_eq!(violation.tail.len(), 8);
    assert!(text.contains("key \"a\""), "{text}");
    assert!(text.contains("#101"), "{text}");
    assert!(text.contains("value \"3\""), "{text}");
    assert!(text.contains("the model answers: value \"99\""), "{text}");
    assert!(!text.contains("put \"a\" = \"50\""), "{text}");
    assert!(text.lines().count() < 30, "{text}");
}

#[test]
fn histories_from_the_recorder_use_its_clock() {
    let mut time = 100;
    let mut recorder = crate::Recorder::<KvModel, _>::new(move || {
        time += 10;
        time
    });
    let first = recorder.invoke(1, put_input("a", "1"));
    let second = recorder.invoke(2, KvInput::Get { key: "a".into() });
    recorder.ok(first, KvOutput::Written);
    recorder.ok(second, KvOutput::Value(Some("1".into())));
    let dangling = recorder.invoke(3, put_input("a", "2"));
    drop(dangling);
    let history = recorder.finish();
    let ops = history.ops();
    assert_eq!((ops[0].invoke, ops[0].complete), (110, Some(130)));
    assert_eq!((ops[1].invoke, ops[1].complete), (120, Some(140)));
    assert_eq!(ops[2].result, crate::OpResult::Unknown);
    assert_eq!((ops[2].invoke, ops[2].complete), (150, None));
    assert!(check(&KvModel, &history).unwrap().is_linearizable());
}

#[test]
fn the_logical_clock_ticks_once_per_event() {
    let mut recorder = crate::Recorder::<VmModel>::default();
    let a = recorder.invoke(1, VmInput::Create { name: "a".into() });
    let b = recorder.invoke(2, VmInput::Create { name: "a".into() });
    recorder.ok(b, VmOutput::AlreadyExists);
    recorder.unknown(a);
    let ops = recorder.finish().into_ops();
    assert_eq!((ops[0].invoke, ops[0].complete), (0, Some(3)));
    assert_eq!((ops[1].invoke, ops[1].complete), (1, Some(2)));
    // The unknown create took effect before the second answered: fine.
    assert!(check(&VmModel, &History::from(ops)).unwrap().is_linearizable());
}

#[test]
fn a_malformed_history_is_an_error_not_a_verdict() {
    let mut late = put(1, "a", "1", 10, 5);
    let history = History::<KvModel>::from(vec![get(1, "a", 0, 1, None), late.clone()]);
    let error = check(&KvModel, &history).unwrap_err();
    assert_eq!((error.index, error.field), (1, "complete"));
    assert_eq!(error.to_string(), "operation #2: field `complete`: 5 is earlier than invoke 10");

    late.complete = None;
    let error = check(&KvModel, &History::from(vec![late])).unwrap_err();
    assert_eq!((error.index, error.field), (0, "complete"));

    let wrong = Operation::ok(1, KvInput::Get { key: "a".into() }, 0, 1, KvOutput::Written);
    let error = check(&KvModel, &History::from(vec![wrong])).unwrap_err();
    assert_eq!(error.field, "result");
    assert!(error.to_string().contains("`written` is not an answer to `get \"a\"`"));
}

#[test]
fn the_step_limit_gives_up_instead_of_guessing() {
    // Ten concurrent puts then a read of a value nobody wrote: the search must try every
    // order of the puts (the cache cuts that to the subsets) before it can say no.
    let mut ops: Vec<KvOp> = (0..10).map(|i| put(i, "a", &i.to_string(), 0, 100)).collect();
    ops.push(get(20, "a", 200, 210, Some("x")));
    let history = History::from(ops);
    let limits = crate::Limits { max_steps: Some(50) };
    let report = crate::check_with(&KvModel, &history, limits).unwrap();
    assert!(!report.is_linearizable());
    assert!(report.violations.is_empty());
    assert_eq!(report.gave_up, vec![kv_key("a")]);
    assert!(report.to_string().starts_with("inconclusive"), "{report}");
    let report = check(&KvModel, &history).unwrap();
    assert_eq!(report.violations.len(), 1, "{report}");
}
