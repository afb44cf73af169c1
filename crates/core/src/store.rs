//! The storage boundary of the state machine.
//!
//! To be correct, an implementation must: return exactly what was last `put` for a key; scan in
//! ascending byte order of keys; make every change of one `apply` visible atomically (the caller
//! groups them in one transaction). It must not reorder or drop writes.

use std::collections::BTreeMap;

/// The tables of the replicated state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Kv,
    Vms,
    Members,
    Nodes,
    /// Client sessions, by client id (see [`crate::session`]).
    Sessions,
    /// `(last active, client)`: the sessions in order of activity, for expiry.
    SessionTimes,
    /// Small values of the state machine itself (cluster time, counters).
    Meta,
}

impl Table {
    pub const ALL: [Table; 7] =
        [Table::Kv, Table::Vms, Table::Members, Table::Nodes, Table::Sessions, Table::SessionTimes, Table::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Table::Kv => "sm_kv",
            Table::Vms => "sm_vms",
            Table::Members => "sm_members",
            Table::Nodes => "sm_nodes",
            Table::Sessions => "sm_sessions",
            Table::SessionTimes => "sm_session_times",
            Table::Meta => "sm_meta",
        }
    }
}

/// The underlying storage failed. Not a result of the command: a node that sees this stops
/// applying, because carrying on would make it diverge from its peers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("state storage failed: {0}")]
pub struct StoreError(pub String);

pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

pub trait ReadStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` pairs whose key starts with `prefix`, in ascending key order.
    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError>;
}

pub trait Store: ReadStore {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes the key; tells whether it was there.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError>;
    /// Removes every key of the table (used when installing a snapshot).
    fn clear(&mut self, table: Table) -> Result<(), StoreError>;
}

/// An in-memory store for tests and simulation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemStore {
    tables: BTreeMap<Table, BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemStore {
    /// The state without the state machine's own bookkeeping (cluster time, counters): what a
    /// test compares to say a refused command "changed nothing".
    pub fn user_tables(&self) -> MemStore {
        let mut s = self.clone();
        s.tables.remove(&Table::Meta);
        s
    }
}

impl ReadStore for MemStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tables.get(&table).and_then(|t| t.get(key)).cloned())
    }

    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError> {
        let Some(t) = self.tables.get(&table) else { return Ok(Vec::new()) };
        Ok(t.range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl Store for MemStore {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tables.entry(table).or_default().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let Some(t) = self.tables.get_mut(&table) else { return Ok(false) };
        let existed = t.remove(key).is_some();
        if t.is_empty() {
            // An empty table and a missing one are the same state.
            self.tables.remove(&table);
        }
        Ok(existed)
    }

    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        self.tables.remove(&table);
        Ok(())
    }
}
