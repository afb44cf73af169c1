//! Hand-made KV histories.

use super::*;
use crate::OpResult;

#[test]
fn sequential_writes_and_reads() {
    assert_linearizable(
        &KvModel,
        vec![
            get(1, "a", 0, 1, None),
            put(1, "a", "1", 2, 3),
            get(2, "a", 4, 5, Some("1")),
            delete(2, "a", 6, 7, true),
            get(1, "a", 8, 9, None),
            delete(1, "a", 10, 11, false),
        ],
    );
}

#[test]
fn a_stale_read_after_a_completed_write_is_a_violation() {
    let violation = assert_violation(
        &KvModel,
        vec![put(1, "a", "1", 0, 10), put(1, "a", "2", 20, 30), get(2, "a", 40, 50, Some("1"))],
        kv_key("a"),
    );
    assert_eq!(violation.linearized, 2);
    assert_eq!(violation.state, Some("2".into()));
    let deadline = violation.deadline.as_ref().map(|op| op.index);
    assert_eq!(deadline, Some(2));
    assert_eq!(violation.candidates.len(), 1);
    assert!(!violation.candidates[0].fits);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    for seen in [Some("1"), Some("2")] {
        assert_linearizable(
            &KvModel,
            vec![put(1, "a", "1", 0, 10), put(1, "a", "2", 20, 40), get(2, "a", 25, 30, seen)],
        );
    }
}

#[test]
fn concurrent_writes_may_be_read_in_either_order() {
    for (first, then) in [("1", "2"), ("2", "1")] {
        assert_linearizable(
            &KvModel,
            vec![
                put(1, "a", "1", 0, 10),
                put(2, "a", "2", 0, 10),
                get(3, "a", 5, 15, Some(first)),
                get(3, "a", 16, 20, Some(then)),
            ],
        );
    }
}

#[test]
fn once_concurrent_writes_are_done_the_order_is_fixed() {
    assert_violation(
        &KvModel,
        vec![
            put(1, "a", "1", 0, 10),
            put(2, "a", "2", 0, 10),
            get(3, "a", 20, 30, Some("2")),
            get(3, "a", 40, 50, Some("1")),
        ],
        kv_key("a"),
    );
}

#[test]
fn a_read_of_a_value_never_written_is_a_violation() {
    let violation = assert_violation(
        &KvModel,
        vec![put(1, "a", "1", 0, 10), put(2, "a", "2", 5, 15), get(3, "a", 0, 20, Some("3"))],
        kv_key("a"),
    );
    let text = violation.to_string();
    assert!(text.contains("get \"a\""), "{text}");
}

#[test]
fn an_unknown_put_may_be_observed_later() {
    assert_linearizable(
        &KvModel,
        vec![
            put(1, "a", "1", 0, 10),
            Operation::unknown(2, put_input("a", "2"), 20, Some(30)),
            get(3, "a", 100, 110, Some("2")),
        ],
    );
}

#[test]
fn an_unknown_put_may_take_effect_long_after_its_client_gave_up() {
    assert_linearizable(
        &KvModel,
        vec![
            Operation::unknown(2, put_input("a", "2"), 20, Some(30)),
            get(3, "a", 100, 110, None),
            get(3, "a", 200, 210, Some("2")),
        ],
    );
}

#[test]
fn an_unknown_put_may_never_be_observed() {
    assert_linearizable(
        &KvModel,
        vec![
            put(1, "a", "1", 0, 10),
            Operation::unknown(2, put_input("a", "2"), 20, None),
            get(3, "a", 100, 110, Some("1")),
            get(3, "a", 120, 130, Some("1")),
        ],
    );
}

#[test]
fn an_observed_unknown_put_cannot_be_unobserved() {
    assert_violation(
        &KvModel,
        vec![
            put(1, "a", "1", 0, 10),
            Operation::unknown(2, put_input("a", "2"), 20, Some(30)),
            get(3, "a", 40, 50, Some("2")),
            get(3, "a", 60, 70, Some("1")),
        ],
        kv_key("a"),
    );
}

#[test]
fn an_unknown_put_cannot_take_effect_before_its_invoke() {
    assert_violation(
        &KvModel,
        vec![get(1, "a", 0, 10, Some("2")), Operation::unknown(2, put_input("a", "2"), 20, None)],
        kv_key("a"),
    );
}

#[test]
fn failed_operations_are_ignored() {
    let report = run(
        &KvModel,
        vec![
            put(1, "a", "1", 0, 10),
            Operation::fail(2, put_input("a", "2"), 20, 30),
            // A failed operation's input does not even have to fit the model.
            Operation::fail(2, KvInput::Delete { key: "a".into() }, 40, 41),
            get(3, "a", 50, 60, Some("1")),
        ],
    );
    assert!(report.is_linearizable(), "{report}");
    assert_eq!((report.checked, report.dropped), (2, 2));
}

#[test]
fn a_failed_put_that_was_observed_is_a_violation() {
    assert_violation(
        &KvModel,
        vec![put(1, "a", "1", 0, 10), Operation::fail(2, put_input("a", "2"), 20, 30), get(3, "a", 50, 60, Some("2"))],
        kv_key("a"),
    );
}

#[test]
fn a_delete_that_says_the_key_was_absent_when_it_must_exist_is_a_violation() {
    assert_violation(
        &KvModel,
        vec![put(1, "a", "1", 0, 10), get(2, "a", 20, 30, Some("1")), delete(1, "a", 40, 50, false)],
        kv_key("a"),
    );
}

#[test]
fn a_delete_concurrent_with_the_put_may_find_the_key_absent() {
    assert_linearizable(
        &KvModel,
        vec![put(1, "a", "1", 0, 10), delete(2, "a", 5, 15, false), get(2, "a", 20, 30, Some("1"))],
    );
}

#[test]
fn two_deletes_cannot_both_find_the_key() {
    assert_violation(
        &KvModel,
        vec![put(1, "a", "1", 0, 10), delete(1, "a", 20, 30, true), delete(2, "a", 20, 30, true)],
        kv_key("a"),
    );
}

#[test]
fn an_invoke_at_the_instant_of_a_completion_counts_as_concurrent() {
    assert_linearizable(&KvModel, vec![put(1, "a", "1", 0, 10), get(2, "a", 10, 20, None)]);
}

#[test]
fn keys_are_checked_apart_and_only_the_broken_one_is_named() {
    let violation = assert_violation(
        &KvModel,
        vec![
            put(1, "a", "1", 0, 10),
            put(1, "b", "1", 0, 10),
            get(2, "a", 20, 30, Some("1")),
            get(2, "b", 20, 30, None),
        ],
        kv_key("b"),
    );
    assert_eq!(violation.operations, 2);
}

#[test]
fn unknown_reads_never_matter() {
    let report = run(
        &KvModel,
        vec![
            put(1, "a", "1", 0, 10),
            Operation::unknown(2, KvInput::Get { key: "a".into() }, 0, None),
            Operation { result: OpResult::Unknown, ..get(3, "a", 20, 30, Some("garbage")) },
        ],
    );
    assert!(report.is_linearizable(), "{report}");
}

#[test]
fn an_unknown_put_of_a_value_never_read_can_explain_a_delete() {
    let violation_free = run(
        &KvModel,
        vec![
            Operation::unknown(1, put_input("a", "lost"), 0, Some(5)),
            delete(2, "a", 10, 20, true),
            get(2, "a", 30, 40, None),
        ],
    );
    assert!(violation_free.is_linearizable(), "{violation_free}");
}

/// Thirty unknown puts whose values nobody read, then deletes that found the key, each
/// explainable by any of them, then a read of a value nobody wrote. Telling every choice of
/// puts apart would take more than 2^30 configurations; the checker must see they are one.
#[test]
fn unknown_operations_nobody_can_tell_apart_are_one_choice() {
    let mut ops = Vec::new();
    for i in 0..30 {
        ops.push(Operation::unknown(i, put_input("a", &format!("u{i}")), i, None));
        ops.push(Operation::unknown(i, KvInput::Delete { key: "a".into() }, i, None));
    }
    let mut time = 100;
    for _ in 0..15 {
        ops.push(delete(40, "a", time, time + 5, true));
        ops.push(get(41, "a", time + 10, time + 15, None));
        time += 20;
    }
    let fine = run(&KvModel, ops.clone());
    assert!(fine.is_linearizable(), "{fine}");
    ops.push(get(42, "a", time, time + 5, Some("never written")));
    let report = run(&KvModel, ops);
    assert_eq!(report.violations.len(), 1, "{report}");
    assert!(report.steps < 1_000_000, "{} steps", report.steps);
    // The report shows the values as recorded, not the search's placeholder.
    let text = report.to_string();
    assert!(!text.contains("no get returned"), "{text}");
}

#[test]
fn operations_may_be_recorded_in_any_order() {
    let mut ops = vec![
        put(1, "a", "1", 0, 10),
        put(1, "a", "2", 20, 30),
        get(2, "a", 25, 26, Some("2")),
        get(2, "a", 40, 50, Some("2")),
    ];
    ops.reverse();
    assert_linearizable(&KvModel, ops.clone());
    ops[0] = get(2, "a", 40, 50, Some("1"));
    let violation = assert_violation(&KvModel, ops, kv_key("a"));
    assert_eq!(violation.deadline.map(|op| op.index), Some(0));
}
