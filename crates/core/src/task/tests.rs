use super::*;

fn ok() -> TaskSpec {
    TaskSpec { command: "echo".into(), args: vec!["hi".into()], ..Default::default() }
}

fn field(s: TaskSpec) -> String {
    s.validate().expect_err("must be refused").field
}

#[test]
fn a_plain_spec_is_valid() {
    ok().validate().unwrap();
}

#[test]
fn command_rules() {
    assert_eq!(field(TaskSpec { command: String::new(), ..ok() }), "command");
    assert_eq!(field(TaskSpec { command: "x".repeat(MAX_COMMAND_LEN + 1), ..ok() }), "command");
    assert_eq!(field(TaskSpec { command: "a\0b".into(), ..ok() }), "command");
}

#[test]
fn shell_characters_are_plain_arguments() {
    TaskSpec { args: vec![";".into(), "$(rm -rf /)".into(), "a b".into()], ..ok() }.validate().unwrap();
}

#[test]
fn args_rules() {
    assert_eq!(field(TaskSpec { args: vec!["a".into(); MAX_ARGS + 1], ..ok() }), "args");
    assert_eq!(field(TaskSpec { args: vec!["a".repeat(MAX_ARG_LEN + 1)], ..ok() }), "args");
    assert_eq!(field(TaskSpec { args: vec!["a\0".into()], ..ok() }), "args");
    assert_eq!(field(TaskSpec { args: vec!["a".repeat(MAX_ARG_LEN); 17], ..ok() }), "args");
}

#[test]
fn env_rules() {
    let env = |k: &str, v: &str| TaskSpec { env: [(k.to_string(), v.to_string())].into(), ..ok() };
    env("FOO_1", "x").validate().unwrap();
    assert_eq!(field(env("1FOO", "x")), "env");
    assert_eq!(field(env("A-B", "x")), "env");
    assert_eq!(field(env("", "x")), "env");
    assert_eq!(field(env("PATH", "/tmp")), "env");
    assert_eq!(field(env("A", &"v".repeat(MAX_ENV_VALUE_LEN + 1))), "env");
    assert_eq!(field(env("A", "a\0")), "env");
    let many = (0..=MAX_ENV).map(|i| (format!("K{i}"), String::new())).collect();
    assert_eq!(field(TaskSpec { env: many, ..ok() }), "env");
}

#[test]
fn resource_ranges() {
    assert_eq!(field(TaskSpec { vcpus: 0, ..ok() }), "vcpus");
    assert_eq!(field(TaskSpec { vcpus: VCPUS.1 + 1, ..ok() }), "vcpus");
    assert_eq!(field(TaskSpec { memory_mib: 0, ..ok() }), "memory");
    assert_eq!(field(TaskSpec { memory_mib: MEMORY_MIB.1 + 1, ..ok() }), "memory");
}

#[test]
fn constraint_rules() {
    let c = Constraint::parse("zone=a").unwrap();
    TaskSpec { constraints: vec![c.clone()], ..ok() }.validate().unwrap();
    assert_eq!(field(TaskSpec { constraints: vec![c; MAX_CONSTRAINTS + 1], ..ok() }), "constraint");
}

#[test]
fn timeout_and_retry_rules() {
    assert_eq!(field(TaskSpec { timeout_ms: 999, ..ok() }), "timeout_ms");
    assert_eq!(field(TaskSpec { timeout_ms: TIMEOUT_MS.1 + 1, ..ok() }), "timeout_ms");
    assert_eq!(field(TaskSpec { retries: MAX_RETRIES + 1, ..ok() }), "retries");
    assert_eq!(field(TaskSpec { backoff_ms: MAX_BACKOFF_MS + 1, ..ok() }), "backoff_ms");
    assert_eq!(field(TaskSpec { backoff_ms: 10, backoff_cap_ms: 5, ..ok() }), "backoff_cap_ms");
}

#[test]
fn name_labels_isolation_rules() {
    assert_eq!(field(TaskSpec { name: Some("Bad Name".into()), ..ok() }), "name");
    TaskSpec { name: Some("nightly-1".into()), ..ok() }.validate().unwrap();
    let labels = [("bad key!".to_string(), "v".to_string())].into();
    assert_eq!(field(TaskSpec { labels, ..ok() }), "labels");
    assert!(Isolation::parse("docker").is_err());
}

#[test]
fn vm_isolation_takes_a_vms_resources() {
    let vm = |vcpus, memory_mib| TaskSpec { isolation: Isolation::Vm, vcpus, memory_mib, ..ok() };
    vm(1, 128).validate().unwrap();
    vm(VM_VCPUS.1, VM_MEMORY_MIB.0).validate().unwrap();
    vm(1, VM_MEMORY_MIB.1).validate().unwrap();
    assert_eq!(field(vm(VM_VCPUS.1 + 1, 128)), "vcpus");
    assert_eq!(field(vm(1, VM_MEMORY_MIB.0 - 1)), "memory");
    assert_eq!(field(vm(1, VM_MEMORY_MIB.1 + 1)), "memory");
    // The same resources are fine for a process.
    TaskSpec { vcpus: VM_VCPUS.1 + 1, memory_mib: 64, ..ok() }.validate().unwrap();
}

#[test]
fn result_error_is_bounded() {
    AttemptResult::StartFailed { error: "x".repeat(MAX_ERROR_LEN) }.validate().unwrap();
    assert!(AttemptResult::StartFailed { error: "x".repeat(MAX_ERROR_LEN + 1) }.validate().is_err());
}

#[test]
fn backoff_doubles_up_to_its_cap() {
    let s = TaskSpec { backoff_ms: 100, backoff_cap_ms: 350, ..ok() };
    assert_eq!([s.backoff(0), s.backoff(1), s.backoff(2), s.backoff(3), s.backoff(40)], [0, 100, 200, 350, 350]);
}

#[test]
fn ids_parse_strictly() {
    assert_eq!(parse_id("t42").unwrap(), 42);
    assert_eq!(format_id(42), "t42");
    for bad in ["", "t", "t0", "42", "tx", "t-1", "t+1", "t99999999999999999999999"] {
        assert_eq!(parse_id(bad).unwrap_err().field, "id", "{bad}");
    }
}

#[test]
fn enforcement_names_round_trip_and_a_bad_one_is_named() {
    for e in [Enforcement::None, Enforcement::Rlimit, Enforcement::CgroupV1, Enforcement::CgroupV2] {
        assert_eq!(Enforcement::parse(e.as_str()).unwrap(), e);
    }
    assert_eq!(Enforcement::parse("cgroup").unwrap_err().field, "enforcement");
}
