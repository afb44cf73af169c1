//! Committed entries that do not decode — a normal entry of junk, configuration changes whose
//! change or whose command is junk — are reported and skipped the same way on every start:
//! the node applies past them, keeps serving, and restarts (again and again) over them.

// rust-protobuf messages are built by mutating a default (they carry hidden fields).
#![allow(clippy::field_reassign_with_default)]

use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::driver::Driver;
use blixard_consensus::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2, Entry, EntryType, HardState};
use blixard_consensus::sm::ReadView;
use blixard_consensus::transport::Loopback;
use blixard_consensus::{Bootstrap, DiskStorage, Handle, LogStore, RaftConfig};
use blixard_core::{ClientSession, Command, Envelope, Query, QueryResult};
use protobuf::Message as _;

fn open(dir: &std::path::Path) -> DiskStorage {
    let db = Arc::new(redb::Database::create(dir.join("db.redb")).unwrap());
    DiskStorage::open(db, &dir.join("log")).unwrap()
}

fn start(s: DiskStorage) -> (Handle, tokio::task::JoinHandle<()>) {
    let (driver, handle) = Driver::new(RaftConfig::new(1), s, Arc::new(Loopback)).unwrap();
    let task = tokio::spawn(async move {
        driver.run().await.expect("the driver keeps running");
    });
    (handle, task)
}

async fn leader(h: &Handle) {
    tokio::time::timeout(Duration::from_secs(10), h.watch_status().wait_for(|s| s.leader_id == Some(1)))
        .await
        .expect("a leader within 10 s")
        .unwrap();
}

fn value(h: &Handle, key: &str) -> Option<Vec<u8>> {
    let view = ReadView::begin(h.db()).unwrap();
    match blixard_core::state::query(&view, &Query::KvGet { key: key.as_bytes().to_vec() }).unwrap() {
        QueryResult::Value(v) => v,
        other => panic!("{other:?}"),
    }
}

async fn put(h: &Handle, s: &mut ClientSession, key: &str) {
    let session = s.begin();
    let cmd = Command::KvPut { key: key.as_bytes().to_vec(), value: b"v".to_vec() };
    let a = h.propose(session, cmd, Duration::from_secs(10)).await.expect("applied");
    assert!(a.outcome.is_ok(), "{:?}", a.outcome);
    s.end(session.seq);
}

fn entry(index: u64, term: u64, t: EntryType, data: Vec<u8>, context: Vec<u8>) -> Entry {
    let mut e = Entry::default();
    e.set_entry_type(t);
    e.index = index;
    e.term = term;
    e.data = data.into();
    e.context = context.into();
    e
}

fn remove(id: u64) -> Vec<u8> {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ConfChangeType::RemoveNode);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc.write_to_bytes().unwrap()
}

#[test]
fn committed_entries_that_do_not_decode_are_skipped_and_the_node_restarts_over_them() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut session = ClientSession::new(7);
    rt.block_on(async {
        let mut s = open(dir.path());
        s.bootstrap(&Bootstrap { id: 1, addr: "127.0.0.1:1".into() }).unwrap();
        let (h, task) = start(s);
        leader(&h).await;
        put(&h, &mut session, "before").await;
        h.shutdown().await;
        task.await.unwrap();
    });
    // Junk committed at the end of the log, as a faulty or hostile leader could have made it.
    let junk_from;
    {
        let mut s = open(dir.path());
        let hs = s.hard_state().clone();
        let last = raft::Storage::last_index(&s).unwrap();
        let t = hs.term;
        let noop = Envelope { session: None, now_ms: 0, command: Command::Noop }.encode();
        let es = vec![
            entry(last + 1, t, EntryType::EntryNormal, vec![0xff, 0x00, 0xfe], vec![]),
            entry(last + 2, t, EntryType::EntryConfChangeV2, vec![0xff; 9], vec![0xff; 3]),
            entry(last + 3, t, EntryType::EntryConfChangeV2, remove(1), vec![0xde, 0xad]),
            entry(last + 4, t, EntryType::EntryConfChangeV2, vec![0x0a, 0xff, 0xff], noop.clone()),
            entry(last + 5, t, EntryType::EntryConfChange, vec![0xff; 4], noop),
        ];
        s.append(&es).unwrap();
        let mut hs2 = HardState::default();
        hs2.term = hs.term;
        hs2.vote = hs.vote;
        hs2.commit = last + 5;
        s.set_hard_state(&hs2).unwrap();
        junk_from = last + 1;
    }
    for round in 0..2 {
        rt.block_on(async {
            let (h, task) = start(open(dir.path()));
            leader(&h).await;
            put(&h, &mut session, &format!("after{round}")).await;
            h.local_read().await.unwrap();
            let st = h.status();
            assert!(st.applied > junk_from + 4, "round {round}: applied {} (junk from {junk_from})", st.applied);
            assert_eq!(st.voters, vec![1], "round {round}: a junk configuration change took effect");
            // Applied (and counted) in the first start; the second starts past them.
            assert_eq!(h.undecodable_entries(), if round == 0 { 5 } else { 0 }, "round {round}");
            assert_eq!(value(&h, "before").as_deref(), Some(&b"v"[..]));
            assert_eq!(value(&h, &format!("after{round}")).as_deref(), Some(&b"v"[..]));
            h.shutdown().await;
            task.await.unwrap();
        });
    }
}
