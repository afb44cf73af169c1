//! Rebuilding the log from its records, in segment order and file order.
//!
//! - `Start(i, t)`: if the log so far ends at exactly `(i, t)`, nothing changes (a segment
//!   rollover); otherwise the log is reset to "empty, after `(i, t)`" (the first segment left
//!   after older ones were deleted, or the segment written when a snapshot replaced the log);
//! - `Truncate(i, t)`: the entries after `i` are dropped; when the log does not reach back to
//!   `i` (the segments holding it were deleted after compaction past `i`), it becomes "empty,
//!   after `(i, t)`";
//! - `Entry(e)`: must directly follow the log; appended;
//! - `HardState(hs)`: the newest one wins;
//! - `Compact(i, t)`: entries up to `i` are dropped; the log now starts after `(i, t)`;
//! - `Ident(id)`: the data dir identity; every segment must carry the same one;
//! - `Synced(x)`: a durability claim, only used to tell torn tails from damage.

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use super::record::*;
use crate::error::StorageError;

/// What the log held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    /// `(index, term)` of the entry just before the first one held.
    pub truncated: (u64, u64),
    /// The data dir identity recorded in the log, if any segment carries one.
    pub ident: Option<u128>,
}

#[derive(Default)]
pub struct Replay {
    pub r: Recovered,
}

impl Replay {
    pub fn last(&self) -> (u64, u64) {
        self.r.entries.last().map(|e| (e.index, e.term)).unwrap_or(self.r.truncated)
    }

    fn term_of(&self, i: u64) -> Option<u64> {
        if i == self.r.truncated.0 {
            return Some(self.r.truncated.1);
        }
        let off = i.checked_sub(self.r.truncated.0 + 1)?;
        self.r.entries.get(off as usize).map(|e| e.term)
    }

    /// Applies one record; returns the index a `Truncate` cut the log back to.
    pub fn apply(&mut self, kind: u8, payload: &[u8], at: &str) -> Result<Option<u64>, StorageError> {
        let bad = |what: &str| StorageError::Corrupt(format!("{at}: {what}"));
        match kind {
            K_START => {
                let (i, t) = unpair(payload).ok_or_else(|| bad("bad segment header"))?;
                if self.last() != (i, t) {
                    self.r.entries.clear();
                    self.r.truncated = (i, t);
                }
            }
            K_TRUNCATE => {
                let (i, t) = unpair(payload).ok_or_else(|| bad("bad truncation record"))?;
                if i < self.r.truncated.0 {
                    self.r.entries.clear();
                    self.r.truncated = (i, t);
                } else {
                    match self.term_of(i) {
                        Some(have) if have == t => {
                            self.r.entries.truncate((i - self.r.truncated.0) as usize);
                        }
                        Some(have) => {
                            return Err(bad(&format!("truncation at entry {i} of term {t}, but it has term {have}")))
                        }
                        None => return Err(bad(&format!("truncation at entry {i}, past the end of the log"))),
                    }
                }
                return Ok(Some(i));
            }
            K_ENTRY => {
                let e = Entry::parse_from_bytes(payload).map_err(|e| bad(&format!("bad entry: {e}")))?;
                let (last, _) = self.last();
                if e.index != last + 1 {
                    return Err(bad(&format!(
                        "entry {} does not follow the log ({}..={last})",
                        e.index,
                        self.r.truncated.0 + 1
                    )));
                }
                self.r.entries.push(e);
            }
            K_HARD_STATE => {
                self.r.hard_state =
                    HardState::parse_from_bytes(payload).map_err(|e| bad(&format!("bad hard state: {e}")))?;
            }
            K_COMPACT => {
                let (i, t) = unpair(payload).ok_or_else(|| bad("bad compaction record"))?;
                if i > self.r.truncated.0 {
                    let drop = ((i - self.r.truncated.0) as usize).min(self.r.entries.len());
                    self.r.entries.drain(..drop);
                    self.r.truncated = (i, t);
                }
            }
            K_IDENT => {
                let id = <[u8; 16]>::try_from(payload).map(u128::from_le_bytes).map_err(|_| bad("bad identity"))?;
                match self.r.ident {
                    Some(have) if have != id => {
                        return Err(bad(&format!("segments of two data dirs ({have:032x} and {id:032x})")))
                    }
                    _ => self.r.ident = Some(id),
                }
            }
            K_SYNCED => {}
            k => return Err(bad(&format!("unknown record kind {k}"))),
        }
        Ok(None)
    }
}
