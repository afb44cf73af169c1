//! Damage is not a torn write: a bad record that acknowledged data follows must stop the log
//! from opening (naming the file and offset), never be dropped with everything after it; a torn
//! tail — what a crash can leave after the last completed sync — is still dropped.

#![allow(clippy::field_reassign_with_default)]

use std::path::{Path, PathBuf};

use blixard_consensus::wal::Wal;
use raft::eraftpb::Entry;

fn entry(index: u64, data_len: usize) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = 1;
    e.data = vec![index as u8; data_len].into();
    e
}

/// Writes entries 1..=n, each synced on its own (each one acknowledged), and returns the
/// segment file that holds them.
fn write_synced(dir: &Path, n: u64) -> PathBuf {
    let (mut w, _) = Wal::open(dir).unwrap();
    for i in 1..=n {
        w.append(&[entry(i, 100)], if i == 1 { 0 } else { 1 });
        w.sync().unwrap();
    }
    drop(w); // a crash right after the last sync: nothing more is written
    newest_segment(dir)
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

fn flip(file: &Path, at: usize) {
    let mut data = std::fs::read(file).unwrap();
    data[at] ^= 0x5a;
    std::fs::write(file, data).unwrap();
}

/// Offset of the first byte of entry `index`'s payload (its data bytes equal `index`).
fn offset_of(file: &Path, index: u64) -> usize {
    let data = std::fs::read(file).unwrap();
    let run = vec![index as u8; 100];
    data.windows(100).position(|w| w == run.as_slice()).unwrap()
}

#[test]
fn a_flipped_byte_in_the_middle_of_the_newest_segment_refuses_to_open_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let seg = write_synced(dir.path(), 40);
    flip(&seg, offset_of(&seg, 11) + 50);
    let e = Wal::open(dir.path()).err().expect("29 acknowledged entries follow the damage: must not open");
    let msg = e.to_string();
    assert!(msg.contains(&seg.display().to_string()), "names the file: {msg}");
    assert!(msg.contains("damaged at byte"), "names the offset: {msg}");
    assert!(msg.contains("--join"), "says how to recover: {msg}");
}

#[test]
fn damage_in_the_last_record_is_caught_once_the_log_went_idle() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        for i in 1..=5 {
            w.append(&[entry(i, 100)], if i == 1 { 0 } else { 1 });
            w.sync().unwrap();
        }
        // Idle: the last sync is claimed.
        w.seal().unwrap();
    }
    let seg = newest_segment(dir.path());
    flip(&seg, offset_of(&seg, 5) + 10);
    assert!(Wal::open(dir.path()).is_err(), "the damaged record was acknowledged and claimed");
}

#[test]
fn a_torn_unsynced_tail_is_dropped_even_with_valid_records_after_a_hole() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 100)], 0);
        w.sync().unwrap();
        // Three more entries written in one batch but never synced: after a power loss their
        // pages may reach the disk in any order.
        w.append(&[entry(2, 5000), entry(3, 5000), entry(4, 100)], 1);
        w.flush(false).unwrap();
    }
    let seg = newest_segment(dir.path());
    // Entry 3's page was lost (reads back as the zeros that were there); entry 4's arrived.
    let mut data = std::fs::read(&seg).unwrap();
    let at = offset_of(&seg, 3);
    data[at..at + 4096].fill(0);
    std::fs::write(&seg, data).unwrap();
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(r.entries.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2]);
}

#[test]
fn a_process_crash_mid_write_loses_only_the_unsynced_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        for i in 1..=3 {
            w.append(&[entry(i, 100)], if i == 1 { 0 } else { 1 });
            w.sync().unwrap();
        }
        // Half of a record: a length that promises more than follows.
        w.write_garbage_for_test(&[200, 0, 0, 0, 1, 2, 3, 4, 2, 9, 9]).unwrap();
    }
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(r.entries.len(), 3);
}
