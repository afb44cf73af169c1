//! The write half of a Raft log store, so one conformance suite can hold every implementation
//! to the same behaviour (`tests/log_store_conformance.rs`).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;

/// A `raft::Storage` that can also be written. `persist`, `apply_snapshot` and `compact` are
/// what the Ready loop itself calls, so the conformance suite tests the production write path.
///
/// To be correct, an implementation must:
/// - `persist`: remove every entry at or after the first new index, then store the new ones
///   (entries are contiguous with the existing log), and the hard state when given; when
///   `durable`, make it all survive a crash before returning;
/// - `compact(i)`: drop entries before `i` so that `first_index() == i`, `i <= last_index() + 1`;
/// - `apply_snapshot`: install the state the snapshot carries, drop the whole log, make
///   `first_index() == meta.index + 1`, `term(meta.index) == meta.term`, take the snapshot's
///   conf state, and raise the hard state's commit to the snapshot index, durably;
/// - make `compact` and `set_conf_state` durable before returning.
pub trait LogStore: raft::Storage {
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, durable: bool) -> Result<(), raft::Error>;
    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), raft::Error>;
    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), raft::Error>;
    fn compact(&mut self, to: u64) -> Result<(), raft::Error>;

    fn append(&mut self, entries: &[Entry]) -> Result<(), raft::Error> {
        self.persist(entries, None, true)
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), raft::Error> {
        self.persist(&[], Some(hs), true)
    }
}

impl LogStore for MemStorage {
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, _durable: bool) -> Result<(), raft::Error> {
        if !entries.is_empty() {
            self.wl().append(entries)?;
        }
        if let Some(hs) = hs {
            self.wl().set_hardstate(hs.clone());
        }
        Ok(())
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), raft::Error> {
        self.wl().set_conf_state(cs.clone());
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), raft::Error> {
        self.wl().apply_snapshot(snap.clone())
    }

    fn compact(&mut self, to: u64) -> Result<(), raft::Error> {
        self.wl().compact(to)
    }
}
