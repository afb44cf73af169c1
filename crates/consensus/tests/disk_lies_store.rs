//! A disk that lies, under the whole store: the Ready loop (WAL and redb both on one simulated
//! disk, [`blixard_consensus::simdisk`]) when an `fsync` fails, and snapshot installs crashed at
//! every step. Expected outcomes are written above each test (and in docs/RELIABILITY.md).

#![allow(clippy::field_reassign_with_default)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::driver::Driver;
use blixard_consensus::simdisk::{Crash, SimDisk};
use blixard_consensus::sm::ReadView;
use blixard_consensus::transport::Loopback;
use blixard_consensus::wal::Disk;
use blixard_consensus::{Bootstrap, DiskStorage, Handle, RaftConfig, StorageError};
use blixard_core::{ClientSession, Command, Query, QueryResult};

const SEG: u64 = 16 * 1024;

fn db(disk: &SimDisk) -> Arc<redb::Database> {
    let backend = disk.backend(Path::new("/sim/state.redb")).expect("the state store's file");
    Arc::new(redb::Database::builder().create_with_backend(backend).expect("open redb on the simulated disk"))
}

fn store(disk: &SimDisk) -> Result<DiskStorage, StorageError> {
    DiskStorage::open_on(db(disk), Disk::Sim(disk.clone()), Path::new("/sim/log"), SEG)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn config() -> RaftConfig {
    let mut c = RaftConfig::new(1);
    c.compact_entries = 30; // checkpoints (durable redb commits, log compactions) as it goes
    c.keep_entries = 5;
    c
}

fn start(s: DiskStorage) -> (Handle, tokio::task::JoinHandle<Result<(), StorageError>>) {
    let (driver, handle) = Driver::new(config(), s, Arc::new(Loopback)).unwrap();
    (handle, tokio::spawn(driver.run()))
}

fn value(h: &Handle, key: &str) -> Option<Vec<u8>> {
    let view = ReadView::begin(h.db()).unwrap();
    match blixard_core::state::query(&view, &Query::KvGet { key: key.as_bytes().to_vec() }).unwrap() {
        QueryResult::Value(v) => v,
        other => panic!("{other:?}"),
    }
}

async fn put(h: &Handle, s: &mut ClientSession, k: &str, v: &str) -> Result<(), String> {
    let session = s.begin();
    let cmd = Command::KvPut { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec() };
    let r = h.propose(session, cmd, Duration::from_secs(5)).await;
    s.end(session.seq);
    match r {
        Ok(a) if a.outcome.is_ok() => Ok(()),
        Ok(a) => Err(format!("refused: {:?}", a.outcome)),
        Err(e) => Err(format!("{e:?}")),
    }
}

async fn leader(h: &Handle) {
    tokio::time::timeout(Duration::from_secs(10), h.watch_status().wait_for(|s| s.leader_id == Some(1)))
        .await
        .expect("a leader within 10 s")
        .expect("status");
}

/// **EIO on the log's fsync, through the Ready loop.** Expected: the write whose entry the sync
/// was to make durable is not acknowledged (its client gets an error, never success); the loop
/// stops with an error naming the segment file and the I/O error (not "corrupt"), which makes
/// the daemon exit non-zero (`blixard node` returns it, see `crates/cli/src/cmd/node.rs`); after
/// the machine crashes (unsynced writes lost, page by page) and the node restarts, every
/// acknowledged write is there.
#[test]
fn a_failed_log_fsync_stops_the_loop_unacknowledged_and_loses_no_acknowledged_write() {
    for seed in 0..5u64 {
        let disk = SimDisk::new(seed);
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let acked = rt.block_on(async {
            let mut s = store(&disk).unwrap();
            s.bootstrap(&Bootstrap { id: 1, addr: "127.0.0.1:1".into() }).unwrap();
            let (h, task) = start(s);
            leader(&h).await;
            let mut session = ClientSession::new(7);
            let mut acked = Vec::new();
            for i in 0..40 + seed * 7 {
                put(&h, &mut session, &format!("k{i}"), &format!("v{i}")).await.expect("a healthy disk");
                acked.push(i);
            }
            disk.fail_sync(0, ".wal");
            let r = put(&h, &mut session, "lost", "x").await;
            assert!(r.is_err(), "seed {seed}: a write whose fsync failed was acknowledged");
            let stopped = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the loop stops")
                .expect("the loop's task");
            let e = stopped.expect_err("the loop must stop with an error");
            let msg = chain(&e);
            assert!(msg.contains("cannot sync /sim/log/"), "seed {seed}: names the file: {msg}");
            assert!(msg.contains("Input/output error"), "seed {seed}: names the error: {msg}");
            assert!(!msg.contains("corrupt"), "seed {seed}: {msg}");
            assert!(put(&h, &mut session, "after", "x").await.is_err(), "seed {seed}: nothing more is acknowledged");
            acked
        });
        disk.crash(Crash::Pages);
        rt.block_on(async {
            let (h, task) = start(store(&disk).unwrap());
            leader(&h).await;
            let mut session = ClientSession::new(8);
            put(&h, &mut session, "restarted", "y").await.expect("a write after the restart");
            h.local_read().await.unwrap();
            for i in &acked {
                assert_eq!(value(&h, &format!("k{i}")), Some(format!("v{i}").into_bytes()), "seed {seed}: k{i}");
            }
            h.shutdown().await;
            task.await.unwrap().unwrap();
        });
    }
}

/// A snapshot at `(index, term)` whose state holds one key, `key = index`, and voters `voters`.
fn snapshot(index: u64, term: u64, key: &str, voters: Vec<u64>) -> raft::eraftpb::Snapshot {
    let mut st = blixard_core::MemStore::default();
    let env = blixard_core::Envelope {
        session: None,
        now_ms: 0,
        command: Command::KvPut { key: key.as_bytes().to_vec(), value: index.to_string().into_bytes() },
    };
    blixard_core::state::run(&mut st, index, &env).unwrap().unwrap();
    let mut s = raft::eraftpb::Snapshot::default();
    s.data = blixard_core::state::export(&st).unwrap().into();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().mut_conf_state().voters = voters;
    s
}

fn get(s: &DiskStorage, key: &str) -> Option<Vec<u8>> {
    let view = ReadView::begin(s.db()).unwrap();
    match blixard_core::state::query(&view, &Query::KvGet { key: key.as_bytes().to_vec() }).unwrap() {
        QueryResult::Value(v) => v,
        other => panic!("{other:?}"),
    }
}

/// Which of the two states a reopened store holds: `Some(false)` the old one, `Some(true)` the
/// new one, `None` anything else (a mix).
fn which(s: &DiskStorage) -> Option<bool> {
    use raft::Storage as _;
    let (applied, cs) = (s.applied().unwrap(), s.conf_state().voters.clone());
    let (a, b) = (get(s, "a"), get(s, "b"));
    let log_at = |i: u64, t: u64| s.first_index().unwrap() == i + 1 && s.term(i).ok() == Some(t);
    if applied == (5, 2) && a.as_deref() == Some(b"5") && b.is_none() && cs == [1] && log_at(5, 2) {
        Some(false)
    } else if applied == (20, 3) && b.as_deref() == Some(b"20") && a.is_none() && cs == [1, 2] && log_at(20, 3) {
        Some(true)
    } else {
        None
    }
}

/// **A snapshot install crashed at every step.** The install writes the snapshot's state, conf
/// state and applied index in one durable redb transaction, then restarts the log after it (a
/// new segment, made durable, then the old ones deleted). The machine is stopped after each of
/// its file operations in turn (write, sync, set_len, create, rename, remove, directory sync) and
/// crashes, losing unsynced writes in each mode. Expected: reopening always succeeds and holds
/// either the old state (applied index, keys, voters, log position all old) or the new one,
/// never a mix; once the install has returned success, always the new one.
#[test]
fn a_snapshot_install_crashed_at_any_step_leaves_the_old_state_or_the_new_never_a_mix() {
    let old = snapshot(5, 2, "a", vec![1]);
    let new = snapshot(20, 3, "b", vec![1, 2]);
    for (m, mode) in [Crash::Prefix, Crash::Pages, Crash::LoseAll].into_iter().enumerate() {
        let (mut saw_old, mut saw_new) = (0, 0);
        for step in 0.. {
            let disk = SimDisk::new(step * 3 + m as u64);
            let mut s = store(&disk).unwrap();
            s.install_snapshot(&old).unwrap();
            drop(s);
            let mut s = store(&disk).unwrap();
            assert_eq!(which(&s), Some(false), "the old state, cleanly");
            let before = disk.ops();
            disk.stop_after(step);
            let done = s.install_snapshot(&new).is_ok();
            let finished = disk.ops() - before < step;
            disk.crash(mode);
            drop(s);
            let s = store(&disk)
                .unwrap_or_else(|e| panic!("{mode:?}, crash after step {step}: reopening failed: {}", chain(&e)));
            match which(&s) {
                Some(true) => saw_new += 1,
                Some(false) => {
                    assert!(!done, "{mode:?}, crash after step {step}: the install returned success, then was lost");
                    saw_old += 1;
                }
                None => panic!(
                    "{mode:?}, crash after step {step}: a mix: applied {:?}, a {:?}, b {:?}, voters {:?}, log from {}",
                    s.applied().unwrap(),
                    get(&s, "a"),
                    get(&s, "b"),
                    s.conf_state().voters,
                    s.first_index_cached()
                ),
            }
            if finished {
                assert!(done, "{mode:?}: the install ran to its end without an error");
                break;
            }
            assert!(step < 10_000, "the install never finished");
        }
        eprintln!("{mode:?}: {} crash points, {saw_old} old, {saw_new} new", saw_old + saw_new);
        assert!(saw_old > 0 && saw_new > 0, "{mode:?}: crashes gave both outcomes ({saw_old} old, {saw_new} new)");
    }
}

fn kv_entry(index: u64) -> raft::eraftpb::Entry {
    let mut e = raft::eraftpb::Entry::default();
    e.index = index;
    e.term = 2;
    e
}

fn kv_put(index: u64) -> blixard_core::Envelope {
    blixard_core::Envelope {
        session: None,
        now_ms: 0,
        command: Command::KvPut { key: format!("k{index}").into_bytes(), value: b"v".to_vec() },
    }
}

/// **A checkpoint crashed at every step.** The state machine applies entries 6..=15 (of a log
/// 6..=20, synced) and makes them durable in one redb commit, then the log is compacted up to
/// them — what the Ready loop does at a checkpoint. The machine stops after each file operation
/// in turn and crashes. Expected: reopening always succeeds; the applied index is 5 or 15 and
/// the state holds exactly the keys applied up to it (never part of the batch); the log still
/// holds every entry after the applied index (so replay can redo the rest); once the commit
/// returned, 15.
#[test]
fn a_checkpoint_crashed_at_any_step_is_all_or_nothing_and_the_log_covers_the_rest() {
    use raft::Storage as _;
    let base = snapshot(5, 2, "a", vec![1]);
    for (m, mode) in [Crash::Prefix, Crash::Pages, Crash::LoseAll].into_iter().enumerate() {
        let (mut saw_old, mut saw_new) = (0, 0);
        for step in 0.. {
            let disk = SimDisk::new(step * 3 + m as u64);
            let mut s = store(&disk).unwrap();
            s.install_snapshot(&base).unwrap();
            s.persist_log(&(6..=20).map(kv_entry).collect::<Vec<_>>(), None, true).unwrap();
            drop(s);
            let mut s = store(&disk).unwrap();
            let before = disk.ops();
            disk.stop_after(step);
            let committed = (|| -> Result<(), Box<dyn std::error::Error>> {
                let mut txn = s.db().begin_write()?;
                {
                    let mut st = blixard_consensus::sm::TxnStore::new(&txn);
                    for i in 6..=15 {
                        blixard_core::state::run(&mut st, i, &kv_put(i))?.map_err(|e| format!("{e}"))?;
                    }
                }
                DiskStorage::stage_applied(&txn, 15, 2)?;
                txn.set_durability(redb::Durability::Immediate)?;
                txn.commit()?;
                Ok(())
            })()
            .is_ok();
            let compacted = committed && s.compact_log(16).is_ok();
            let finished = disk.ops() - before < step;
            disk.crash(mode);
            drop(s);
            let s = store(&disk)
                .unwrap_or_else(|e| panic!("{mode:?}, crash after step {step}: reopening failed: {}", chain(&e)));
            let (applied, _) = s.applied().unwrap();
            let keys: Vec<u64> = (6..=15).filter(|i| get(&s, &format!("k{i}")).is_some()).collect();
            match applied {
                5 => {
                    assert!(!committed, "{mode:?}, step {step}: the commit returned, then was lost");
                    assert!(keys.is_empty(), "{mode:?}, step {step}: applied 5 but holds {keys:?}");
                    saw_old += 1;
                }
                15 => {
                    assert_eq!(keys, (6..=15).collect::<Vec<_>>(), "{mode:?}, step {step}");
                    saw_new += 1;
                }
                a => panic!("{mode:?}, crash after step {step}: applied {a}"),
            }
            assert!(s.first_index().unwrap() <= applied + 1, "{mode:?}, step {step}: the log lost entries");
            assert_eq!(s.last_index().unwrap(), 20, "{mode:?}, step {step}: the log lost synced entries");
            if finished {
                assert!(compacted, "{mode:?}: the checkpoint ran to its end without an error");
                break;
            }
            assert!(step < 10_000, "the checkpoint never finished");
        }
        eprintln!("{mode:?}: {} crash points, {saw_old} old, {saw_new} new", saw_old + saw_new);
        assert!(saw_old > 0 && saw_new > 0, "{mode:?}: crashes gave both outcomes ({saw_old} old, {saw_new} new)");
    }
}
