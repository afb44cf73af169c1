//! The state machine command by command.

use super::*;
use crate::spec::{Observed, Phase, PortForward, PowerState, RestartPolicy, ValidationError, VmSpec};
use crate::store::{MemStore, PageLimit};
use crate::Registration;

fn env(command: Command) -> Envelope {
    Envelope { session: None, now_ms: 1_000, command }
}

fn run(store: &mut MemStore, index: u64, c: Command) -> Outcome {
    apply(store, index, &env(c)).expect("mem store never fails").outcome
}

fn spec(name: &str) -> VmSpec {
    VmSpec { name: name.into(), vcpus: 2, memory_mib: 256, ..Default::default() }
}

fn create(name: &str) -> Command {
    Command::VmCreate { spec: spec(name), node: None, start: false, queue: false }
}

/// A store with one registered node (id 1, 16 vcpus, 8 GiB).
fn with_node() -> MemStore {
    member_node(1, 16, 8192)
}

/// A store whose member `id` registered `vcpus` and `memory_mib`.
pub(super) fn member_node(id: u64, vcpus: u32, memory_mib: u64) -> MemStore {
    let mut s = MemStore::default();
    add_node(&mut s, id, vcpus, memory_mib);
    s
}

pub(super) fn add_node(s: &mut MemStore, id: u64, vcpus: u32, memory_mib: u64) {
    super::run(s, 1, &env(Command::Bootstrap { id, addr: format!("127.0.0.1:{}", 7000 + id) })).unwrap().unwrap();
    let node = Registration { id, vcpus, memory_mib, disk_gib: 100, accel: "tcg".into(), ..Default::default() };
    run(s, 1, Command::NodeRegister { node }).unwrap();
}

#[test]
fn put_then_get_returns_the_value() {
    let mut s = MemStore::default();
    assert_eq!(run(&mut s, 1, Command::KvPut { key: b"a".to_vec(), value: b"1".to_vec() }), Ok(Response::Done));
    assert_eq!(query(&s, &Query::KvGet { key: b"a".to_vec() }), Ok(QueryResult::Value(Some(b"1".to_vec()))));
    assert_eq!(query(&s, &Query::KvGet { key: b"b".to_vec() }), Ok(QueryResult::Value(None)));
}

#[test]
fn put_overwrites() {
    let mut s = MemStore::default();
    run(&mut s, 1, Command::KvPut { key: b"a".to_vec(), value: b"1".to_vec() }).unwrap();
    run(&mut s, 2, Command::KvPut { key: b"a".to_vec(), value: b"2".to_vec() }).unwrap();
    assert_eq!(query(&s, &Query::KvGet { key: b"a".to_vec() }), Ok(QueryResult::Value(Some(b"2".to_vec()))));
}

#[test]
fn put_with_bad_key_or_value_is_refused_and_changes_nothing() {
    let mut s = MemStore::default();
    let r = run(&mut s, 1, Command::KvPut { key: vec![], value: b"1".to_vec() });
    assert_eq!(r, Err(CommandError::Invalid(ValidationError::new("key", "must be 1 to 1024 bytes (got 0)"))));
    let r = run(&mut s, 2, Command::KvPut { key: b"k".to_vec(), value: vec![0; (1 << 20) + 1] });
    assert!(matches!(r, Err(CommandError::Invalid(ValidationError { ref field, .. })) if field == "value"));
    assert_eq!(s.user_tables(), MemStore::default());
}

#[test]
fn delete_reports_whether_the_key_existed() {
    let mut s = MemStore::default();
    run(&mut s, 1, Command::KvPut { key: b"a".to_vec(), value: b"1".to_vec() }).unwrap();
    assert_eq!(run(&mut s, 2, Command::KvDelete { key: b"a".to_vec() }), Ok(Response::Deleted { existed: true }));
    assert_eq!(run(&mut s, 3, Command::KvDelete { key: b"a".to_vec() }), Ok(Response::Deleted { existed: false }));
    assert_eq!(query(&s, &Query::KvGet { key: b"a".to_vec() }), Ok(QueryResult::Value(None)));
}

#[test]
fn list_by_prefix_is_ordered_and_limited() {
    let mut s = MemStore::default();
    for k in ["b/2", "a/1", "b/1", "c", "b/3"] {
        run(&mut s, 1, Command::KvPut { key: k.as_bytes().to_vec(), value: b"v".to_vec() }).unwrap();
    }
    let keys = |r: QueryResult| match r {
        QueryResult::Pairs { pairs, more } => {
            (pairs.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>(), more)
        }
        other => panic!("unexpected {other:?}"),
    };
    let list = |prefix: &str, after: Option<&str>, count| Query::KvList {
        prefix: prefix.as_bytes().to_vec(),
        start_after: after.map(|a| a.as_bytes().to_vec()),
        limit: PageLimit { count, bytes: usize::MAX },
    };
    let all = query(&s, &list("b/", None, 10)).unwrap();
    assert_eq!(keys(all), (vec!["b/1".to_string(), "b/2".into(), "b/3".into()], false));
    let two = query(&s, &list("b/", None, 2)).unwrap();
    assert_eq!(keys(two), (vec!["b/1".to_string(), "b/2".into()], true));
    let rest = query(&s, &list("b/", Some("b/2"), 2)).unwrap();
    assert_eq!(keys(rest), (vec!["b/3".to_string()], false));
    let every = query(&s, &list("", None, 100)).unwrap();
    assert_eq!(keys(every).0.len(), 5);
}

#[test]
fn a_kv_list_page_is_bounded_by_bytes_and_always_holds_one_pair() {
    let mut s = MemStore::default();
    for (k, n) in [("a", 10), ("b", 10), ("c", 100), ("d", 10)] {
        run(&mut s, 1, Command::KvPut { key: k.as_bytes().to_vec(), value: vec![b'v'; n] }).unwrap();
    }
    let page = |after: Option<&str>, bytes| {
        let q = Query::KvList {
            prefix: vec![],
            start_after: after.map(|a| a.as_bytes().to_vec()),
            limit: PageLimit { count: 100, bytes },
        };
        match query(&s, &q).unwrap() {
            QueryResult::Pairs { pairs, more } => {
                (pairs.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect::<Vec<_>>(), more)
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    // 11 + 11 bytes fit in 22, the 101 of "c" do not.
    assert_eq!(page(None, 22), (vec!["a".to_string(), "b".into()], true));
    assert_eq!(page(None, 21), (vec!["a".to_string()], true));
    // "c" alone is over the budget, and is returned alone rather than never.
    assert_eq!(page(Some("b"), 22), (vec!["c".to_string()], true));
    assert_eq!(page(Some("c"), 22), (vec!["d".to_string()], false));
    assert_eq!(page(Some("d"), 22), (vec![], false));
}

#[test]
fn vm_list_pages_by_count_bytes_and_name() {
    let mut s = with_node();
    for n in ["d", "b", "a", "c"] {
        run(&mut s, 2, create(n)).unwrap();
    }
    let page = |after: Option<&str>, count, bytes| {
        let q = Query::VmList { start_after: after.map(String::from), limit: PageLimit { count, bytes } };
        match query(&s, &q).unwrap() {
            QueryResult::Vms { vms, more } => (vms.into_iter().map(|r| r.spec.name).collect::<Vec<_>>(), more),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(page(None, 2, usize::MAX), (vec!["a".to_string(), "b".into()], true));
    assert_eq!(page(Some("b"), 2, usize::MAX), (vec!["c".to_string(), "d".into()], false));
    assert_eq!(page(Some("b"), 1000, 1), (vec!["c".to_string()], true), "one record even over budget");
    assert_eq!(page(Some("zzz"), 10, usize::MAX), (vec![], false));
}

#[test]
fn vm_create_records_the_spec_time_and_index() {
    let mut s = with_node();
    let mut sp = spec("web");
    sp.ports = vec![PortForward { host: 8080, guest: 80 }];
    sp.restart_policy = RestartPolicy::Always;
    let Ok(Response::Vm(rec)) =
        run(&mut s, 5, Command::VmCreate { spec: sp.clone(), node: None, start: true, queue: false })
    else {
        panic!()
    };
    assert_eq!(
        (&rec.spec, rec.created_at_ms, rec.create_index, rec.desired, rec.node, rec.placed_index),
        (&sp, 1_000, 5, PowerState::Running, Some(1), 5)
    );
    assert_eq!(rec.events.iter().map(|e| e.what.as_str()).collect::<Vec<_>>(), ["placed on node 1"]);
    assert_eq!(query(&s, &Query::VmGet { name: "web".into() }), Ok(QueryResult::Vm(Some(rec))));
}

#[test]
fn vm_create_of_an_existing_name_is_rejected_not_overwritten() {
    let mut s = with_node();
    run(&mut s, 1, create("web")).unwrap();
    let before = s.clone();
    let mut other = spec("web");
    other.vcpus = 8;
    assert_eq!(
        run(&mut s, 2, Command::VmCreate { spec: other, node: None, start: true, queue: false }),
        Err(CommandError::AlreadyExists("vm \"web\"".into()))
    );
    assert_eq!(s.user_tables(), before.user_tables());
}

#[test]
fn vm_create_with_invalid_spec_is_rejected_and_changes_nothing() {
    let mut s = with_node();
    let before = s.clone();
    let mut bad = spec("web");
    bad.vcpus = 0;
    let r = run(&mut s, 1, Command::VmCreate { spec: bad, node: None, start: false, queue: false });
    assert_eq!(r, Err(CommandError::Invalid(ValidationError::new("vcpus", "must be between 1 and 32 (got 0)"))));
    assert_eq!(s.user_tables(), before.user_tables());
}

#[test]
fn vm_list_is_ordered_by_name_and_delete_removes() {
    let mut s = with_node();
    for n in ["b", "a", "c"] {
        run(&mut s, 1, create(n)).unwrap();
    }
    let all = Query::VmList { start_after: None, limit: PageLimit { count: 100, bytes: usize::MAX } };
    let names = |s: &MemStore| match query(s, &all).unwrap() {
        QueryResult::Vms { vms, more: false } => vms.into_iter().map(|r| r.spec.name).collect::<Vec<_>>(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(names(&s), ["a", "b", "c"]);
    assert_eq!(run(&mut s, 2, Command::VmDelete { name: "b".into() }), Ok(Response::Deleted { existed: true }));
    assert_eq!(names(&s), ["a", "c"]);
    assert_eq!(run(&mut s, 3, Command::VmDelete { name: "b".into() }), Err(CommandError::NotFound("vm \"b\"".into())));
}

#[test]
fn membership_commands_are_refused_in_normal_entries() {
    let mut s = MemStore::default();
    for c in [
        Command::AddLearner { id: 2, addr: "127.0.0.1:7002".into() },
        Command::RemoveMember { id: 1 },
        Command::Bootstrap { id: 1, addr: "a:1".into() },
    ] {
        assert!(matches!(run(&mut s, 1, c), Err(CommandError::FailedPrecondition(_))));
    }
    assert!(members(&s).unwrap().is_empty());
}

#[test]
fn the_same_log_gives_the_same_state_and_snapshots_round_trip() {
    let log = [
        Command::KvPut { key: b"x".to_vec(), value: b"1".to_vec() },
        Command::NodeRegister { node: Registration { id: 1, vcpus: 4, memory_mib: 4096, ..Default::default() } },
        create("db"),
        Command::VmDelete { name: "db".into() },
        Command::KvDelete { key: b"x".to_vec() },
        Command::KvPut { key: b"y".to_vec(), value: b"2".to_vec() },
    ];
    let (mut a, mut b) = (MemStore::default(), MemStore::default());
    for s in [&mut a, &mut b] {
        super::run(s, 1, &env(Command::Bootstrap { id: 1, addr: "a:1".into() })).unwrap().unwrap();
    }
    for (i, c) in log.iter().enumerate() {
        run(&mut a, i as u64 + 1, c.clone()).unwrap();
        run(&mut b, i as u64 + 1, c.clone()).unwrap();
    }
    assert_eq!(a, b);
    let data = export(&a).unwrap();
    let mut c = MemStore::default();
    run(&mut c, 1, Command::KvPut { key: b"stale".to_vec(), value: vec![] }).unwrap();
    import(&mut c, &data).unwrap();
    assert_eq!(export(&c).unwrap(), data);
    assert_eq!(query(&c, &Query::KvGet { key: b"stale".to_vec() }), Ok(QueryResult::Value(None)));
    // A snapshot is checked without being applied; junk and other versions are refused.
    assert_eq!(check_snapshot(&data), Ok(()));
    assert!(check_snapshot(b"not a snapshot").unwrap_err().0.contains("undecodable"));
    assert!(check_snapshot(&[]).is_err());
    assert!(check_snapshot(&data[..data.len() / 2]).is_err());
}

#[test]
fn a_vm_that_fits_no_node_is_refused_with_the_reason() {
    let mut s = with_node();
    let before = s.clone();
    let mut big = spec("big");
    big.memory_mib = 9000;
    let r = run(&mut s, 2, Command::VmCreate { spec: big, node: None, start: true, queue: false });
    assert_eq!(
        r,
        Err(CommandError::FailedPrecondition(
            "cannot place vm \"big\": node 1: needs 9000 MiB memory, 8192 MiB free".into()
        ))
    );
    assert_eq!(s.user_tables(), before.user_tables());
}

#[test]
fn start_stop_and_restart_change_the_desired_state() {
    let mut s = with_node();
    run(&mut s, 2, create("web")).unwrap();
    let r = run(&mut s, 3, Command::VmRestart { name: "web".into() });
    assert!(matches!(r, Err(CommandError::FailedPrecondition(m)) if m.contains("start it instead")));
    let Ok(Response::Vm(v)) =
        run(&mut s, 4, Command::VmSetDesired { name: "web".into(), desired: PowerState::Running })
    else {
        panic!()
    };
    assert_eq!(v.desired, PowerState::Running);
    let Ok(Response::Vm(v)) = run(&mut s, 5, Command::VmRestart { name: "web".into() }) else { panic!() };
    assert_eq!(v.restart_generation, 1);
    let r = run(&mut s, 6, Command::VmSetDesired { name: "nope".into(), desired: PowerState::Running });
    assert_eq!(r, Err(CommandError::NotFound("vm \"nope\"".into())));
}

#[test]
fn reports_are_recorded_only_from_the_hosting_node_for_this_incarnation() {
    let mut s = with_node();
    run(&mut s, 2, create("web")).unwrap();
    let obs = Observed { phase: Phase::Running, pid: Some(42), ..Default::default() };
    let report =
        |index, node| Command::VmReport { name: "web".into(), incarnation: index, node, observed: obs.clone() };
    assert!(run(&mut s, 3, report(1, 1)).is_err(), "wrong incarnation");
    assert!(run(&mut s, 4, report(2, 7)).is_err(), "wrong node");
    assert_eq!(run(&mut s, 5, report(2, 1)), Ok(Response::Done));
    let Ok(QueryResult::Vm(Some(v))) = query(&s, &Query::VmGet { name: "web".into() }) else { panic!() };
    let o = v.observed.unwrap();
    assert_eq!((o.phase, o.pid, o.reported_at_ms), (Phase::Running, Some(42), 1_000));
}

#[test]
fn a_corrupt_snapshot_is_an_error_not_a_panic() {
    let mut s = MemStore::default();
    assert!(import(&mut s, b"\xff\xff\xff garbage").is_err());
}

#[test]
fn envelopes_round_trip_and_garbage_does_not_panic() {
    let e = env(Command::KvPut { key: b"k".to_vec(), value: b"v".to_vec() });
    assert_eq!(Envelope::decode(&e.encode()), Ok(e));
    assert!(Envelope::decode(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
}
