//! The write-ahead log against a model of the Raft log it stores: random appends (with
//! conflicting overwrites of the uncommitted suffix), commits, compactions, snapshot resets, hard
//! states, flushes and syncs, with tiny segments so rollovers happen all the time, and crashes
//! (the log dropped with records still buffered) followed by a reopen. After every reopen the
//! recovered log must be exactly what was written before the crash.
//!
//! The model follows raft-rs's rules: only entries after the commit index are overwritten (by a
//! newer term), only committed entries are compacted, a snapshot lies at or past the commit index.

#![allow(clippy::field_reassign_with_default)]

use blixard_consensus::wal::{Recovered, Wal};
use proptest::prelude::*;
use raft::eraftpb::{Entry, HardState};

#[derive(Clone, Debug)]
enum Op {
    /// Appends `n` entries starting `back` entries before the end (never at or below commit).
    Append {
        back: u8,
        n: u8,
        size: u16,
    },
    Commit {
        ahead: u8,
    },
    /// Compacts to a point between the log's start and the commit index.
    Compact {
        frac: u8,
    },
    /// A snapshot `ahead` entries past the last index replaces the log.
    Reset {
        ahead: u8,
    },
    HardState {
        vote: u8,
    },
    Flush,
    Sync,
    /// Drops the log (losing what is only buffered) and opens it again.
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..6, 1u8..8, 0u16..1500).prop_map(|(back, n, size)| Op::Append { back, n, size }),
        3 => (0u8..10).prop_map(|ahead| Op::Commit { ahead }),
        2 => any::<u8>().prop_map(|frac| Op::Compact { frac }),
        1 => (1u8..5).prop_map(|ahead| Op::Reset { ahead }),
        1 => any::<u8>().prop_map(|vote| Op::HardState { vote }),
        2 => Just(Op::Flush),
        3 => Just(Op::Sync),
        2 => Just(Op::Crash),
    ]
}

/// The log as raft-rs would see it.
#[derive(Clone, Debug, Default, PartialEq)]
struct Model {
    entries: Vec<(u64, u64, Vec<u8>)>,
    truncated: (u64, u64),
    hs: (u64, u64, u64),
    commit: u64,
    max_term: u64,
}

impl Model {
    fn last(&self) -> u64 {
        self.entries.last().map_or(self.truncated.0, |e| e.0)
    }

    fn term_of(&self, i: u64) -> u64 {
        if i == self.truncated.0 {
            return self.truncated.1;
        }
        self.entries[(i - self.truncated.0 - 1) as usize].1
    }
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    let mut e = Entry::default();
    e.index = index;
    e.term = term;
    e.data = data.to_vec().into();
    e
}

fn hard_state(m: &Model) -> HardState {
    let mut hs = HardState::default();
    (hs.term, hs.vote, hs.commit) = m.hs;
    hs
}

/// Entries as (index, term, data), the truncation point and the hard state (term, vote, commit).
type Seen = (Vec<(u64, u64, Vec<u8>)>, (u64, u64), (u64, u64, u64));

fn seen(r: &Recovered) -> Seen {
    let entries = r.entries.iter().map(|e| (e.index, e.term, e.data.to_vec())).collect();
    (entries, r.truncated, (r.hard_state.term, r.hard_state.vote, r.hard_state.commit))
}

const SEGMENT: u64 = 4096;

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open_with(dir.path(), SEGMENT).unwrap();
    let mut m = Model::default();
    // What a crash leaves: the model as of the last write to the file.
    let mut written = m.clone();
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Append { back, n, size } => {
                let first = m.last().saturating_sub(u64::from(back)).max(m.commit).max(m.truncated.0) + 1;
                let term = if first <= m.last() || m.max_term == 0 { m.max_term + 1 } else { m.max_term };
                m.max_term = term;
                let keep = (first - m.truncated.0 - 1) as usize;
                m.entries.truncate(keep);
                let mut batch = Vec::new();
                for i in first..first + u64::from(n) {
                    let data = vec![(i % 251) as u8; usize::from(size)];
                    batch.push(entry(i, term, &data));
                    m.entries.push((i, term, data));
                }
                let prev_term = m.term_of(first - 1);
                wal.append(&batch, prev_term);
            }
            Op::Commit { ahead } => m.commit = (m.commit + u64::from(ahead)).min(m.last()),
            Op::Compact { frac } => {
                let span = m.commit.saturating_sub(m.truncated.0);
                let to = m.truncated.0 + span * u64::from(frac) / 255;
                if to > m.truncated.0 {
                    let term = m.term_of(to);
                    m.entries.drain(..(to - m.truncated.0) as usize);
                    m.truncated = (to, term);
                    wal.compact(to, term).unwrap();
                    // A compaction is durable once it returns.
                    written = m.clone();
                }
            }
            Op::Reset { ahead } => {
                let index = m.last().max(m.commit) + u64::from(ahead);
                let term = m.max_term + 1;
                m.max_term = term;
                m.entries.clear();
                m.truncated = (index, term);
                m.commit = index;
                m.hs = (m.hs.0.max(term), m.hs.1, index);
                wal.reset(index, term, &hard_state(&m)).unwrap();
                written = m.clone();
            }
            Op::HardState { vote } => {
                m.hs = (m.max_term, u64::from(vote % 4), m.commit);
                wal.set_hard_state(&hard_state(&m));
            }
            Op::Flush => {
                wal.flush(false).unwrap();
                written = m.clone();
            }
            Op::Sync => {
                wal.sync().unwrap();
                written = m.clone();
            }
            Op::Crash => {
                drop(wal);
                let (w, r) = Wal::open_with(dir.path(), SEGMENT)
                    .map_err(|e| TestCaseError::fail(format!("step {step}: reopen failed: {e}")))?;
                wal = w;
                let want = (written.entries.clone(), written.truncated, written.hs);
                prop_assert_eq!(seen(&r), want, "step {}: recovered log differs from what was written", step);
                // The commit index is not part of the log; keep the model's.
                let commit = m.commit.min(written.last()).max(written.truncated.0);
                m = written.clone();
                m.commit = commit;
                written = m.clone();
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_log_recovers_exactly_what_was_written(ops in proptest::collection::vec(op(), 1..80)) {
        run(&ops)?;
    }
}

/// The case that motivated the model test: a segment rolls over, the follower then overwrites
/// entries from before the new segment's first one, and compaction deletes the older segment.
#[test]
fn an_overwrite_below_a_segment_start_survives_compaction_of_the_segment_before() {
    let ops = [
        Op::Append { back: 0, n: 3, size: 1400 }, // 1..=3, rolls over at 4 KiB
        Op::Sync,
        Op::Commit { ahead: 1 },
        Op::Append { back: 2, n: 2, size: 10 }, // overwrites 2..=3 in the new segment
        Op::Sync,
        Op::Commit { ahead: 3 },
        Op::Compact { frac: 255 }, // to 3: the first segment goes
        Op::Sync,
        Op::Crash,
    ];
    run(&ops).unwrap();
}
