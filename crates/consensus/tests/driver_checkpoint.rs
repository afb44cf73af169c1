//! The Ready loop of a one-node cluster through many checkpoints: writes keep being applied and
//! answered while a checkpoint is made durable in the background, every acknowledged write is
//! in the state afterwards, and a restart from the data dir — also after the loop was dropped
//! without its clean shutdown, as a crash leaves it — replays to the same state.

use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::driver::Driver;
use blixard_consensus::sm::ReadView;
use blixard_consensus::transport::Loopback;
use blixard_consensus::{Bootstrap, DiskStorage, Handle, RaftConfig};
use blixard_core::{ClientSession, Command, Query, QueryResult};

/// Opens the store; after a simulated crash the aborted loop's checkpoint thread may still
/// hold the database for a moment (in a real crash the process is gone), so this waits for it.
fn open(dir: &std::path::Path) -> DiskStorage {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let db = loop {
        match redb::Database::create(dir.join("db.redb")) {
            Ok(db) => break Arc::new(db),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10)); // a poll interval
            }
            Err(e) => panic!("open the database: {e}"),
        }
    };
    DiskStorage::open(db, &dir.join("log")).unwrap()
}

fn config() -> RaftConfig {
    let mut c = RaftConfig::new(1);
    // A checkpoint every few dozen entries.
    c.compact_entries = 40;
    c.keep_entries = 5;
    c
}

fn start(dir: &std::path::Path, fresh: bool) -> (Handle, tokio::task::JoinHandle<()>) {
    let mut s = open(dir);
    if fresh {
        s.bootstrap(&Bootstrap { id: 1, addr: "127.0.0.1:1".into() }).unwrap();
    }
    let (driver, handle) = Driver::new(config(), s, Arc::new(Loopback)).unwrap();
    let task = tokio::spawn(async move {
        driver.run().await.unwrap();
    });
    (handle, task)
}

fn value(h: &Handle, key: &str) -> Option<Vec<u8>> {
    let view = ReadView::begin(h.db()).unwrap();
    match blixard_core::state::query(&view, &Query::KvGet { key: key.as_bytes().to_vec() }).unwrap() {
        QueryResult::Value(v) => v,
        other => panic!("{other:?}"),
    }
}

async fn write_all(h: &Handle, from: u64, n: u64) {
    let mut tasks = Vec::new();
    for c in 0..8u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = ClientSession::new(u128::from(c) + 1 + u128::from(from) * 100);
            for i in (from + c..from + n).step_by(8) {
                let session = s.begin();
                let cmd = Command::KvPut { key: format!("k{i}").into_bytes(), value: format!("v{i}").into_bytes() };
                let a = h.propose(session, cmd, Duration::from_secs(10)).await.expect("applied");
                assert!(a.outcome.is_ok());
                s.end(session.seq);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn writes_go_on_through_background_checkpoints_and_survive_a_restart() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (h, task) = start(dir.path(), true);
        tokio::time::timeout(Duration::from_secs(10), h.watch_status().wait_for(|s| s.leader_id == Some(1)))
            .await
            .unwrap()
            .unwrap();
        write_all(&h, 0, 1000).await;
        h.local_read().await.unwrap();
        for i in 0..1000 {
            assert_eq!(value(&h, &format!("k{i}")), Some(format!("v{i}").into_bytes()), "k{i}");
        }
        // Many checkpoints happened: the log was compacted far past its start.
        assert!(h.status().applied > 1000);
        // A crash: the loop is dropped mid-flight, with no clean shutdown.
        write_all(&h, 1000, 200).await;
        task.abort();
        let _ = task.await;
        drop(h);
    });
    rt.block_on(async {
        let (h, task) = start(dir.path(), false);
        tokio::time::timeout(Duration::from_secs(10), h.watch_status().wait_for(|s| s.leader_id == Some(1)))
            .await
            .unwrap()
            .unwrap();
        h.local_read().await.unwrap();
        for i in 0..1200 {
            assert_eq!(value(&h, &format!("k{i}")), Some(format!("v{i}").into_bytes()), "k{i} after restart");
        }
        h.shutdown().await;
        task.await.unwrap();
    });
}
