//! Generated histories: histories produced by running the model are linearizable, and a
//! mutation that no linearization can explain makes them not.

use std::collections::HashMap;
use std::time::Instant;

use super::rng::Rng;
use super::*;
use crate::OpResult;

struct Plan {
    ops: usize,
    clients: u64,
    keys: u64,
    /// Per cent of operations that end unknown (half of them take effect) or fail.
    unknown: u64,
    fail: u64,
}

/// Runs clients against a correct store: each operation takes effect at a random instant
/// inside its interval (unless it fails, or is unknown and the coin says no), and gets what
/// the model says at that instant. The result is linearizable by construction.
fn concurrent_kv(rng: &mut Rng, plan: &Plan) -> Vec<KvOp> {
    let mut clocks: Vec<u64> = (0..plan.clients).map(|_| rng.below(5)).collect();
    let mut ops = Vec::with_capacity(plan.ops);
    let mut effects = Vec::new();
    for i in 0..plan.ops {
        // The client that is free first goes next, so clients overlap as they would.
        let client = (0..clocks.len()).min_by_key(|&c| clocks[c]).unwrap_or(0);
        let invoke = clocks[client] + rng.below(3);
        let effect = invoke + rng.below(6);
        let complete = effect + rng.below(6);
        clocks[client] = complete + 1;
        let key = format!("k{}", rng.below(plan.keys));
        let input = match rng.below(10) {
            0..=3 => KvInput::Put { key, value: format!("v{i}") },
            4..=7 => KvInput::Get { key },
            _ => KvInput::Delete { key },
        };
        let roll = rng.below(100);
        let (result, applies, complete) = if roll < plan.unknown {
            let gave_up = rng.percent(50).then_some(complete);
            (OpResult::Unknown, rng.percent(50), gave_up)
        } else if roll < plan.unknown + plan.fail {
            (OpResult::Fail, false, Some(complete))
        } else {
            (OpResult::Ok(KvOutput::Written), true, Some(complete))
        };
        if applies {
            effects.push((effect, i));
        }
        ops.push(Operation { client: client as u64, invoke, complete, input, result });
    }
    effects.sort_unstable();
    let mut store: HashMap<String, Option<String>> = HashMap::new();
    for (_, i) in effects {
        let op: &mut KvOp = &mut ops[i];
        let state = store.entry(op.input.key().to_owned()).or_default();
        let (next, output) = KvModel.step(state, &op.input);
        *state = next;
        if let OpResult::Ok(recorded) = &mut op.result {
            *recorded = output;
        }
    }
    ops
}

/// One operation at a time: the only possible linearization is the time order.
fn sequential_kv(rng: &mut Rng, ops: usize, unknown: u64) -> Vec<KvOp> {
    let plan = Plan { ops, clients: 1, keys: 3, unknown, fail: 10 };
    let mut history = concurrent_kv(rng, &plan);
    for op in &mut history {
        op.client = rng.below(4);
    }
    history
}

fn sequential_vm(rng: &mut Rng, ops: usize) -> Vec<VmOp> {
    let mut exists = HashMap::new();
    let mut time = 0;
    (0..ops)
        .map(|_| {
            let name = format!("vm{}", rng.below(2));
            let input = if rng.percent(50) { VmInput::Create { name } } else { VmInput::Delete { name } };
            let (invoke, complete) = (time, time + rng.below(4));
            time = complete + 1 + rng.below(2);
            if rng.percent(10) {
                return Operation::fail(rng.below(3), input, invoke, complete);
            }
            let state = exists.entry(input.name().to_owned()).or_insert(false);
            let (next, output) = VmModel.step(state, &input);
            *state = next;
            Operation::ok(rng.below(3), input, invoke, complete, output)
        })
        .collect()
}

/// Changes one get's or delete's output to another one; returns its index, or `None` if the
/// history has neither.
fn mutate_kv(rng: &mut Rng, ops: &mut [KvOp]) -> Option<usize> {
    let targets: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(ops[i].result, OpResult::Ok(KvOutput::Value(_) | KvOutput::Existed(_))))
        .collect();
    let &target = targets.get(rng.below(targets.len().max(1) as u64) as usize)?;
    if let OpResult::Ok(output) = &mut ops[target].result {
        *output = match output {
            KvOutput::Existed(existed) => KvOutput::Existed(!*existed),
            KvOutput::Value(Some(_)) if rng.percent(50) => KvOutput::Value(None),
            KvOutput::Value(value) => {
                let other = value.as_deref().map_or("never".to_owned(), |v| format!("{v}+"));
                KvOutput::Value(Some(other))
            }
            KvOutput::Written => KvOutput::Written,
        };
    }
    Some(target)
}

#[test]
fn sequential_kv_histories_are_linearizable() {
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let len = 1 + rng.below(60) as usize;
        let ops = sequential_kv(&mut rng, len, 10);
        let report = run(&KvModel, ops);
        assert!(report.is_linearizable(), "seed {seed}:\n{report}");
    }
}

#[test]
fn a_wrong_output_in_a_sequential_kv_history_is_a_violation_right_there() {
    let mut mutated = 0;
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let len = 1 + rng.below(60) as usize;
        let mut ops = sequential_kv(&mut rng, len, 0);
        let Some(target) = mutate_kv(&mut rng, &mut ops) else {
            continue;
        };
        mutated += 1;
        let key = ops[target].input.key().to_owned();
        let before = ops[..target].iter().filter(|op| op.input.key() == key && op.result != OpResult::Fail).count();
        let violation = assert_violation(&KvModel, ops, kv_key(&key));
        assert_eq!(violation.linearized, before, "seed {seed}:\n{violation}");
        let deadline = violation.deadline.as_ref().map(|op| op.index);
        assert_eq!(deadline, Some(target), "seed {seed}:\n{violation}");
        assert_eq!(violation.candidates.len(), 1, "seed {seed}:\n{violation}");
        assert_eq!(violation.candidates[0].op.index, target, "seed {seed}");
    }
    assert!(mutated > 250, "only {mutated} histories had a get or delete");
}

#[test]
fn a_wrong_answer_in_a_sequential_vm_history_is_a_violation() {
    for seed in 0..300 {
        let mut rng = Rng::new(seed);
        let len = 1 + rng.below(40) as usize;
        let mut ops = sequential_vm(&mut rng, len);
        assert_linearizable(&VmModel, ops.clone());
        let targets: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].result != OpResult::Fail).collect();
        let Some(&target) = targets.get(rng.below(targets.len().max(1) as u64) as usize) else {
            continue;
        };
        if let OpResult::Ok(output) = &mut ops[target].result {
            *output = match output {
                VmOutput::Created => VmOutput::AlreadyExists,
                VmOutput::AlreadyExists => VmOutput::Created,
                VmOutput::Deleted => VmOutput::NotFound,
                VmOutput::NotFound => VmOutput::Deleted,
            };
        }
        let name = crate::VmName(ops[target].input.name().to_owned());
        let violation = assert_violation(&VmModel, ops, name);
        let deadline = violation.deadline.as_ref().map(|op| op.index);
        assert_eq!(deadline, Some(target), "seed {seed}:\n{violation}");
    }
}

#[test]
fn concurrent_kv_histories_are_linearizable() {
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let plan = Plan {
            ops: 1 + rng.below(200) as usize,
            clients: 1 + rng.below(6),
            keys: 1 + rng.below(3),
            unknown: 10,
            fail: 10,
        };
        let report = run(&KvModel, concurrent_kv(&mut rng, &plan));
        assert!(report.is_linearizable(), "seed {seed}:\n{report}");
    }
}

#[test]
fn a_read_of_a_value_never_written_breaks_a_concurrent_history() {
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let plan = Plan {
            ops: 20 + rng.below(200) as usize,
            clients: 1 + rng.below(6),
            keys: 1 + rng.below(3),
            unknown: 10,
            fail: 10,
        };
        let mut ops = concurrent_kv(&mut rng, &plan);
        let gets: Vec<usize> =
            (0..ops.len()).filter(|&i| matches!(ops[i].result, OpResult::Ok(KvOutput::Value(_)))).collect();
        let Some(&target) = gets.get(rng.below(gets.len().max(1) as u64) as usize) else {
            continue;
        };
        ops[target].result = OpResult::Ok(KvOutput::Value(Some("never written".into())));
        let key = kv_key(ops[target].input.key());
        assert_violation(&KvModel, ops, key);
    }
}

fn timed_check(name: &str, ops: Vec<KvOp>) -> CheckReport<KvModel> {
    let count = ops.len();
    let started = Instant::now();
    let report = run(&KvModel, ops);
    eprintln!(
        "{name}: {count} operations, {} partitions, {} steps, checked in {:?}",
        report.partitions,
        report.steps,
        started.elapsed()
    );
    report
}

#[test]
fn a_large_mostly_sequential_history_is_checked() {
    let mut rng = Rng::new(7);
    let plan = Plan { ops: 100_000, clients: 8, keys: 20, unknown: 1, fail: 1 };
    let ops = concurrent_kv(&mut rng, &plan);
    let report = timed_check("100k ops, 20 keys, 8 clients", ops.clone());
    assert!(report.is_linearizable(), "{report}");

    let mut broken = ops;
    let target =
        (50_000..broken.len()).find(|&i| matches!(broken[i].result, OpResult::Ok(KvOutput::Value(_)))).unwrap();
    broken[target].result = OpResult::Ok(KvOutput::Value(Some("never written".into())));
    let report = timed_check("the same with one bad read", broken);
    assert_eq!(report.violations.len(), 1, "{report}");
}

#[test]
fn a_hot_key_with_many_clients_is_checked() {
    let mut rng = Rng::new(11);
    let plan = Plan { ops: 5_000, clients: 6, keys: 1, unknown: 2, fail: 2 };
    let report = timed_check("5k ops, 1 key, 6 clients", concurrent_kv(&mut rng, &plan));
    assert!(report.is_linearizable(), "{report}");
}

/// Like [`concurrent_kv`], for VMs by name: few names, so creates and deletes collide.
fn concurrent_vm(rng: &mut Rng, ops: usize, clients: u64) -> Vec<VmOp> {
    let mut clocks: Vec<u64> = (0..clients).map(|_| rng.below(5)).collect();
    let mut history = Vec::with_capacity(ops);
    let mut effects = Vec::new();
    for i in 0..ops {
        let client = (0..clocks.len()).min_by_key(|&c| clocks[c]).unwrap_or(0);
        let invoke = clocks[client] + rng.below(3);
        let effect = invoke + rng.below(6);
        let complete = effect + rng.below(6);
        clocks[client] = complete + 1;
        let name = format!("vm{}", rng.below(2));
        let input = if rng.percent(50) { VmInput::Create { name } } else { VmInput::Delete { name } };
        let roll = rng.below(100);
        let (result, applies) = if roll < 15 {
            (OpResult::Unknown, rng.percent(50))
        } else if roll < 20 {
            (OpResult::Fail, false)
        } else {
            (OpResult::Ok(VmOutput::Created), true)
        };
        if applies {
            effects.push((effect, i));
        }
        history.push(Operation { client: client as u64, invoke, complete: Some(complete), input, result });
    }
    effects.sort_unstable();
    let mut exists: HashMap<String, bool> = HashMap::new();
    for (_, i) in effects {
        let op: &mut VmOp = &mut history[i];
        let state = exists.entry(op.input.name().to_owned()).or_default();
        let (next, output) = VmModel.step(state, &op.input);
        *state = next;
        if let OpResult::Ok(recorded) = &mut op.result {
            *recorded = output;
        }
    }
    history
}

#[test]
fn concurrent_vm_histories_with_unknowns_are_linearizable() {
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let len = 1 + rng.below(300) as usize;
        let clients = 1 + rng.below(6);
        let report = run(&VmModel, concurrent_vm(&mut rng, len, clients));
        assert!(report.is_linearizable(), "seed {seed}:\n{report}");
    }
}

#[test]
fn two_creates_that_both_succeed_break_a_concurrent_vm_history() {
    for seed in 0..200 {
        let mut rng = Rng::new(seed);
        let len = 10 + rng.below(300) as usize;
        let clients = 1 + rng.below(6);
        let mut ops = concurrent_vm(&mut rng, len, clients);
        // A create that succeeded, and one that completed before it was invoked, with no
        // delete in between that anyone knows of: the second cannot have succeeded too.
        let Some(first) = (0..ops.len()).find(|&i| ops[i].result == OpResult::Ok(VmOutput::Created)) else {
            continue;
        };
        let name = ops[first].input.name().to_owned();
        let end = ops[first].complete.unwrap_or(0) + 1;
        ops.retain(|op| !(op.input.name() == name && matches!(op.input, VmInput::Delete { .. })));
        ops.push(create(99, &name, end, end + 1, VmOutput::Created));
        assert_violation(&VmModel, ops, crate::VmName(name));
    }
}
