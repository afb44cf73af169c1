//! `blixard-check` on files: exit 0 when linearizable, 1 with the window when not, 2 with the
//! line and field when the input is bad, 3 when the step limit was reached.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const PUT: &str =
    r#"{"client":1,"invoke":0,"complete":10,"op":{"put":{"key":"a","value":"1"}},"result":{"ok":"written"}}"#;
const GET_1: &str = r#"{"client":2,"invoke":20,"complete":30,"op":{"get":{"key":"a"}},"result":{"ok":{"value":"1"}}}"#;
const GET_NONE: &str =
    r#"{"client":2,"invoke":20,"complete":30,"op":{"get":{"key":"a"}},"result":{"ok":{"value":null}}}"#;

fn check_file(lines: &[&str], args: &[&str]) -> Output {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    for line in lines {
        writeln!(file, "{line}").expect("write");
    }
    Command::new(env!("CARGO_BIN_EXE_blixard-check")).args(args).arg(file.path()).output().expect("run blixard-check")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_linearizable_history_exits_0() {
    let out = check_file(&[PUT, GET_1], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("linearizable: 2 operations in 1 partitions"));
}

#[test]
fn a_violation_exits_1_and_prints_the_window() {
    let out = check_file(&[PUT, GET_NONE], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("key \"a\": no linearization"), "{stdout}");
    assert!(stdout.contains("#2"), "{stdout}");
    assert!(stdout.contains("the model answers: value \"1\""), "{stdout}");
}

#[test]
fn bad_input_exits_2_naming_the_line_and_the_field() {
    let bad = r#"{"client":2,"invoke":"soon","op":{"get":{"key":"a"}},"result":"unknown"}"#;
    let out = check_file(&[PUT, bad], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 2: field `invoke` is invalid"), "{stderr}");
    assert!(out.stdout.is_empty());

    let late = r#"{"client":2,"invoke":20,"complete":5,"op":{"get":{"key":"a"}},"result":{"ok":{"value":"1"}}}"#;
    let out = check_file(&[PUT, late], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("line 2: field `complete`: 5 is earlier than invoke 20"), "{stderr}");
}

#[test]
fn bad_usage_exits_2() {
    let out = check_file(&[PUT], &["--max-steps", "many"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--max-steps"));
    let out = Command::new(env!("CARGO_BIN_EXE_blixard-check"))
        .arg("/nonexistent/history.jsonl")
        .output()
        .expect("run blixard-check");
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot open /nonexistent/history.jsonl"));
}

#[test]
fn the_step_limit_exits_3() {
    let mut lines: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"client":{i},"invoke":0,"complete":100,"op":{{"put":{{"key":"a","value":"{i}"}}}},"result":{{"ok":"written"}}}}"#
            )
        })
        .collect();
    lines.push(
        r#"{"client":9,"invoke":200,"complete":300,"op":{"delete":{"key":"a"}},"result":{"ok":{"existed":false}}}"#
            .to_owned(),
    );
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let out = check_file(&lines, &["--max-steps", "10"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("gave up (step limit reached) on: key \"a\""));
    let out = check_file(&lines, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
}

#[test]
fn standard_input_is_read_with_a_dash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_blixard-check"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run blixard-check");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(stdin, "{PUT}\n{GET_NONE}").expect("write");
    drop(stdin);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(1));
}
