//! The JSON-lines form: round trips, the documented example, and errors that name the line and
//! the field.

use super::*;
use crate::{ClusterModel, ParseError};

const EXAMPLE: &str = r#"{"client":1,"invoke":10,"complete":14,"op":{"put":{"key":"a","value":"1"}},"result":{"ok":"written"}}
{"client":2,"invoke":12,"complete":15,"op":{"get":{"key":"a"}},"result":{"ok":{"value":"1"}}}
{"client":2,"invoke":16,"op":{"vm_create":{"name":"web"}},"result":"unknown"}
"#;

#[test]
fn the_documented_example_reads_and_checks() {
    let history = History::<ClusterModel>::from_json_lines(EXAMPLE).unwrap();
    assert_eq!(history.len(), 3);
    assert_eq!(history.ops()[2].complete, None);
    assert!(check(&ClusterModel, &history).unwrap().is_linearizable());
}

#[test]
fn every_kind_of_operation_round_trips() {
    let ops = vec![
        put(1, "a", "1", 0, 1),
        get(2, "a", 2, 3, Some("1")),
        get(2, "b", 2, 3, None),
        delete(3, "a", 4, 5, true),
        Operation::fail(4, put_input("a", "2"), 6, 7),
        Operation::unknown(5, put_input("a", "3"), 8, None),
        Operation::unknown(5, put_input("a", "4"), 9, Some(12)),
    ];
    let history = History::<KvModel>::from(ops);
    let text = history.to_json_lines();
    assert_eq!(text.lines().count(), 7);
    let back = History::<KvModel>::from_json_lines(&text).unwrap();
    assert_eq!(back.ops(), history.ops());

    let vms = History::<VmModel>::from(vec![
        create(1, "web", 0, 1, VmOutput::Created),
        create(1, "web", 2, 3, VmOutput::AlreadyExists),
        destroy(1, "web", 4, 5, VmOutput::Deleted),
        destroy(1, "web", 6, 7, VmOutput::NotFound),
    ]);
    let back = History::<VmModel>::from_json_lines(&vms.to_json_lines()).unwrap();
    assert_eq!(back.ops(), vms.ops());
}

#[test]
fn kv_and_vm_histories_read_as_cluster_histories() {
    let kv = History::<KvModel>::from(vec![put(1, "a", "1", 0, 1), get(2, "a", 5, 6, None)]);
    let vm = History::<VmModel>::from(vec![create(1, "web", 0, 1, VmOutput::Created)]);
    let text = kv.to_json_lines() + &vm.to_json_lines();
    let cluster = History::<ClusterModel>::from_json_lines(&text).unwrap();
    let report = check(&ClusterModel, &cluster).unwrap();
    assert_eq!(report.partitions, 2);
    assert_eq!(report.violations.len(), 1, "{report}");
    assert!(report.to_string().contains("#2 "), "{report}");
}

fn parse_error(text: &str) -> ParseError {
    History::<ClusterModel>::from_json_lines(text).unwrap_err()
}

/// The error and its causes, as `blixard-check` prints them.
fn chain(error: &ParseError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

const GOOD: &str = r#"{"client":1,"invoke":0,"complete":1,"op":{"get":{"key":"a"}},"result":{"ok":{"value":null}}}"#;

#[test]
fn errors_name_the_line_and_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"client":1,"invoke":"x","complete":1,"op":{"get":{"key":"a"}},"result":"fail"}"#,
            "line 2: field `invoke` is invalid: invalid type: string \"x\", expected u64",
        ),
        (r#"{"client":-1,"invoke":0,"op":{"get":{"key":"a"}},"result":"fail"}"#, "line 2: field `client` is invalid"),
        (r#"{"client":1,"invoke":0,"result":"fail"}"#, "line 2: field `op` is missing"),
        (
            r#"{"client":1,"invoke":0,"op":{"get":{"key":"a"}},"result":"fail","clinet":2}"#,
            "line 2: field `clinet` is not allowed",
        ),
        (
            r#"{"client":1,"invoke":0,"op":{"pt":{"key":"a"}},"result":"fail"}"#,
            "line 2: field `op` is invalid: unknown variant `pt`",
        ),
        (
            r#"{"client":1,"invoke":0,"op":{"put":{"key":"a"}},"result":"fail"}"#,
            "line 2: field `op` is invalid: missing field `value`",
        ),
        (
            r#"{"client":1,"invoke":0,"op":{"get":{"key":"a","k":1}},"result":"fail"}"#,
            "line 2: field `op` is invalid: unknown field `k`",
        ),
        (
            r#"{"client":1,"invoke":0,"op":{"get":{"key":"a"}},"result":"maybe"}"#,
            "line 2: field `result` is invalid: unknown variant `maybe`",
        ),
        (r#"{"client":1,"#, "line 2: not valid JSON: EOF while parsing"),
        ("[1, 2]", "line 2: not a JSON object"),
        ("", "line 2: empty"),
        ("   ", "line 2: empty"),
    ];
    for (line, expected) in cases {
        let error = parse_error(&format!("{GOOD}\n{line}\n{GOOD}\n"));
        assert_eq!(error.line(), 2, "{line}");
        let text = chain(&error);
        assert!(text.starts_with(expected), "{line}\ngave: {text}\nwanted: {expected}");
    }
}

#[test]
fn an_overlong_line_is_refused_without_reading_it_all() {
    let long = format!("{GOOD}\n{}\n", "x".repeat(crate::MAX_LINE_BYTES + 10));
    let error = parse_error(&long);
    assert!(matches!(error, ParseError::TooLong { line: 2 }), "{error}");
    // A line of exactly the limit (plus its newline) is read.
    let padded = format!("{GOOD}{}", " ".repeat(crate::MAX_LINE_BYTES - GOOD.len()));
    let history = History::<ClusterModel>::from_json_lines(&format!("{padded}\n")).unwrap();
    assert_eq!(history.len(), 1);
}

#[test]
fn a_last_line_without_newline_and_crlf_endings_are_read() {
    let text = format!("{GOOD}\r\n{GOOD}");
    let history = History::<ClusterModel>::from_json_lines(&text).unwrap();
    assert_eq!(history.len(), 2);
}
