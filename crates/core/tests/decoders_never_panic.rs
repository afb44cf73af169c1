//! Every decoder of the replicated state takes arbitrary bytes without panicking: a command
//! envelope, a snapshot (`check_snapshot`, then `import`), a backup file, and the records a
//! store holds (VMs, nodes, members, sessions) when they are damaged: each read and each
//! command applied over a damaged record answers an error or a result, never a panic.

use blixard_core::state::{self, apply, check_snapshot, export, import, query};
use blixard_core::{backup, Command, Envelope, MemStore, PageLimit, Query, Session, Store, Table};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Queries and commands that read every kind of record.
fn readers() -> Vec<Query> {
    vec![
        Query::KvGet { key: b"a".to_vec() },
        Query::KvList { prefix: Vec::new(), start_after: None, limit: PageLimit { count: 100, bytes: 1 << 20 } },
        Query::VmGet { name: "web".into() },
        Query::VmList { start_after: None, limit: PageLimit { count: 100, bytes: 1 << 20 } },
        Query::Members,
        Query::Nodes,
        Query::Node { id: 1 },
    ]
}

fn commands() -> Vec<Command> {
    vec![
        Command::KvPut { key: b"a".to_vec(), value: b"1".to_vec() },
        Command::VmDelete { name: "web".into() },
        Command::VmRestart { name: "web".into() },
        Command::NodeSetState { id: 1, state: blixard_core::NodeState::Down },
        Command::NodeEligibility { id: 1, eligible: false },
        Command::RemoveMember { id: 1 },
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn envelopes_snapshots_and_backups(data in bytes(512)) {
        let _ = Envelope::decode(&data);
        let _ = backup::decode(&data);
        if check_snapshot(&data).is_ok() {
            let mut s = MemStore::default();
            import(&mut s, &data).expect("a checked snapshot imports");
        }
    }

    /// A damaged record under a key every reader looks at, in every table.
    #[test]
    fn damaged_records_are_errors(table in 0..Table::ALL.len(), key in prop::sample::select(vec![
        b"web".to_vec(), b"a".to_vec(), 1u64.to_be_bytes().to_vec(), 1u64.to_le_bytes().to_vec(), Vec::new(),
        vec![0u8; 16], vec![0u8; 24],
    ]), value in bytes(256)) {
        let mut s = MemStore::default();
        s.put(Table::ALL[table], &key, &value).expect("mem store");
        for q in readers() {
            let _ = query(&s, &q);
        }
        let _ = export(&s);
        let _ = state::members(&s);
        for (i, c) in commands().into_iter().enumerate() {
            let env = Envelope {
                session: Some(Session { client: 0, seq: i as u64 + 1, first_unanswered: 1 }),
                now_ms: 1_000,
                command: c,
            };
            let _ = apply(&mut s.clone(), 10 + i as u64, &env);
        }
    }
}

/// Found by `damaged_records_are_errors`: a session-time key shorter than 8 bytes (which an
/// imported snapshot can carry) made every later `apply` panic slicing it, stopping the node.
#[test]
fn a_short_session_time_key_is_an_error_not_a_panic() {
    let mut s = MemStore::default();
    s.put(Table::SessionTimes, b"web", b"").expect("mem store");
    let env = Envelope {
        session: Some(Session { client: 0, seq: 1, first_unanswered: 1 }),
        now_ms: 1_000,
        command: Command::KvPut { key: b"a".to_vec(), value: b"1".to_vec() },
    };
    let err = apply(&mut s, 1, &env).expect_err("a damaged key is a storage error");
    assert!(err.0.contains("bad session time key of 3 bytes"), "{err:?}");
}

/// A session-time bucket near `u64::MAX` (damaged) must not overflow the expiry sum.
#[test]
fn a_huge_session_bucket_does_not_overflow() {
    let mut s = MemStore::default();
    let mut key = u64::MAX.to_be_bytes().to_vec();
    key.extend_from_slice(&0u128.to_be_bytes());
    s.put(Table::SessionTimes, &key, b"").expect("mem store");
    let env = Envelope { session: None, now_ms: 1_000, command: Command::Noop };
    apply(&mut s, 1, &env).expect("nothing expires");
}
