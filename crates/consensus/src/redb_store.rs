//! The Raft log, hard state, conf state and truncation point in redb, next to the state machine
//! tables, so one redb transaction can hold everything one Ready changes.
//!
//! Writes are *staged* into a caller-owned [`WriteTransaction`] (the driver commits the whole
//! Ready at once); the [`LogStore`] impl wraps each in its own transaction for the conformance
//! suite. The small in-memory cache (hard state, conf state, first/last index) is updated when a
//! write is staged: the driver commits right after staging and treats a failed commit as fatal,
//! so the cache never serves a state the disk does not reach.

use std::sync::Arc;

use blixard_core::{Command, Envelope};
use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::error::StorageError;
use crate::log_store::LogStore;
use crate::sm::{self, ReadView, TxnStore};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const K_NODE_ID: &str = "node_id";
const K_HARD_STATE: &str = "hard_state";
const K_CONF_STATE: &str = "conf_state";
/// (index, term) of the last entry removed from the log (by compaction or a snapshot).
const K_TRUNCATED: &str = "truncated";
/// (index, term) of the last entry applied to the state machine tables.
const K_APPLIED: &str = "applied";

/// What a brand-new single-voter cluster starts from.
pub struct Bootstrap {
    pub id: u64,
    pub addr: String,
}

#[derive(Clone, Default)]
struct Cache {
    hs: HardState,
    cs: ConfState,
    truncated: (u64, u64),
    last_index: u64,
}

pub struct RedbStorage {
    db: Arc<Database>,
    cache: Cache,
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

impl RedbStorage {
    /// Opens the store in `db`, creating its tables if needed, and loads the cache.
    pub fn open(db: Arc<Database>) -> Result<Self, StorageError> {
        let txn = db.begin_write().map_err(StorageError::db)?;
        txn.open_table(LOG).map_err(StorageError::db)?;
        txn.open_table(META).map_err(StorageError::db)?;
        sm::create_tables(&txn)?;
        txn.commit().map_err(StorageError::db)?;

        let r = db.begin_read().map_err(StorageError::db)?;
        let meta = r.open_table(META).map_err(StorageError::db)?;
        let get = |k: &str| -> Result<Option<Vec<u8>>, StorageError> {
            Ok(meta.get(k).map_err(StorageError::db)?.map(|v| v.value().to_vec()))
        };
        let mut cache = Cache::default();
        if let Some(b) = get(K_HARD_STATE)? {
            cache.hs = parse("hard state", &b)?;
        }
        if let Some(b) = get(K_CONF_STATE)? {
            cache.cs = parse("conf state", &b)?;
        }
        if let Some(b) = get(K_TRUNCATED)? {
            cache.truncated = unpair(K_TRUNCATED, &b)?;
        }
        let log = r.open_table(LOG).map_err(StorageError::db)?;
        let last = log.last().map_err(StorageError::db)?.map(|(k, _)| k.value());
        cache.last_index = last.unwrap_or(0).max(cache.truncated.0);
        drop((meta, log, r));
        Ok(RedbStorage { db, cache })
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let r = self.db.begin_read().map_err(StorageError::db)?;
        let t = r.open_table(META).map_err(StorageError::db)?;
        let v = t.get(key).map_err(StorageError::db)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    /// The node id this data dir belongs to, if it was ever claimed.
    pub fn node_id(&self) -> Result<Option<u64>, StorageError> {
        match self.meta_get(K_NODE_ID)? {
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
        self.cache.last_index > 0 || !self.cache.cs.voters.is_empty() || !self.cache.cs.learners.is_empty()
    }

    /// Starts a new one-voter cluster: a snapshot at index 1, term 1 whose state records the
    /// first member. Starting from a snapshot (not index 0) means every later node is brought up
    /// to date by a snapshot that carries the membership, never by replaying a log that lacks it.
    pub fn bootstrap(&mut self, b: &Bootstrap) -> Result<(), StorageError> {
        self.claim(b.id)?;
        let txn = self.db.begin_write().map_err(StorageError::db)?;
        let mut meta = SnapshotMetadata::default();
        meta.index = 1;
        meta.term = 1;
        meta.mut_conf_state().voters = vec![b.id];
        self.stage_snapshot(&txn, &meta)?;
        let env = Envelope { id: 0, now_ms: 0, command: Command::SetMember { id: b.id, addr: b.addr.clone() } };
        blixard_core::state::apply(&mut TxnStore(&txn), 1, &env)?
            .map_err(|e| StorageError::Corrupt(format!("bootstrap member: {e}")))?;
        Self::stage_applied(&txn, 1, 1)?;
        txn.commit().map_err(StorageError::db)
    }

    /// (index, term) of the last applied entry.
    pub fn applied(&self) -> Result<(u64, u64), StorageError> {
        Ok(match self.meta_get(K_APPLIED)? {
            Some(b) => unpair(K_APPLIED, &b)?,
            None => (0, 0),
        })
    }

    pub fn first_index_cached(&self) -> u64 {
        self.cache.truncated.0 + 1
    }

    pub fn hard_state(&self) -> &HardState {
        &self.cache.hs
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.cache.cs
    }

    fn meta_put(txn: &WriteTransaction, key: &str, v: &[u8]) -> Result<(), StorageError> {
        txn.open_table(META).map_err(StorageError::db)?.insert(key, v).map_err(StorageError::db)?;
        Ok(())
    }

    pub fn stage_applied(txn: &WriteTransaction, index: u64, term: u64) -> Result<(), StorageError> {
        Self::meta_put(txn, K_APPLIED, &pair((index, term)))
    }

    pub fn stage_append(&mut self, txn: &WriteTransaction, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else { return Ok(()) };
        if first.index <= self.cache.truncated.0 || first.index > self.cache.last_index + 1 {
            return Err(StorageError::Corrupt(format!(
                "append at {} outside the log ({}..={})",
                first.index,
                self.cache.truncated.0 + 1,
                self.cache.last_index
            )));
        }
        let mut log = txn.open_table(LOG).map_err(StorageError::db)?;
        if first.index <= self.cache.last_index {
            log.retain_in(first.index.., |_, _| false).map_err(StorageError::db)?;
        }
        for e in entries {
            log.insert(e.index, bytes(e).as_slice()).map_err(StorageError::db)?;
        }
        self.cache.last_index = entries[entries.len() - 1].index;
        Ok(())
    }

    pub fn stage_hard_state(&mut self, txn: &WriteTransaction, hs: &HardState) -> Result<(), StorageError> {
        Self::meta_put(txn, K_HARD_STATE, &bytes(hs))?;
        self.cache.hs = hs.clone();
        Ok(())
    }

    pub fn stage_conf_state(&mut self, txn: &WriteTransaction, cs: &ConfState) -> Result<(), StorageError> {
        Self::meta_put(txn, K_CONF_STATE, &bytes(cs))?;
        self.cache.cs = cs.clone();
        Ok(())
    }

    /// Replaces the log by a snapshot's metadata (the caller installs the state data).
    pub fn stage_snapshot(&mut self, txn: &WriteTransaction, meta: &SnapshotMetadata) -> Result<(), StorageError> {
        txn.open_table(LOG).map_err(StorageError::db)?.retain(|_, _| false).map_err(StorageError::db)?;
        self.cache.truncated = (meta.index, meta.term);
        self.cache.last_index = meta.index;
        Self::meta_put(txn, K_TRUNCATED, &pair(self.cache.truncated))?;
        self.stage_conf_state(txn, meta.get_conf_state())?;
        let mut hs = self.cache.hs.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        self.stage_hard_state(txn, &hs)
    }

    /// Drops entries before `to` (so `first_index() == to`), keeping the term of `to - 1`.
    pub fn stage_compact(&mut self, txn: &WriteTransaction, to: u64) -> Result<(), StorageError> {
        if to <= self.cache.truncated.0 + 1 {
            return Ok(());
        }
        if to > self.cache.last_index + 1 {
            return Err(StorageError::Corrupt(format!("compact to {to} beyond last index {}", self.cache.last_index)));
        }
        let term = self.read_term(to - 1)?;
        let mut log = txn.open_table(LOG).map_err(StorageError::db)?;
        log.retain_in(..to, |_, _| false).map_err(StorageError::db)?;
        self.cache.truncated = (to - 1, term);
        Self::meta_put(txn, K_TRUNCATED, &pair(self.cache.truncated))
    }

    fn read_entry(&self, idx: u64) -> Result<Entry, StorageError> {
        let r = self.db.begin_read().map_err(StorageError::db)?;
        let t = r.open_table(LOG).map_err(StorageError::db)?;
        let b = t
            .get(idx)
            .map_err(StorageError::db)?
            .ok_or_else(|| StorageError::Corrupt(format!("log entry {idx} missing")))?;
        parse("log entry", b.value())
    }

    fn read_term(&self, idx: u64) -> Result<u64, StorageError> {
        if idx == self.cache.truncated.0 {
            return Ok(self.cache.truncated.1);
        }
        Ok(self.read_entry(idx)?.term)
    }

    /// A snapshot of the applied state: its data, index, term and conf state are consistent
    /// because they are read in one redb read transaction.
    pub fn make_snapshot(&self) -> Result<Snapshot, StorageError> {
        let view = ReadView::begin(&self.db)?;
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
}

impl raft::Storage for RedbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.cache.hs.clone(), self.cache.cs.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.cache.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.cache.last_index + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let max = max_size.into().unwrap_or(u64::MAX);
        let r = self.db.begin_read().map_err(StorageError::db)?;
        let t = r.open_table(LOG).map_err(StorageError::db)?;
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        for (expect, item) in (low..high).zip(t.range(low..high).map_err(StorageError::db)?) {
            let (k, v) = item.map_err(StorageError::db)?;
            if k.value() != expect {
                return Err(StorageError::Corrupt(format!("log entry {expect} missing")).into());
            }
            let e: Entry = parse("log entry", v.value())?;
            size += u64::from(e.compute_size());
            if !out.is_empty() && size > max {
                break;
            }
            out.push(e);
        }
        if out.is_empty() && low < high {
            return Err(StorageError::Corrupt(format!("log entries {low}..{high} missing")).into());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.cache.truncated.0 {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.cache.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        Ok(self.read_term(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.cache.truncated.0 + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.cache.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snap = self.make_snapshot()?;
        if snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snap)
    }
}

impl RedbStorage {
    fn one_txn(
        &mut self,
        f: impl FnOnce(&mut Self, &WriteTransaction) -> Result<(), StorageError>,
    ) -> Result<(), raft::Error> {
        let txn = self.db.begin_write().map_err(StorageError::db)?;
        f(self, &txn)?;
        txn.commit().map_err(StorageError::db)?;
        Ok(())
    }
}

impl LogStore for RedbStorage {
    fn append(&mut self, entries: &[Entry]) -> Result<(), raft::Error> {
        self.one_txn(|s, t| s.stage_append(t, entries))
    }

    fn set_hard_state(&mut self, hs: &HardState) -> Result<(), raft::Error> {
        self.one_txn(|s, t| s.stage_hard_state(t, hs))
    }

    fn set_conf_state(&mut self, cs: &ConfState) -> Result<(), raft::Error> {
        self.one_txn(|s, t| s.stage_conf_state(t, cs))
    }

    fn apply_snapshot(&mut self, snap: &Snapshot) -> Result<(), raft::Error> {
        if snap.get_metadata().index < self.cache.truncated.0 + 1 {
            return Err(raft::Error::Store(raft::StorageError::SnapshotOutOfDate));
        }
        self.one_txn(|s, t| s.stage_snapshot(t, snap.get_metadata()))
    }

    fn compact(&mut self, to: u64) -> Result<(), raft::Error> {
        self.one_txn(|s, t| s.stage_compact(t, to))
    }
}
