//! The replicated state machine: `apply` for writes, `query` for reads, and the snapshot format.
//!
//! `apply` is a pure function of (state, command, index): no clock, no randomness, no map-order
//! iteration. Every node applying the same log reaches byte-identical tables.
//!
//! Applying one command is three steps, so a membership change can ask raft-rs in between:
//! [`begin`] (cluster time, session sweep, the session's verdict: apply, answer a duplicate with
//! its recorded outcome, or refuse; the membership rules), [`run`] (the command itself) and
//! [`finish`] (the outcome recorded in the client's session). [`apply`] does all three for a
//! normal entry.

use serde::{Deserialize, Serialize};

use crate::command::{Applied, Command, CommandError, Envelope, Outcome, Query, QueryResult, Response};
use crate::membership::{self, MembershipChange};
pub use crate::membership::{members, Member};
use crate::scheduler::{self, NodeResources};
use crate::session::{self, Check};
use crate::spec::{validate_key, validate_name, validate_value, PowerState, VmRecord};
use crate::store::{ReadStore, Store, StoreError, Table};

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

fn decode<T: for<'a> Deserialize<'a>>(table: Table, key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| {
        StoreError(format!("undecodable record in {} at {:?}: {e}", table.name(), String::from_utf8_lossy(key)))
    })
}

/// Applies one committed normal entry's command at log `index`. The outer `Result` is a storage
/// failure (fatal for the node); the command's own, deterministic result is in [`Applied`].
pub fn apply(store: &mut impl Store, index: u64, env: &Envelope) -> Result<Applied, StoreError> {
    match begin(store, index, env, None)? {
        Begun::Done(a) => Ok(a),
        Begun::Go => {
            let outcome = run(store, index, env)?;
            finish(store, index, env, outcome)
        }
    }
}

/// What [`begin`] decided.
#[derive(Debug)]
pub enum Begun {
    /// Answered without running the command (a duplicate, or refused).
    Done(Applied),
    /// Run it ([`run`], or raft-rs's configuration change then [`run`]), then [`finish`].
    Go,
}

/// The checks before a command runs. `change` is the configuration change of the entry that
/// carries it (`None` for a normal entry).
pub fn begin(
    store: &mut impl Store,
    index: u64,
    env: &Envelope,
    change: Option<&MembershipChange>,
) -> Result<Begun, StoreError> {
    let now = session::advance_clock(store, env.now_ms)?;
    session::sweep(store, now)?;
    let refused = |e: CommandError| Ok(Begun::Done(Applied { index, outcome: Err(e), duplicate: false }));
    if let Err(e) = membership::check_carrier(&env.command, change) {
        return refused(e);
    }
    if let Some(s) = &env.session {
        match session::check(store, s, now)? {
            Check::Apply => {}
            Check::Duplicate { index, outcome } => return Ok(Begun::Done(Applied { index, outcome, duplicate: true })),
            Check::Refuse(e) => return refused(e),
        }
    }
    if change.is_some() {
        if let Err(e) = membership::validate(store, &env.command) {
            return finish(store, index, env, Err(e)).map(Begun::Done);
        }
    }
    Ok(Begun::Go)
}

/// Records the outcome in the client's session and returns it.
pub fn finish(store: &mut impl Store, index: u64, env: &Envelope, outcome: Outcome) -> Result<Applied, StoreError> {
    if let Some(s) = &env.session {
        let now = session::advance_clock(store, env.now_ms)?;
        session::record(store, s, index, &outcome, now)?;
    }
    Ok(Applied { index, outcome, duplicate: false })
}

fn put_member(store: &mut impl Store, m: &Member) -> Result<(), StoreError> {
    store.put(Table::Members, &m.id.to_be_bytes(), &encode(m))
}

/// Runs a command that [`begin`] let through.
pub fn run(store: &mut impl Store, index: u64, env: &Envelope) -> Result<Outcome, StoreError> {
    Ok(match &env.command {
        Command::Noop => Ok(Response::Done),
        Command::KvPut { key, value } => match validate_key(key).and_then(|()| validate_value(value)) {
            Err(e) => Err(e.into()),
            Ok(()) => {
                store.put(Table::Kv, key, value)?;
                Ok(Response::Done)
            }
        },
        Command::KvDelete { key } => match validate_key(key) {
            Err(e) => Err(e.into()),
            Ok(()) => Ok(Response::Deleted { existed: store.delete(Table::Kv, key)? }),
        },
        Command::VmCreate { spec, node, start } => {
            if let Err(e) = spec.validate() {
                return Ok(Err(e.into()));
            }
            if store.get(Table::Vms, spec.name.as_bytes())?.is_some() {
                return Ok(Err(CommandError::AlreadyExists(format!("vm {:?}", spec.name))));
            }
            let placed = match scheduler::place(&nodes(store)?, &vms(store)?, spec, *node) {
                Ok(n) => n,
                Err(why) => {
                    return Ok(Err(CommandError::FailedPrecondition(format!("cannot place vm {:?}: {why}", spec.name))))
                }
            };
            let rec = VmRecord {
                spec: spec.clone(),
                created_at_ms: env.now_ms,
                create_index: index,
                desired: if *start { PowerState::Running } else { PowerState::Stopped },
                node: placed,
                restart_generation: 0,
                observed: None,
            };
            store.put(Table::Vms, spec.name.as_bytes(), &encode(&rec))?;
            Ok(Response::Vm(Box::new(rec)))
        }
        Command::VmDelete { name } => {
            if let Err(e) = validate_name(name) {
                return Ok(Err(e.into()));
            }
            if store.delete(Table::Vms, name.as_bytes())? {
                Ok(Response::Deleted { existed: true })
            } else {
                Err(CommandError::NotFound(format!("vm {name:?}")))
            }
        }
        Command::VmSetDesired { name, desired } => {
            let Some(mut rec) = vm(store, name)? else {
                return Ok(Err(CommandError::NotFound(format!("vm {name:?}"))));
            };
            rec.desired = *desired;
            store.put(Table::Vms, name.as_bytes(), &encode(&rec))?;
            Ok(Response::Vm(Box::new(rec)))
        }
        Command::VmRestart { name } => {
            let Some(mut rec) = vm(store, name)? else {
                return Ok(Err(CommandError::NotFound(format!("vm {name:?}"))));
            };
            if rec.desired != PowerState::Running {
                return Ok(Err(CommandError::FailedPrecondition(format!(
                    "vm {name:?} is stopped; start it instead of restarting it"
                ))));
            }
            rec.restart_generation += 1;
            store.put(Table::Vms, name.as_bytes(), &encode(&rec))?;
            Ok(Response::Vm(Box::new(rec)))
        }
        Command::VmReport { name, create_index, node, observed } => {
            let Some(mut rec) = vm(store, name)? else {
                return Ok(Err(CommandError::NotFound(format!("vm {name:?}"))));
            };
            if rec.create_index != *create_index || rec.node != *node {
                return Ok(Err(CommandError::FailedPrecondition(format!(
                    "stale report for vm {name:?} from node {node}"
                ))));
            }
            let mut o = observed.clone();
            o.reported_at_ms = env.now_ms;
            rec.observed = Some(o);
            store.put(Table::Vms, name.as_bytes(), &encode(&rec))?;
            Ok(Response::Done)
        }
        Command::NodeRegister { resources } => {
            store.put(Table::Nodes, &resources.id.to_be_bytes(), &encode(resources))?;
            Ok(Response::Done)
        }
        Command::Bootstrap { id, addr } => {
            put_member(store, &Member { id: *id, addr: addr.clone(), voter: true })?;
            Ok(Response::Done)
        }
        Command::AddLearner { id, addr } => {
            put_member(store, &Member { id: *id, addr: addr.clone(), voter: false })?;
            Ok(Response::Done)
        }
        Command::PromoteVoter { id } => {
            let Some(b) = store.get(Table::Members, &id.to_be_bytes())? else {
                return Ok(Err(CommandError::NotFound(format!("node {id}"))));
            };
            let mut m: Member = decode(Table::Members, &id.to_be_bytes(), &b)?;
            m.voter = true;
            put_member(store, &m)?;
            Ok(Response::Done)
        }
        Command::RemoveMember { id } => {
            // A member that left offers no capacity any more.
            store.delete(Table::Nodes, &id.to_be_bytes())?;
            Ok(Response::Deleted { existed: store.delete(Table::Members, &id.to_be_bytes())? })
        }
    })
}

/// Makes restored state the state of a new one-node cluster: node `id` at `addr` is its only
/// member (a voter), and no node's capacity is known until it registers again. Everything else
/// (key/values, VMs, sessions) stays as it was.
pub fn rebase(store: &mut impl Store, id: crate::NodeId, addr: &str) -> Result<(), StoreError> {
    store.clear(Table::Members)?;
    store.clear(Table::Nodes)?;
    put_member(store, &Member { id, addr: addr.to_string(), voter: true })
}

/// Serves a read from the local state.
pub fn query(store: &impl ReadStore, q: &Query) -> Result<QueryResult, StoreError> {
    Ok(match q {
        Query::KvGet { key } => QueryResult::Value(store.get(Table::Kv, key)?),
        Query::KvList { prefix, start_after, limit } => {
            let page = store.scan_page(Table::Kv, prefix, start_after.as_deref(), *limit)?;
            QueryResult::Pairs { pairs: page.pairs, more: page.more }
        }
        Query::VmGet { name } => match store.get(Table::Vms, name.as_bytes())? {
            None => QueryResult::Vm(None),
            Some(b) => QueryResult::Vm(Some(Box::new(decode(Table::Vms, name.as_bytes(), &b)?))),
        },
        Query::VmList { start_after, limit } => {
            let page = store.scan_page(Table::Vms, b"", start_after.as_ref().map(|s| s.as_bytes()), *limit)?;
            let vms = page.pairs.iter().map(|(k, v)| decode(Table::Vms, k, v)).collect::<Result<_, _>>()?;
            QueryResult::Vms { vms, more: page.more }
        }
        Query::Members => QueryResult::Members(members(store)?),
        Query::Nodes => QueryResult::Nodes(nodes(store)?),
    })
}

fn vm(store: &impl ReadStore, name: &str) -> Result<Option<VmRecord>, StoreError> {
    match store.get(Table::Vms, name.as_bytes())? {
        None => Ok(None),
        Some(b) => decode(Table::Vms, name.as_bytes(), &b).map(Some),
    }
}

/// Every VM record, by name.
pub fn vms(store: &impl ReadStore) -> Result<Vec<VmRecord>, StoreError> {
    store.scan(Table::Vms, b"", usize::MAX)?.iter().map(|(k, v)| decode(Table::Vms, k, v)).collect()
}

/// Every registered node's capacity, by id.
pub fn nodes(store: &impl ReadStore) -> Result<Vec<NodeResources>, StoreError> {
    store.scan(Table::Nodes, b"", usize::MAX)?.iter().map(|(k, v)| decode(Table::Nodes, k, v)).collect()
}

/// The whole replicated state as one byte string (the Raft snapshot payload).
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    version: u32,
    tables: Vec<(String, crate::store::KvPairs)>,
}

const SNAPSHOT_VERSION: u32 = 1;

pub fn export(store: &impl ReadStore) -> Result<Vec<u8>, StoreError> {
    let mut tables = Vec::new();
    for t in Table::ALL {
        tables.push((t.name().to_string(), store.scan(t, b"", usize::MAX)?));
    }
    Ok(encode(&SnapshotData { version: SNAPSHOT_VERSION, tables }))
}

/// Replaces the whole state with a snapshot made by [`export`].
pub fn import(store: &mut impl Store, data: &[u8]) -> Result<(), StoreError> {
    let snap: SnapshotData =
        postcard::from_bytes(data).map_err(|e| StoreError(format!("undecodable snapshot: {e}")))?;
    if snap.version != SNAPSHOT_VERSION {
        return Err(StoreError(format!("snapshot version {} is not supported", snap.version)));
    }
    for t in Table::ALL {
        store.clear(t)?;
    }
    for (name, pairs) in snap.tables {
        let t = Table::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| StoreError(format!("snapshot has unknown table {name}")))?;
        for (k, v) in pairs {
            store.put(t, &k, &v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Observed, Phase, PortForward, RestartPolicy, ValidationError, VmSpec};
    use crate::store::{MemStore, PageLimit};

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
        Command::VmCreate { spec: spec(name), node: None, start: false }
    }

    /// A store with one registered node (id 1, 16 vcpus, 8 GiB).
    fn with_node() -> MemStore {
        let mut s = MemStore::default();
        let r = NodeResources { id: 1, vcpus: 16, memory_mib: 8192, accel: "tcg".into(), backend: "qemu".into() };
        run(&mut s, 1, Command::NodeRegister { resources: r }).unwrap();
        s
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
        let rec = VmRecord {
            spec: sp.clone(),
            created_at_ms: 1_000,
            create_index: 5,
            desired: PowerState::Running,
            node: 1,
            restart_generation: 0,
            observed: None,
        };
        assert_eq!(
            run(&mut s, 5, Command::VmCreate { spec: sp, node: None, start: true }),
            Ok(Response::Vm(Box::new(rec.clone())))
        );
        assert_eq!(query(&s, &Query::VmGet { name: "web".into() }), Ok(QueryResult::Vm(Some(Box::new(rec)))));
    }

    #[test]
    fn vm_create_of_an_existing_name_is_rejected_not_overwritten() {
        let mut s = with_node();
        run(&mut s, 1, create("web")).unwrap();
        let before = s.clone();
        let mut other = spec("web");
        other.vcpus = 8;
        assert_eq!(
            run(&mut s, 2, Command::VmCreate { spec: other, node: None, start: true }),
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
        let r = run(&mut s, 1, Command::VmCreate { spec: bad, node: None, start: false });
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
        assert_eq!(
            run(&mut s, 3, Command::VmDelete { name: "b".into() }),
            Err(CommandError::NotFound("vm \"b\"".into()))
        );
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
            Command::NodeRegister {
                resources: NodeResources {
                    id: 1,
                    vcpus: 4,
                    memory_mib: 4096,
                    accel: "tcg".into(),
                    backend: "qemu".into(),
                },
            },
            create("db"),
            Command::VmDelete { name: "db".into() },
            Command::KvDelete { key: b"x".to_vec() },
            Command::KvPut { key: b"y".to_vec(), value: b"2".to_vec() },
        ];
        let (mut a, mut b) = (MemStore::default(), MemStore::default());
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
    }

    #[test]
    fn a_vm_that_fits_no_node_is_refused_with_the_reason() {
        let mut s = with_node();
        let before = s.clone();
        let mut big = spec("big");
        big.memory_mib = 9000;
        let r = run(&mut s, 2, Command::VmCreate { spec: big, node: None, start: true });
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
            |index, node| Command::VmReport { name: "web".into(), create_index: index, node, observed: obs.clone() };
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
}
