//! Unit tests of the log: replay, torn tails, damage, compaction, rollover, spares.

use super::*;

fn entry(index: u64, term: u64) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = format!("e{index}").into_bytes().into();
    e
}

fn idx(r: &Recovered) -> Vec<(u64, u64)> {
    r.entries.iter().map(|e| (e.index, e.term)).collect()
}

#[test]
fn replays_entries_hard_state_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, r) = Wal::open(dir.path()).unwrap();
        assert!(r.entries.is_empty());
        w.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], 0);
        w.append(&[entry(3, 2), entry(4, 2)], 1);
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 3;
        hs.commit = 2;
        w.set_hard_state(&hs);
        w.sync().unwrap();
    }
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(idx(&r), [(1, 1), (2, 1), (3, 2), (4, 2)]);
    assert_eq!((r.hard_state.term, r.hard_state.vote, r.hard_state.commit), (2, 3, 2));
    assert_eq!(r.truncated, (0, 0));
}

#[test]
fn unsynced_but_written_records_survive_a_process_crash_and_unwritten_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1)], 0);
        w.flush(false).unwrap();
        w.append(&[entry(2, 1)], 0);
        // Dropped without a flush: entry 2 was never written.
    }
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(idx(&r), [(1, 1)]);
}

#[test]
fn a_torn_tail_is_dropped_and_the_log_continues() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1)], 0);
        w.sync().unwrap();
        // Half a record: a length that promises more than follows.
        w.write_garbage_for_test(&[200, 0, 0, 0, 1, 2, 3, 4, K_ENTRY, 9, 9]).unwrap();
    }
    {
        let (mut w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(idx(&r), [(1, 1), (2, 1)]);
        w.append(&[entry(3, 1)], 0);
        w.sync().unwrap();
    }
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(idx(&r), [(1, 1), (2, 1), (3, 1)]);
}

#[test]
fn a_bad_checksum_in_an_older_segment_is_corruption() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1)], 0);
        w.sync().unwrap();
    }
    // Reopening starts a new segment; flip a byte of an entry in the first.
    let (w, _) = Wal::open(dir.path()).unwrap();
    drop(w);
    let first = seg_path(dir.path(), 0);
    let mut data = std::fs::read(&first).unwrap();
    let n = data.len();
    data[n - 3] ^= 0xff;
    std::fs::write(&first, data).unwrap();
    let e = Wal::open(dir.path()).err().expect("must fail");
    assert!(e.to_string().contains("is damaged at byte"), "{e}");
}

#[test]
fn compaction_deletes_whole_segments_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap(); // segment 0: entries 1..=3
        w.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], 0);
        w.sync().unwrap();
    }
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap(); // segment 1: 4..=5
        w.append(&[entry(4, 2), entry(5, 2)], 0);
        w.sync().unwrap();
    }
    let (mut w, r) = Wal::open(dir.path()).unwrap(); // segment 2 (active)
    assert_eq!(idx(&r), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]);
    assert_eq!(w.segment_count(), 3);
    w.compact(3, 1).unwrap(); // segment 0 holds nothing after 3
    assert_eq!(w.segment_count(), 2);
    w.compact(4, 2).unwrap(); // segment 1 still holds 5
    assert_eq!(w.segment_count(), 2);
    w.sync().unwrap();
    drop(w);
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(idx(&r), [(5, 2)]);
    assert_eq!(r.truncated, (4, 2));
}

#[test]
fn reset_replaces_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        w.append(&[entry(1, 1), entry(2, 1)], 0);
        w.sync().unwrap();
        let mut hs = HardState::default();
        hs.term = 7;
        hs.commit = 20;
        w.reset(20, 6, &hs).unwrap();
        assert_eq!(w.segment_count(), 1);
        w.append(&[entry(21, 7)], 0);
        w.sync().unwrap();
    }
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(r.truncated, (20, 6));
    assert_eq!(idx(&r), [(21, 7)]);
    assert_eq!(r.hard_state.commit, 20);
}

#[test]
fn large_logs_roll_over_into_new_segments() {
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u64| {
        let mut e = entry(i, 1);
        e.data = vec![7u8; 1024 * 1024].into();
        e
    };
    let n = SEGMENT_BYTES / (1024 * 1024) + 3;
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        for i in 1..=n {
            w.append(&[big(i)], 0);
            w.sync().unwrap();
        }
        assert_eq!(w.segment_count(), 2);
    }
    let (_w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(r.entries.len() as u64, n);
    assert_eq!(r.entries.last().unwrap().index, n);
}

/// Polls `cond` every millisecond for up to 10 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[test]
fn a_full_segment_rolls_into_the_prepared_spare_and_a_stale_spare_is_not_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let big = |i: u64| {
        let mut e = entry(i, 1);
        e.data = vec![i as u8; 1024 * 1024].into();
        e
    };
    let n = SEGMENT_BYTES / (1024 * 1024) + 2;
    {
        let (mut w, _) = Wal::open(dir.path()).unwrap();
        eventually("the spare", || w.spare_ready());
        assert_eq!(std::fs::metadata(dir.path().join(SPARE)).unwrap().len(), SEGMENT_BYTES);
        for i in 1..=n {
            w.append(&[big(i)], 0);
            w.sync().unwrap();
        }
        assert_eq!((w.segment_count(), w.spares_used()), (2, 1));
        // The spare became segment 1 (full size, zeros past its records) and the next one is
        // being prepared.
        assert!(std::fs::metadata(seg_path(dir.path(), 1)).unwrap().len() >= SEGMENT_BYTES);
        eventually("the next spare", || w.spare_ready());
    }
    // A crash while a spare was half written leaves junk in it: it is discarded, not replayed.
    std::fs::write(dir.path().join(SPARE), b"not a segment").unwrap();
    let (w, r) = Wal::open(dir.path()).unwrap();
    assert_eq!(r.entries.len() as u64, n);
    assert!(r.entries.iter().all(|e| e.data.len() == 1024 * 1024 && e.data[0] == e.index as u8));
    assert_eq!(w.segment_count(), 3);
    drop(w);
    // Dropping the log waited for its new spare (~10 ms of writes): it is complete, and
    // nothing writes into the directory any more.
    assert_eq!(std::fs::metadata(dir.path().join(SPARE)).unwrap().len(), SEGMENT_BYTES);
}
