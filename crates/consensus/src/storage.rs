//! A node's durable Raft storage: the log and hard state in a write-ahead log ([`Wal`]), the
//! state machine, conf state and applied index in redb — each store doing what it is good at.
//!
//! The log is also held in memory (it is compacted to a bounded size), so raft-rs reads entries
//! and terms without touching the disk.
//!
//! **Invariant linking the two stores.** The state machine is committed to redb without an fsync
//! on every apply and made durable at checkpoints; the log is compacted only up to the last
//! durable checkpoint. So after any crash, redb's applied index `A` lies inside the log (or at
//! its start), and raft-rs replays the committed entries after `A`. [`DiskStorage::open`]
//! checks this and repairs the one legitimate exception: a snapshot installed into redb whose
//! log reset did not reach the disk (the log then restarts at the snapshot).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use blixard_core::{Command, Envelope};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use redb::{Database, Durability, ReadableDatabase, TableDefinition, WriteTransaction};

use crate::error::StorageError;
use crate::log_store::LogStore;
use crate::sm::{self, ReadView, TxnStore};
use crate::wal::{Disk, Wal, SEGMENT_BYTES};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const K_NODE_ID: &str = "node_id";
/// The data dir's identity, also recorded in every log segment: the two stores must agree.
const K_IDENT: &str = "ident";
const K_CONF_STATE: &str = "conf_state";
/// (index, term) of the last entry applied to the state machine tables.
const K_APPLIED: &str = "applied";

/// What a brand-new single-voter cluster starts from.
pub struct Bootstrap {
    pub id: u64,
    pub addr: String,
}

pub struct DiskStorage {
    db: Arc<Database>,
    wal: Wal<Disk>,
    /// Entries `truncated.0 + 1 ..= last_index`.
    entries: VecDeque<Entry>,
    hs: HardState,
    cs: ConfState,
    /// (index, term) of the entry just before the first one held.
    truncated: (u64, u64),
}

fn pair(v: (u64, u64)) -> [u8; 16] {
    let mut b = [0; 16];
    b[..8].copy_from_slice(&v.0.to_be_bytes());
    b[8..].copy_from_slice(&v.1.to_be_bytes());
    b
}

fn unpair(key: &str, b: &[u8]) -> Result<(u64, u64), StorageError> {
    let arr: [u8; 16] =
        b.try_into().map_err(|_| StorageError::Corrupt(format!("{key} has {} bytes, not 16", b.len())))?;
    let (a, c) = arr.split_at(8);
    Ok((u64::from_be_bytes(a.try_into().unwrap_or_default()), u64::from_be_bytes(c.try_into().unwrap_or_default())))
}

fn parse<M: PbMessage>(what: &str, b: &[u8]) -> Result<M, StorageError> {
    M::parse_from_bytes(b).map_err(|e| StorageError::Corrupt(format!("{what}: {e}")))
}

fn bytes(m: &impl PbMessage) -> Vec<u8> {
    m.write_to_bytes().unwrap_or_default()
}

fn meta_get(db: &Database, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
    let r = db.begin_read().map_err(StorageError::db)?;
    let t = r.open_table(META).map_err(StorageError::db)?;
    let v = t.get(key).map_err(StorageError::db)?.map(|v| v.value().to_vec());
    Ok(v)
}

/// Whether the state store (with identity `state`, used or not) and the log (`log`) belong to
/// one data dir; returns the identity to keep (a new one for a new data dir).
fn check_ident(
    state: Option<u128>,
    log: Option<u128>,
    state_used: bool,
    log_used: bool,
    wal_dir: &Path,
) -> Result<u128, StorageError> {
    let log_dir = wal_dir.display();
    let mismatch = |m: String| Err(StorageError::Mismatch(m));
    match (state, log) {
        (Some(a), Some(b)) if a == b => Ok(a),
        (Some(_), Some(_)) => {
            mismatch(format!("the state store and the raft log in {log_dir} belong to different data dirs"))
        }
        (None, None) if state_used && log_used => Err(StorageError::Corrupt(
            "this data dir was written by an older version of Blixard, whose formats this version does not read".into(),
        )),
        (Some(_), None) if log_used => {
            mismatch(format!("the raft log in {log_dir} was not written with this state store"))
        }
        (None, Some(_)) if state_used => {
            mismatch(format!("the state store was not written with the raft log in {log_dir}"))
        }
        _ if log_used && !state_used => mismatch(format!(
            "the raft log in {log_dir} has no state store: {} is missing or was replaced",
            "blixard.redb"
        )),
        _ if state_used && !log_used => {
            mismatch(format!("the state store has no raft log: {log_dir} is missing or was replaced"))
        }
        (a, b) => Ok(a.or(b).unwrap_or_else(new_ident)),
    }
}

/// A fresh random identity (from the simulated clock under simulation, so a run is a function of
/// its seed).
fn new_ident() -> u128 {
    #[cfg(not(madsim))]
    return rand::random::<u128>();
    #[cfg(madsim)]
    return std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
}

impl DiskStorage {
    /// Opens the store: the state machine in `db`, the log in `wal_dir`. Creates what is missing.
    pub fn open(db: Arc<Database>, wal_dir: &Path) -> Result<Self, StorageError> {
        Self::open_on(db, Disk::Real, wal_dir, SEGMENT_BYTES)
    }

    /// [`Self::open`] with the log on `disk` (a simulated one in tests), in segments of
    /// `segment_bytes`.
    pub fn open_on(db: Arc<Database>, disk: Disk, wal_dir: &Path, segment_bytes: u64) -> Result<Self, StorageError> {
        let txn = db.begin_write().map_err(StorageError::db)?;
        txn.open_table(META).map_err(StorageError::db)?;
        sm::create_tables(&txn)?;
        txn.commit().map_err(StorageError::db)?;

        let cs = match meta_get(&db, K_CONF_STATE)? {
            Some(b) => parse("conf state", &b)?,
            None => ConfState::default(),
        };
        let applied = match meta_get(&db, K_APPLIED)? {
            Some(b) => unpair(K_APPLIED, &b)?,
            None => (0, 0),
        };
        let (mut wal, rec) = Wal::open_on(disk, wal_dir, segment_bytes)?;
        let state_used = applied != (0, 0) || meta_get(&db, K_NODE_ID)?.is_some() || cs != ConfState::default();
        let log_used = !rec.entries.is_empty() || rec.truncated != (0, 0) || rec.hard_state != HardState::default();
        let ident = match meta_get(&db, K_IDENT)? {
            None => None,
            Some(b) => Some(u128::from_le_bytes(
                b.as_slice().try_into().map_err(|_| StorageError::Corrupt("data dir identity".into()))?,
            )),
        };
        let id = check_ident(ident, wal.ident(), state_used, log_used, wal_dir)?;
        if ident.is_none() {
            let txn = db.begin_write().map_err(StorageError::db)?;
            txn.open_table(META)
                .map_err(StorageError::db)?
                .insert(K_IDENT, id.to_le_bytes().as_slice())
                .map_err(StorageError::db)?;
            txn.commit().map_err(StorageError::db)?;
        }
        if wal.ident().is_none() {
            wal.set_ident(id);
            wal.sync()?;
        }
        let mut s =
            DiskStorage { db, wal, entries: rec.entries.into(), hs: rec.hard_state, cs, truncated: rec.truncated };
        let (a, a_term) = applied;
        // (A store that never applied anything, a == 0, only exists in the storage tests.)
        if a > 0 && a < s.truncated.0 {
            return Err(StorageError::Corrupt(format!(
                "the state machine is at entry {a} but the log starts after entry {}",
                s.truncated.0
            )));
        }
        if a > 0 && s.term_of(a) != Some(a_term) {
            // A snapshot reached the state machine but not the log: restart the log there.
            tracing::warn!(applied = a, "restarting the log at the installed snapshot");
            let mut meta = SnapshotMetadata::default();
            meta.index = a;
            meta.term = a_term;
            s.reset_log(&meta)?;
        }
        s.hs.commit = s.hs.commit.min(s.last_index_cached()).max(a);
        Ok(s)
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    fn last_index_cached(&self) -> u64 {
        self.truncated.0 + self.entries.len() as u64
    }

    fn term_of(&self, idx: u64) -> Option<u64> {
        if idx == self.truncated.0 {
            return Some(self.truncated.1);
        }
        let off = idx.checked_sub(self.truncated.0 + 1)?;
        self.entries.get(off as usize).map(|e| e.term)
    }

    /// The node id this data dir belongs to, if it was ever claimed.
    pub fn node_id(&self) -> Result<Option<u64>, StorageError> {
        match meta_get(&self.db, K_NODE_ID)? {
            None => Ok(None),
            Some(b) => {
                let arr: [u8; 8] = b.as_slice().try_into().map_err(|_| StorageError::Corrupt("node id".into()))?;
                Ok(Some(u64::from_be_bytes(arr)))
            }
        }
    }

    /// Records that this data dir belongs to node `id`; refuses if it belongs to another.
    pub fn claim(&mut self, id: u64) -> Result<(), StorageError> {
        match self.node_id()? {
            Some(found) if found != id => Err(StorageError::WrongNode { found, expected: id }),
            Some(_) => Ok(()),
            None => {
                let txn = self.db.begin_write().map_err(StorageError::db)?;
                txn.open_table(META)
                    .map_err(StorageError::db)?
                    .insert(K_NODE_ID, id.to_be_bytes().as_slice())
                    .map_err(StorageError::db)?;
                txn.commit().map_err(StorageError::db)
            }
        }
    }

    /// Whether this store holds any Raft state (a node that ran before, or joined).
    pub fn is_initialized(&self) -> bool {
        self.last_index_cached() > 0 || !self.cs.voters.is_empty() || !self.cs.learners.is_empty()
    }

    /// Starts a new one-voter cluster: a snapshot at index 1, term 1 whose state records the
    /// first member. Starting from a snapshot (not index 0) means every later node is brought up
    /// to date by a snapshot that carries the membership, never by replaying a log that lacks it.
    pub fn bootstrap(&mut self, b: &Bootstrap) -> Result<(), StorageError> {
        self.claim(b.id)?;
        let mut meta = SnapshotMetadata::default();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = vec![b.id];
        let txn = self.db.begin_write().map_err(StorageError::db)?;
        self.stage_conf_state(&txn, meta.get_conf_state())?;
        // Applied directly, never through the log (a replicated bootstrap is refused).
        let env = Envelope { session: None, now_ms: 0, command: Command::Bootstrap { id: b.id, addr: b.addr.clone() } };
        blixard_core::state::run(&mut TxnStore::new(&txn), 1, &env)?
            .map_err(|e| StorageError::Corrupt(format!("bootstrap member: {e}")))?;
        Self::stage_applied(&txn, 1, 1)?;
        txn.commit().map_err(StorageError::db)?;
        self.reset_log(&meta)
    }

    /// (index, term) of the last applied entry.
    pub fn applied(&self) -> Result<(u64, u64), StorageError> {
        Ok(match meta_get(&self.db, K_APPLIED)? {
            Some(b) => unpair(K_APPLIED, &b)?,
            None => (0, 0),
        })
    }

    pub fn first_index_cached(&self) -> u64 {
        self.truncated.0 + 1
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hs
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.cs
    }

    pub fn stage_applied(txn: &WriteTransaction, index: u64, term: u64) -> Result<(), StorageError> {
        txn.open_table(META)
            .map_err(StorageError::db)?
            .insert(K_APPLIED, pair((index, term)).as_slice())
            .map_err(StorageError::db)?;
        Ok(())
    }

    /// Records the conf state in the state machine's transaction (it moves with the applied index).
    pub fn stage_conf_state(&mut self, txn: &WriteTransaction, cs: &ConfState) -> Result<(), StorageError> {
        txn.open_table(META)
            .map_err(StorageError::db)?
            .insert(K_CONF_STATE, bytes(cs).as_slice())
            .map_err(StorageError::db)?;
        self.cs = cs.clone();
        Ok(())
    }

    /// Appends entries (replacing a conflicting suffix). Written by the next [`Self::sync`].
    pub fn stage_append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let last = self.last_index_cached();
        if first.index <= self.truncated.0 || first.index > last + 1 {
            return Err(StorageError::Corrupt(format!(
                "append at {} outside the log ({}..={last})",
                first.index,
                self.truncated.0 + 1,
            )));
        }
        self.entries.truncate((first.index - self.truncated.0 - 1) as usize);
        let prev_term = self.term_of(first.index - 1).unwrap_or_default();
        self.entries.extend(entries.iter().cloned());
        self.wal.append(entries, prev_term);
        Ok(())
    }

    /// Records the hard state. Written by the next [`Self::sync`].
    pub fn stage_hard_state(&mut self, hs: &HardState) {
        self.wal.set_hard_state(hs);
        self.hs = hs.clone();
    }

    /// Raises the recorded commit index (it needs no fsync: it can be relearned after a crash).
    pub fn set_commit(&mut self, commit: u64) {
        if commit > self.hs.commit {
            let mut hs = self.hs.clone();
            hs.commit = commit;
            self.stage_hard_state(&hs);
        }
    }

    /// Writes what was appended; with `durable`, also `fdatasync`s it (one per call).
    pub fn sync(&mut self, durable: bool) -> Result<(), StorageError> {
        self.wal.flush(durable)
    }

    /// The Ready loop's write: appends `entries`, records `hs`, writes them and, with
    /// `durable`, `fdatasync`s them ([`LogStore::persist`] is this). Its error is the store's own,
    /// so a failed sync reaches the operator as what it is (file and I/O error).
    pub fn persist_log(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        durable: bool,
    ) -> Result<(), StorageError> {
        self.stage_append(entries)?;
        if let Some(hs) = hs {
            self.stage_hard_state(hs);
        }
        self.sync(durable)
    }

    /// Called when the Ready loop goes idle: lets the log claim its last sync (see the log's
    /// record format), without a sync of its own.
    pub fn seal(&mut self) -> Result<(), StorageError> {
        self.wal.seal()
    }

    /// Replaces the log by a snapshot's position (the caller has made the snapshot's state
    /// durable in redb first, see [`Self::open`]).
    pub fn reset_log(&mut self, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        let mut hs = self.hs.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.wal.reset(meta.index, meta.term, &hs)?;
        self.entries.clear();
        self.truncated = (meta.index, meta.term);
        self.hs = hs;
        Ok(())
    }

    /// Drops entries before `to` (so `first_index() == to`), keeping the term of `to - 1`.
    /// The caller must have made the state machine durable at `to - 1` or later.
    pub fn compact_log(&mut self, to: u64) -> Result<(), StorageError> {
        if to <= self.truncated.0 + 1 {
            return Ok(());
        }
        let last = self.last_index_cached();
        if to > last + 1 {
            return Err(StorageError::Corrupt(format!("compact to {to} beyond last index {last}")));
        }
        let term = self.term_of(to - 1).unwrap_or_default();
        self.entries.drain(..(to - 1 - self.truncated.0) as usize);
        self.truncated = (to - 1, term);
        self.wal.compact(to - 1, term)
    }

    /// A snapshot of the applied state: its data, index, term and conf state are consistent
    /// because they are read in one redb read transaction.
    pub fn make_snapshot(&self) -> Result<Snapshot, StorageError> {
        snapshot_of(&self.db)
    }

    /// Makes this (claimed, empty) store a new one-node cluster of node `id` at `addr` whose
    /// state is `state` (an export, from a backup) as of `index`/`term`: like a bootstrap, a
    /// snapshot the log starts after.
    pub fn restore(&mut self, id: u64, addr: &str, state: &[u8], index: u64, term: u64) -> Result<(), StorageError> {
        if self.is_initialized() {
            return Err(StorageError::Corrupt("the data dir already holds a cluster's state".into()));
        }
        self.claim(id)?;
        let mut meta = SnapshotMetadata::default();
        meta.index = index.max(1);
        meta.term = term.max(1);
        meta.mut_conf_state().voters = vec![id];
        let mut txn = self.db.begin_write().map_err(StorageError::db)?;
        txn.set_durability(Durability::Immediate).map_err(StorageError::db)?;
        {
            let mut st = TxnStore::new(&txn);
            blixard_core::state::import(&mut st, state)?;
            blixard_core::state::rebase(&mut st, id, addr)?;
        }
        self.stage_conf_state(&txn, meta.get_conf_state())?;
        Self::stage_applied(&txn, meta.index, meta.term)?;
        txn.commit().map_err(StorageError::db)?;
        self.reset_log(&meta)
    }

    /// Installs a snapshot: its state, conf state and applied index durably in redb, then the
    /// log restarts after it (see [`Self::open`] for a crash in between). The caller has
    /// committed any open state transaction.
    pub fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        let mut txn = self.db.begin_write().map_err(StorageError::db)?;
        txn.set_durability(Durability::Immediate).map_err(StorageError::db)?;
        blixard_core::state::import(&mut TxnStore::new(&txn), &snap.data)?;
        self.stage_conf_state(&txn, meta.get_conf_state())?;
        Self::stage_applied(&txn, meta.index, meta.term)?;
        txn.commit().map_err(StorageError::db)?;
        self.reset_log(meta)
    }

    /// Log segment files on disk.
    pub fn segment_count(&self) -> usize {
        self.wal.segment_count()
    }
}

/// A consistent snapshot of the applied state in `db` (data, index, term and conf state read
/// in one read transaction), for Raft and for backups.
pub fn snapshot_of(db: &Database) -> Result<Snapshot, StorageError> {
    let view = ReadView::begin(db)?;
    let meta = view.0.open_table(META).map_err(StorageError::db)?;
    let (index, term) = match meta.get(K_APPLIED).map_err(StorageError::db)? {
        Some(b) => unpair(K_APPLIED, b.value())?,
        None => (0, 0),
    };
    let cs: ConfState = match meta.get(K_CONF_STATE).map_err(StorageError::db)? {
        Some(b) => parse("conf state", b.value())?,
        None => ConfState::default(),
    };
    drop(meta);
    let mut snap = Snapshot::default();
    snap.data = blixard_core::state::export(&view)?.into();
    let m = snap.mut_metadata();
    m.index = index;
    m.term = term;
    m.set_conf_state(cs);
    Ok(snap)
}

impl raft::Storage for DiskStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hs.clone(), self.cs.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index_cached() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let from = (low - self.truncated.0 - 1) as usize;
        let to = (high - self.truncated.0 - 1) as usize;
        let mut out = Vec::with_capacity((to - from).min(1024));
        let mut size = 0u64;
        for e in self.entries.range(from..to) {
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        self.term_of(idx).ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_cached())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.make_snapshot()?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snap)
    }
}

/// The Ready loop's write path, held to the conformance suite.
impl LogStore for DiskStorage {
    fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, durable: bool) -> Result<(), raft::Error> {
        Ok(self.persist_log(entries, hs, durable)?)
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), raft::Error> {
        let txn = self.db.begin_write().map_err(StorageError::db)?;
        self.stage_conf_state(&txn, cs)?;
        txn.commit().map_err(StorageError::db)?;
        Ok(())
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), raft::Error> {
        if snap.get_metadata().index < self.truncated.0 + 1 {
            return Err(raft::Error::Store(raft::StorageError::SnapshotOutOfDate));
        }
        Ok(self.install_snapshot(snap)?)
    }

    fn compact(&mut self, to: u64) -> Result<(), raft::Error> {
        Ok(self.compact_log(to)?)
    }
}
