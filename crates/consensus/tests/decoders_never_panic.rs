//! Opening a WAL never panics whatever its segment files hold: wholly random segments, and
//! valid segments (entries, hard states, compaction, rollovers) with bytes flipped, cut short or
//! followed by garbage. Each open either recovers or refuses with an error.

#![allow(clippy::field_reassign_with_default)]

use std::path::{Path, PathBuf};

use blixard_consensus::wal::Wal;
use proptest::prelude::*;
use raft::eraftpb::{Entry, HardState};

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs
}

fn entry(index: u64, term: u64, len: usize) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = vec![index as u8; len].into();
    e
}

/// A log of `n` entries in small segments (so there are rollovers), with a hard state and,
/// when `compact_to` > 0, a compaction.
fn write_log(dir: &Path, n: u64, compact_to: u64) {
    let (mut w, _) = Wal::open_with(dir, 2048).expect("open a fresh wal");
    for i in 1..=n {
        w.append(&[entry(i, 1 + i / 10, 40)], if i == 1 { 0 } else { 1 + (i - 1) / 10 });
        if i % 7 == 0 {
            let mut hs = HardState::default();
            hs.term = 1 + i / 10;
            hs.commit = i;
            w.set_hard_state(&hs);
        }
        w.flush(false).expect("flush");
    }
    w.sync().expect("sync");
    if compact_to > 0 && compact_to <= n {
        w.compact(compact_to, 1 + compact_to / 10).expect("compact");
    }
}

#[derive(Debug, Clone)]
enum Damage {
    Flip { segment: prop::sample::Index, at: prop::sample::Index, mask: u8 },
    Truncate { segment: prop::sample::Index, at: prop::sample::Index },
    Append { segment: prop::sample::Index, bytes: Vec<u8> },
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), any::<prop::sample::Index>(), 1u8..=255)
            .prop_map(|(segment, at, mask)| Damage::Flip { segment, at, mask }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(segment, at)| Damage::Truncate { segment, at }),
        (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..64))
            .prop_map(|(segment, bytes)| Damage::Append { segment, bytes }),
    ]
}

fn apply(dir: &Path, d: &Damage) {
    let segs = segments(dir);
    if segs.is_empty() {
        return;
    }
    let pick = |i: &prop::sample::Index| segs[i.index(segs.len())].clone();
    match d {
        Damage::Flip { segment, at, mask } => {
            let p = pick(segment);
            let mut data = std::fs::read(&p).expect("read");
            if !data.is_empty() {
                let i = at.index(data.len());
                data[i] ^= mask;
                std::fs::write(&p, data).expect("write");
            }
        }
        Damage::Truncate { segment, at } => {
            let p = pick(segment);
            let data = std::fs::read(&p).expect("read");
            let keep = at.index(data.len() + 1);
            std::fs::write(&p, &data[..keep]).expect("write");
        }
        Damage::Append { segment, bytes } => {
            let p = pick(segment);
            let mut data = std::fs::read(&p).expect("read");
            data.extend_from_slice(bytes);
            std::fs::write(&p, data).expect("write");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_segments_open_or_refuse(
        n in 1u64..80, compact_to in 0u64..40, damages in prop::collection::vec(damage(), 1..4),
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        write_log(dir.path(), n, compact_to);
        for d in &damages {
            apply(dir.path(), d);
        }
        let _ = Wal::open_with(dir.path(), 2048);
    }

    #[test]
    fn random_segments_open_or_refuse(files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 1..3)) {
        let dir = tempfile::tempdir().expect("temp dir");
        // Named as the WAL names its segments: take them from a fresh log, then overwrite.
        write_log(dir.path(), 1, 0);
        let segs = segments(dir.path());
        for (i, data) in files.iter().enumerate() {
            let p = segs.get(i).cloned().unwrap_or_else(|| {
                let mut name = segs[0].file_name().expect("name").to_string_lossy().into_owned();
                name.insert_str(0, &format!("{i}"));
                dir.path().join(name)
            });
            std::fs::write(p, data).expect("write");
        }
        let _ = Wal::open_with(dir.path(), 2048);
    }
}
