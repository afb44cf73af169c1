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
