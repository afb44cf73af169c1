//! One suite, every `LogStore`: what raft-rs needs of a log store, checked against our disk
//! store (write-ahead log + redb) and raft-rs's own `MemStorage` (the reference). A behaviour
//! both must share lives in `suite!`; what only the disk store promises (durability across
//! reopen, keeping the term of the entry before the first) has its own tests below.

#![allow(clippy::field_reassign_with_default)]

use std::sync::Arc;

use blixard_consensus::{DiskStorage, LogStore};
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, Storage};

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = format!("e{index}").into_bytes().into();
    e
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn idx(v: &[Entry]) -> Vec<(u64, u64)> {
    v.iter().map(|e| (e.index, e.term)).collect()
}

fn compacted<T>(r: raft::Result<T>) -> bool {
    matches!(r, Err(raft::Error::Store(raft::StorageError::Compacted)))
}

/// A snapshot of an empty state (the disk store installs the state it carries).
fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
    let mut s = Snapshot::default();
    s.data = blixard_core::state::export(&blixard_core::MemStore::default()).unwrap().into();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = voters;
    s
}

/// The stores under test, each with a factory returning a fresh empty store (and a guard that
/// keeps its directory alive).
trait Fixture {
    type S: LogStore;
    fn fresh() -> (Self::S, Box<dyn std::any::Any>);
}

fn open(dir: &std::path::Path) -> DiskStorage {
    let db = ::redb::Database::create(dir.join("db.redb")).unwrap();
    DiskStorage::open(Arc::new(db), &dir.join("log")).unwrap()
}

struct Disk;
impl Fixture for Disk {
    type S = DiskStorage;
    fn fresh() -> (DiskStorage, Box<dyn std::any::Any>) {
        let dir = tempfile::tempdir().unwrap();
        (open(dir.path()), Box::new(dir))
    }
}

struct Mem;
impl Fixture for Mem {
    type S = MemStorage;
    fn fresh() -> (MemStorage, Box<dyn std::any::Any>) {
        (MemStorage::new(), Box::new(()))
    }
}

fn empty_store_starts_at_index_one<F: Fixture>() {
    let (s, _g) = F::fresh();
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0).unwrap(), 0);
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state, HardState::default());
    assert!(!st.initialized());
}

fn appended_entries_are_read_back<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 2)]).unwrap();
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(idx(&s.entries(1, 4, None, ctx()).unwrap()), [(1, 1), (2, 1), (3, 2)]);
    assert_eq!(idx(&s.entries(2, 3, None, ctx()).unwrap()), [(2, 1)]);
    assert_eq!(s.entries(3, 4, None, ctx()).unwrap()[0].data.as_ref(), b"e3");
    assert_eq!(s.term(3).unwrap(), 2);
    assert!(matches!(s.term(4), Err(raft::Error::Store(raft::StorageError::Unavailable))));
}

fn max_size_limits_but_returns_at_least_one<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
    let one = u64::from(protobuf::Message::compute_size(&entry(1, 1)));
    assert_eq!(s.entries(1, 4, 0, ctx()).unwrap().len(), 1);
    assert_eq!(s.entries(1, 4, one * 2, ctx()).unwrap().len(), 2);
    assert_eq!(s.entries(1, 4, one * 3, ctx()).unwrap().len(), 3);
}

fn append_truncates_a_conflicting_suffix<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 1)]).unwrap();
    s.append(&[entry(3, 2)]).unwrap();
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(idx(&s.entries(1, 4, None, ctx()).unwrap()), [(1, 1), (2, 1), (3, 2)]);
    s.append(&[entry(4, 2), entry(5, 3)]).unwrap();
    assert_eq!(idx(&s.entries(3, 6, None, ctx()).unwrap()), [(3, 2), (4, 2), (5, 3)]);
}

fn hard_and_conf_state_are_kept<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    let mut hs = HardState::default();
    hs.term = 5;
    hs.vote = 2;
    hs.commit = 0;
    s.set_hard_state(&hs).unwrap();
    let mut cs = ConfState::default();
    cs.voters = vec![1, 2, 3];
    cs.learners = vec![4];
    s.set_conf_state(&cs).unwrap();
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state, hs);
    assert_eq!(st.conf_state, cs);
    assert!(st.initialized());
}

fn compaction_moves_the_first_index<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    s.append(&(1..=10).map(|i| entry(i, 1 + i / 5)).collect::<Vec<_>>()).unwrap();
    s.compact(6).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.last_index().unwrap(), 10);
    assert!(compacted(s.entries(5, 7, None, ctx())));
    assert!(compacted(s.term(4)));
    assert_eq!(idx(&s.entries(6, 11, None, ctx()).unwrap()), (6..=10).map(|i| (i, 1 + i / 5)).collect::<Vec<_>>());
    // Compacting to an older point is a no-op.
    s.compact(3).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
}

fn a_snapshot_replaces_the_log<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
    s.apply_snapshot(&snapshot(10, 4, vec![1, 2])).unwrap();
    assert_eq!(s.first_index().unwrap(), 11);
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.term(10).unwrap(), 4);
    assert!(compacted(s.entries(3, 4, None, ctx())));
    let st = s.initial_state().unwrap();
    assert_eq!(st.conf_state.voters, [1, 2]);
    assert_eq!(st.hard_state.commit, 10);
    assert!(st.hard_state.term >= 4);
    // The log continues after the snapshot.
    s.append(&[entry(11, 4), entry(12, 5)]).unwrap();
    assert_eq!(idx(&s.entries(11, 13, None, ctx()).unwrap()), [(11, 4), (12, 5)]);
}

fn a_stale_snapshot_is_refused<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    s.apply_snapshot(&snapshot(10, 4, vec![1])).unwrap();
    assert!(matches!(
        s.apply_snapshot(&snapshot(5, 3, vec![1])),
        Err(raft::Error::Store(raft::StorageError::SnapshotOutOfDate))
    ));
    assert_eq!(s.first_index().unwrap(), 11);
}

/// What the Ready loop does with one Ready: new entries (replacing a conflicting suffix) and
/// the hard state, in one write.
fn a_ready_persists_entries_and_hard_state_together<F: Fixture>() {
    let (mut s, _g) = F::fresh();
    let mut hs = HardState::default();
    hs.term = 2;
    hs.vote = 1;
    s.persist(&[entry(1, 1), entry(2, 1), entry(3, 1)], Some(&hs), true).unwrap();
    hs.commit = 2;
    s.persist(&[entry(3, 2), entry(4, 2)], Some(&hs), true).unwrap();
    // A commit index alone need not be durable: raft-rs may ask for no sync.
    hs.commit = 3;
    s.persist(&[], Some(&hs), false).unwrap();
    assert_eq!(idx(&s.entries(1, 5, None, ctx()).unwrap()), [(1, 1), (2, 1), (3, 2), (4, 2)]);
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
}

macro_rules! suite {
    ($m:ident, $f:ty) => {
        mod $m {
            #[test]
            fn empty_store_starts_at_index_one() {
                super::empty_store_starts_at_index_one::<$f>()
            }
            #[test]
            fn appended_entries_are_read_back() {
                super::appended_entries_are_read_back::<$f>()
            }
            #[test]
            fn max_size_limits_but_returns_at_least_one() {
                super::max_size_limits_but_returns_at_least_one::<$f>()
            }
            #[test]
            fn append_truncates_a_conflicting_suffix() {
                super::append_truncates_a_conflicting_suffix::<$f>()
            }
            #[test]
            fn hard_and_conf_state_are_kept() {
                super::hard_and_conf_state_are_kept::<$f>()
            }
            #[test]
            fn compaction_moves_the_first_index() {
                super::compaction_moves_the_first_index::<$f>()
            }
            #[test]
            fn a_ready_persists_entries_and_hard_state_together() {
                super::a_ready_persists_entries_and_hard_state_together::<$f>()
            }
            #[test]
            fn a_snapshot_replaces_the_log() {
                super::a_snapshot_replaces_the_log::<$f>()
            }
            #[test]
            fn a_stale_snapshot_is_refused() {
                super::a_stale_snapshot_is_refused::<$f>()
            }
        }
    };
}

suite!(disk, super::Disk);
suite!(mem, super::Mem);

#[test]
fn disk_keeps_everything_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        s.append(&(1..=5).map(|i| entry(i, 2)).collect::<Vec<_>>()).unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 1;
        hs.commit = 4;
        s.set_hard_state(&hs).unwrap();
        let mut cs = ConfState::default();
        cs.voters = vec![1];
        s.set_conf_state(&cs).unwrap();
        s.compact(3).unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.first_index().unwrap(), 3);
    assert_eq!(s.last_index().unwrap(), 5);
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 4);
    assert_eq!(s.initial_state().unwrap().conf_state.voters, [1]);
    assert_eq!(idx(&s.entries(3, 6, None, ctx()).unwrap()), [(3, 2), (4, 2), (5, 2)]);
}

#[test]
fn disk_keeps_the_term_of_the_entry_before_the_first() {
    // The raft::Storage contract: term(first_index - 1) stays answerable after compaction, so a
    // leader can still match a follower right at the compaction point without a snapshot.
    let (mut s, _g) = Disk::fresh();
    s.append(&[entry(1, 1), entry(2, 2), entry(3, 3)]).unwrap();
    s.compact(3).unwrap();
    assert_eq!(s.term(2).unwrap(), 2);
    assert!(compacted(s.term(1)));
}

#[test]
fn disk_refuses_an_append_that_leaves_a_gap() {
    let (mut s, _g) = Disk::fresh();
    s.append(&[entry(1, 1)]).unwrap();
    assert!(s.append(&[entry(3, 1)]).is_err());
    assert_eq!(s.last_index().unwrap(), 1);
}

#[test]
fn disk_data_dir_claimed_by_another_node_is_refused() {
    let (mut s, _g) = Disk::fresh();
    s.claim(1).unwrap();
    s.claim(1).unwrap();
    let e = s.claim(2).unwrap_err();
    assert_eq!(e.to_string(), "data dir belongs to node 1, not node 2");
}

#[test]
fn disk_restarts_the_log_at_a_snapshot_that_reached_only_the_state_machine() {
    // A crash between installing a snapshot's state (redb, durable) and resetting the log.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        let db = s.db().clone();
        let txn = db.begin_write().unwrap();
        DiskStorage::stage_applied(&txn, 20, 4).unwrap();
        txn.commit().unwrap();
    }
    let s = open(dir.path());
    assert_eq!(s.first_index().unwrap(), 21);
    assert_eq!(s.last_index().unwrap(), 20);
    assert_eq!(s.term(20).unwrap(), 4);
    assert_eq!(s.initial_state().unwrap().hard_state.commit, 20);
}

#[test]
fn disk_refuses_a_state_machine_behind_the_start_of_the_log() {
    // Entries the state machine never applied were compacted away: refuse to start rather than
    // silently lose them.
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = open(dir.path());
        s.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>()).unwrap();
        let db = s.db().clone();
        let txn = db.begin_write().unwrap();
        DiskStorage::stage_applied(&txn, 3, 1).unwrap();
        txn.commit().unwrap();
        s.compact(8).unwrap();
    }
    let db = ::redb::Database::create(dir.path().join("db.redb")).unwrap();
    let e = DiskStorage::open(Arc::new(db), &dir.path().join("log")).err().expect("must fail");
    assert!(e.to_string().contains("state machine is at entry 3 but the log starts after entry 7"), "{e}");
}

#[test]
fn disk_installs_the_state_a_snapshot_carries_and_keeps_it_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = blixard_core::MemStore::default();
    let put = blixard_core::Command::KvPut { key: b"k".to_vec(), value: b"v".to_vec() };
    let env = blixard_core::Envelope { session: None, now_ms: 1, command: put };
    blixard_core::state::apply(&mut state, 1, &env).unwrap();
    let mut snap = snapshot(9, 3, vec![1]);
    snap.data = blixard_core::state::export(&state).unwrap().into();
    {
        let mut s = open(dir.path());
        s.append(&[entry(1, 1)]).unwrap();
        s.apply_snapshot(&snap).unwrap();
    }
    let s = open(dir.path());
    assert_eq!((s.first_index().unwrap(), s.applied().unwrap()), (10, (9, 3)));
    let view = blixard_consensus::sm::ReadView::begin(s.db()).unwrap();
    let got = blixard_core::state::query(&view, &blixard_core::Query::KvGet { key: b"k".to_vec() }).unwrap();
    assert_eq!(got, blixard_core::QueryResult::Value(Some(b"v".to_vec())));
}
