//! A disk that lies: the log over a simulated disk ([`blixard_consensus::simdisk`]) that loses
//! unsynced writes at a crash (any subset POSIX allows), tears the last write, rots a bit of
//! synced data, fills up, and fails an `fsync` the way Linux does. Every run is a function of its
//! seed. The expected outcome of each case is written above its test (and in
//! docs/RELIABILITY.md, "A disk that lies").

#![allow(clippy::field_reassign_with_default)]

use std::path::PathBuf;

use blixard_consensus::simdisk::{Crash, SimDisk};
use blixard_consensus::wal::{Recovered, Wal};
use blixard_consensus::StorageError;
use raft::eraftpb::Entry;

/// Small segments: rollovers (and their renames and directory syncs) happen all the time.
const SEG: u64 = 8 * 1024;

fn dir() -> PathBuf {
    PathBuf::from("/sim/log")
}

fn open(d: &SimDisk) -> Result<(Wal<SimDisk>, Recovered), StorageError> {
    Wal::open_on(d.clone(), &dir(), SEG)
}

/// splitmix64: the tests' own seeded choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An entry whose bytes say which entry it is: `index.term:` then `len` bytes of `x`.
fn entry(index: u64, term: u64, len: usize) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    let mut d = format!("{index}.{term}:").into_bytes();
    d.resize(d.len() + len, b'x');
    e.data = d.into();
    e
}

/// The recovered log as (index, term), every entry's bytes checked against what was written.
fn idx(r: &Recovered) -> Vec<(u64, u64)> {
    r.entries
        .iter()
        .map(|e| {
            let head = format!("{}.{}:", e.index, e.term).into_bytes();
            assert!(
                e.data.starts_with(&head) && e.data[head.len()..].iter().all(|&b| b == b'x'),
                "entry {} of term {} came back with other bytes",
                e.index,
                e.term
            );
            (e.index, e.term)
        })
        .collect()
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

/// Appends and syncs entries `from..from + n` of term 1 (each batch acknowledged).
fn write_acked(w: &mut Wal<SimDisk>, from: u64, n: u64, rng: &mut Rng) {
    for i in from..from + n {
        w.append(&[entry(i, 1, rng.below(1500) as usize)], 1);
        w.sync().expect("sync");
    }
}

/// **Unsynced writes lost at a crash (any allowed subset).** Expected: reopening succeeds; the
/// log is exactly its state at the last completed sync or at a record boundary after it — every
/// acknowledged (synced) entry is there, only an unacknowledged tail is dropped, and no entry
/// comes back altered. Random appends (with conflicting overwrites), flushes without sync, syncs
/// and idle claims; three crashes per run; every crash mode; 150 seeds each.
#[test]
fn unsynced_writes_lost_at_a_crash_keep_every_acknowledged_record() {
    for mode in [Crash::Prefix, Crash::Pages, Crash::TornLast, Crash::LoseAll] {
        for seed in 0..150u64 {
            let disk = SimDisk::new(seed);
            let mut rng = Rng(seed ^ 0xD15C);
            let (mut w, _) = open(&disk).unwrap();
            let mut model: Vec<(u64, u64)> = Vec::new();
            // The states the log may come back in: the one at the last sync, then one per
            // record written since.
            let mut allowed = vec![model.clone()];
            let mut term = 1;
            for round in 0..3 {
                for _ in 0..1 + rng.below(30) {
                    match rng.below(10) {
                        0..=5 => {
                            let back = if rng.below(4) == 0 { rng.below(3).min(model.len() as u64) } else { 0 };
                            if back > 0 {
                                term += 1;
                            }
                            let first = model.len() as u64 - back + 1;
                            let prev_term = if first > 1 { model[first as usize - 2].1 } else { 0 };
                            let es: Vec<Entry> = (0..1 + rng.below(4))
                                .map(|k| entry(first + k, term, rng.below(3000) as usize))
                                .collect();
                            w.append(&es, prev_term);
                            if back > 0 {
                                model.truncate(first as usize - 1);
                                allowed.push(model.clone());
                            }
                            for e in &es {
                                model.push((e.index, e.term));
                                allowed.push(model.clone());
                            }
                        }
                        6 | 7 => {
                            w.sync().unwrap();
                            allowed = vec![model.clone()];
                        }
                        8 => w.flush(false).unwrap(),
                        _ => w.seal().unwrap(),
                    }
                }
                disk.crash(mode);
                drop(w);
                let (w2, r) = open(&disk).unwrap_or_else(|e| {
                    panic!("{mode:?} seed {seed} round {round}: reopening after a crash failed: {}", chain(&e))
                });
                let got = idx(&r);
                assert!(
                    allowed.contains(&got),
                    "{mode:?} seed {seed} round {round}: recovered {got:?}, acknowledged {:?}, written {model:?}",
                    allowed[0]
                );
                model = got;
                allowed = vec![model.clone()];
                w = w2;
            }
        }
    }
}

/// **A torn last write.** Expected: the torn record is dropped, reopening succeeds with every
/// acknowledged entry, and the log goes on from there (a later write survives the next reopen).
#[test]
fn a_torn_last_write_is_dropped_and_the_log_goes_on() {
    for seed in 0..50u64 {
        let disk = SimDisk::new(seed);
        let mut rng = Rng(seed);
        let (mut w, _) = open(&disk).unwrap();
        write_acked(&mut w, 1, 5, &mut rng);
        w.append(&[entry(6, 1, 2000)], 1);
        w.flush(false).unwrap(); // written, never synced
        disk.crash(Crash::TornLast);
        drop(w);
        let (mut w, r) = open(&disk).unwrap();
        assert_eq!(idx(&r), (1..=5).map(|i| (i, 1)).collect::<Vec<_>>(), "seed {seed}");
        w.append(&[entry(6, 2, 10)], 1);
        w.sync().unwrap();
        disk.crash(Crash::LoseAll);
        drop(w);
        let (_, r) = open(&disk).unwrap();
        let mut want: Vec<(u64, u64)> = (1..=5).map(|i| (i, 1)).collect();
        want.push((6, 2));
        assert_eq!(idx(&r), want, "seed {seed}");
    }
}

/// Where a segment's records end (the rest is its zero preallocation).
fn records_end(data: &[u8]) -> usize {
    let mut pos = 0;
    while pos + 8 <= data.len() {
        let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        pos += 8 + len;
    }
    pos
}

fn segments(disk: &SimDisk) -> Vec<PathBuf> {
    use blixard_consensus::wal::Fs;
    let mut v: Vec<PathBuf> =
        disk.list(&dir()).unwrap().into_iter().filter(|n| n.ends_with(".wal")).map(|n| dir().join(n)).collect();
    v.sort();
    v
}

/// **A bit flip in an old, synced, acknowledged record.** Expected: reopening refuses, with an
/// error naming the segment file and the byte offset of the damaged record (at or before the
/// flipped byte) — never a silent drop of it and what follows. Seeds choose the segment (older
/// ones and the newest), the byte and the bit; the newest segment's final claim record is not
/// acknowledged data, so it is not a target.
#[test]
fn a_flipped_bit_in_an_acknowledged_record_refuses_to_open_naming_file_and_offset() {
    for seed in 0..120u64 {
        let disk = SimDisk::new(seed);
        let mut rng = Rng(seed);
        let (mut w, _) = open(&disk).unwrap();
        write_acked(&mut w, 1, 20 + rng.below(20), &mut rng);
        w.seal().unwrap(); // idle: the last sync is claimed...
        w.sync().unwrap(); // ...and the claim is on the disk
        drop(w);
        let segs = segments(&disk);
        assert!(segs.len() >= 2, "seed {seed}: the log rolled over");
        let k = rng.below(segs.len() as u64) as usize;
        let path = &segs[k];
        let data = disk.durable(path).unwrap();
        let mut end = records_end(&data);
        if k + 1 == segs.len() {
            end -= 17; // the final claim
        }
        let at = rng.below(end as u64);
        disk.flip_bit(path, at, rng.below(8) as u8).unwrap();
        match open(&disk) {
            Ok((_, r)) => {
                panic!("seed {seed}: opened with {} entries despite damage in {}", r.entries.len(), path.display())
            }
            Err(e @ StorageError::Damaged { .. }) => {
                let StorageError::Damaged { file, offset, .. } = &e else { unreachable!() };
                assert_eq!(file, path, "seed {seed}: names the file");
                assert!(*offset <= at, "seed {seed}: the damaged record starts at {offset}, the flip was at {at}");
                let msg = e.to_string();
                assert!(msg.contains(&format!("{} is damaged at byte {offset}", path.display())), "{msg}");
            }
            Err(e) => panic!("seed {seed}: another error than damage: {}", chain(&e)),
        }
    }
}

/// **A crash after a reset (a snapshot installed) that followed an idle claim.** Expected:
/// reopening succeeds. The claim `seal` writes when the log goes idle has no sync of its own;
/// a reset moved on to a new segment without syncing it, and deleted the old segments without
/// syncing the directory, so a crash could bring an old segment back with its claim torn — and
/// the node refused for good to start on "a segment that was complete" (found by the random
/// fault schedules: seeds 18, 126 and 208 of `s42`, a node that never came back after a crash).
#[test]
fn a_crash_after_a_reset_reopens() {
    for seed in 0..60u64 {
        for how in [Crash::Prefix, Crash::Pages, Crash::TornLast] {
            let disk = SimDisk::new(seed);
            let mut rng = Rng(seed);
            let (mut w, _) = open(&disk).unwrap();
            write_acked(&mut w, 1, 1 + rng.below(8), &mut rng);
            w.seal().unwrap();
            w.reset(100, 2, &raft::eraftpb::HardState::default()).unwrap();
            disk.crash(how);
            if let Err(e) = open(&disk) {
                panic!("seed {seed}, {how:?}: a crash after a reset left a log that does not open: {}", chain(&e));
            }
        }
    }
}

/// **ENOSPC.** Expected: the failing call says "No space left on device" and names the file; the
/// batch it carried is not acknowledged (its `sync` failed) and nothing after it is either (the
/// log refuses every later write); once space is freed, reopening succeeds with every
/// acknowledged entry.
#[test]
fn a_full_disk_says_no_space_left_acknowledges_nothing_and_reopens() {
    for seed in 0..40u64 {
        let disk = SimDisk::new(seed);
        let mut rng = Rng(seed);
        let (mut w, _) = open(&disk).unwrap();
        write_acked(&mut w, 1, 3, &mut rng);
        disk.set_space(Some(disk.used() + 2 * SEG + rng.below(SEG)));
        let mut acked = 3;
        let err = loop {
            let i = acked + 1;
            w.append(&[entry(i, 1, rng.below(1500) as usize)], 1);
            match w.sync() {
                Ok(()) => acked = i,
                Err(e) => break e,
            }
            assert!(i < 10_000, "seed {seed}: the disk never filled");
        };
        let msg = chain(&err);
        assert!(msg.contains("No space left on device"), "seed {seed}: {msg}");
        assert!(msg.contains("/sim/log/"), "seed {seed}: names the file: {msg}");
        assert!(!msg.contains("corrupt"), "seed {seed}: {msg}");
        w.append(&[entry(acked + 2, 1, 10)], 1);
        assert!(w.sync().is_err(), "seed {seed}: a write after a failure is refused, never acknowledged");
        disk.crash(Crash::Prefix);
        drop(w);
        disk.set_space(None);
        let (_, r) = open(&disk).unwrap_or_else(|e| panic!("seed {seed}: reopen after freeing space: {}", chain(&e)));
        let got = idx(&r);
        let acked_log: Vec<(u64, u64)> = (1..=acked).map(|i| (i, 1)).collect();
        // The failed batch may have reached the disk whole (a rollover after its sync failed).
        let with_failed: Vec<(u64, u64)> = (1..=acked + 1).map(|i| (i, 1)).collect();
        assert!(got == acked_log || got == with_failed, "seed {seed}: recovered {got:?}, acknowledged 1..={acked}");
    }
}

/// **EIO on fsync ("fsyncgate").** The simulated disk fails one `fdatasync` with EIO and, as
/// Linux does, marks the pages it failed to write clean, so the next `fdatasync` succeeds without
/// writing them. Expected: the failing sync is an error naming the file and the I/O error; the
/// log never retries it into a success — every later sync (and every other write) fails too, so
/// the batch is never acknowledged; after the crash that follows, every acknowledged entry is
/// there.
#[test]
fn a_failed_fsync_is_never_retried_into_a_success() {
    for seed in 0..40u64 {
        let disk = SimDisk::new(seed);
        let mut rng = Rng(seed);
        let (mut w, _) = open(&disk).unwrap();
        let n = 1 + rng.below(10);
        write_acked(&mut w, 1, n, &mut rng);
        disk.fail_sync(rng.below(3), ".wal");
        let mut acked = n;
        let err = loop {
            let i = acked + 1;
            w.append(&[entry(i, 1, rng.below(1500) as usize)], 1);
            match w.sync() {
                Ok(()) => acked = i,
                Err(e) => break e,
            }
            assert!(i < n + 100, "seed {seed}: the failing sync never came");
        };
        let msg = chain(&err);
        assert!(msg.contains("Input/output error"), "seed {seed}: {msg}");
        assert!(msg.contains("/sim/log/"), "seed {seed}: names the file: {msg}");
        for _ in 0..3 {
            let again = w.sync();
            assert!(again.is_err(), "seed {seed}: a sync after a failed one reported success");
            assert!(chain(&again.unwrap_err()).contains("Input/output error"), "seed {seed}: says why");
        }
        w.append(&[entry(acked + 2, 1, 10)], 1);
        assert!(w.flush(false).is_err() && w.seal().is_err() && w.compact(1, 1).is_err(), "seed {seed}");
        disk.crash(Crash::Pages);
        drop(w);
        let (_, r) = open(&disk).unwrap();
        let got = idx(&r);
        let n = got.len() as u64;
        assert!(n == acked || n == acked + 1, "seed {seed}: acknowledged 1..={acked}, recovered {got:?}");
        assert!(got.iter().enumerate().all(|(k, &(i, t))| i == k as u64 + 1 && t == 1), "seed {seed}: {got:?}");
    }
}
