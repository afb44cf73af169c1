//! The storage boundary of the state machine.
//!
//! To be correct, an implementation must: return exactly what was last `put` for a key; scan in
//! ascending byte order of keys; make every change of one `apply` visible atomically (the caller
//! groups them in one transaction). It must not reorder or drop writes.

use std::collections::BTreeMap;
use std::ops::Bound;

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
    /// `(node, VM name)`: the VMs placed on each node.
    Placements,
    /// `create index → VM name`: VMs waiting for capacity, oldest first.
    Pending,
    /// `slot → node id`: the nodes in a dense order the scheduler samples from.
    NodeSlots,
    /// `SHA-256 of a token's secret → token record` (see [`crate::state::tokens`]).
    Tokens,
    /// `submit index → task record`.
    Tasks,
    /// `submit index`: tasks waiting for capacity, oldest first.
    TaskQueue,
    /// `(node, submit index)`: the tasks with an open attempt on each node.
    TaskPlacements,
    /// `(finished index, submit index)`: finished tasks, oldest first (retention).
    TaskDone,
}

impl Table {
    pub const ALL: [Table; 15] = [
        Table::Kv,
        Table::Vms,
        Table::Members,
        Table::Nodes,
        Table::Sessions,
        Table::SessionTimes,
        Table::Meta,
        Table::Placements,
        Table::Pending,
        Table::NodeSlots,
        Table::Tokens,
        Table::Tasks,
        Table::TaskQueue,
        Table::TaskPlacements,
        Table::TaskDone,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Kv => "sm_kv",
            Table::Vms => "sm_vms",
            Table::Members => "sm_members",
            Table::Nodes => "sm_nodes",
            Table::Sessions => "sm_sessions",
            Table::SessionTimes => "sm_session_times",
            Table::Meta => "sm_meta",
            Table::Placements => "sm_placements",
            Table::Pending => "sm_pending",
            Table::NodeSlots => "sm_node_slots",
            Table::Tokens => "sm_tokens",
            Table::Tasks => "sm_tasks",
            Table::TaskQueue => "sm_task_queue",
            Table::TaskPlacements => "sm_task_placements",
            Table::TaskDone => "sm_task_done",
        }
    }
}

/// The underlying storage failed. Not a result of the command: a node that sees this stops
/// applying, because carrying on would make it diverge from its peers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("state storage failed: {0}")]
pub struct StoreError(pub String);

pub type KvPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// How big one page of a scan may get: at most `count` pairs, and no more key and value bytes
/// than `bytes`, except that a page always holds its first pair whatever its size (so a page
/// can hold the largest pair there is, and a scan always moves on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageLimit {
    pub count: usize,
    pub bytes: usize,
}

/// One page of a scan. `more` tells whether another matching pair follows the last one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub pairs: KvPairs,
    pub more: bool,
}

/// Fills a [`Page`] from pairs offered in key order, deciding before anything is copied, so
/// an implementation of [`ReadStore::scan_page`] never holds more than the page.
#[derive(Debug)]
pub struct PageBuilder<'a> {
    prefix: &'a [u8],
    limit: PageLimit,
    bytes: usize,
    page: Page,
}

impl<'a> PageBuilder<'a> {
    pub fn new(prefix: &'a [u8], limit: PageLimit) -> Self {
        PageBuilder { prefix, limit, bytes: 0, page: Page::default() }
    }

    /// The range to iterate: from just past `start_after` when that lies at or past the
    /// prefix's first key, else from the prefix itself.
    pub fn start(&self, start_after: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match start_after {
            Some(a) if a >= self.prefix => (Bound::Excluded(a), Bound::Unbounded),
            _ => (Bound::Included(self.prefix), Bound::Unbounded),
        }
    }

    /// Offers the next pair in key order. `false` means the scan is over: the key is past the
    /// prefix, or the page is full (then `more` is set and the pair is not taken).
    pub fn offer(&mut self, key: &[u8], value: &[u8]) -> bool {
        if !key.starts_with(self.prefix) {
            return false;
        }
        let size = key.len().saturating_add(value.len());
        let full = self.page.pairs.len() >= self.limit.count
            || (!self.page.pairs.is_empty() && self.bytes.saturating_add(size) > self.limit.bytes);
        if full {
            self.page.more = true;
            return false;
        }
        self.bytes += size;
        self.page.pairs.push((key.to_vec(), value.to_vec()));
        true
    }

    pub fn finish(self) -> Page {
        self.page
    }
}

pub trait ReadStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` pairs whose key starts with `prefix`, in ascending key order.
    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError>;
    /// One page of the pairs whose key starts with `prefix` and comes after `start_after`
    /// (exclusive; from the first when `None`), in ascending key order, within `limit`. To be
    /// correct, an implementation must read no pair past the page's end but the one that tells
    /// whether there are more, and copy none that the page does not hold ([`PageBuilder`]
    /// does both).
    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page, StoreError>;
}

pub trait Store: ReadStore {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes the key; tells whether it was there.
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError>;
    /// Removes every key of the table (used when installing a snapshot).
    fn clear(&mut self, table: Table) -> Result<(), StoreError>;
    /// Where the scheduler's counts go while commands apply into this store (`None`: not
    /// counted). Counting is all it does: nothing of it is stored.
    fn tally(&mut self) -> Option<&mut crate::scheduler::Tally> {
        None
    }
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

    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let mut page = PageBuilder::new(prefix, limit);
        if let Some(t) = self.tables.get(&table) {
            for (k, v) in t.range::<[u8], _>(page.start(start_after)) {
                if !page.offer(k, v) {
                    break;
                }
            }
        }
        Ok(page.finish())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn store(pairs: &[(&str, usize)]) -> MemStore {
        let mut s = MemStore::default();
        for (k, n) in pairs {
            s.put(Table::Kv, k.as_bytes(), &vec![b'v'; *n]).unwrap();
        }
        s
    }

    fn page(s: &MemStore, prefix: &str, after: Option<&str>, count: usize, bytes: usize) -> (Vec<String>, bool) {
        let p =
            s.scan_page(Table::Kv, prefix.as_bytes(), after.map(str::as_bytes), PageLimit { count, bytes }).unwrap();
        (p.pairs.into_iter().map(|(k, _)| String::from_utf8(k).unwrap()).collect(), p.more)
    }

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages_follow_each_other_exactly_by_count() {
        let s = store(&[("a", 1), ("b/1", 1), ("b/2", 1), ("b/3", 1), ("b/4", 1), ("c", 1)]);
        assert_eq!(page(&s, "b/", None, 2, usize::MAX), (strs(&["b/1", "b/2"]), true));
        assert_eq!(page(&s, "b/", Some("b/2"), 2, usize::MAX), (strs(&["b/3", "b/4"]), false), "exactly full, no more");
        assert_eq!(page(&s, "b/", Some("b/4"), 2, usize::MAX), (strs(&[]), false));
        // A continuation before the prefix starts at the prefix; one past it finds nothing.
        assert_eq!(page(&s, "b/", Some("a"), 10, usize::MAX), (strs(&["b/1", "b/2", "b/3", "b/4"]), false));
        assert_eq!(page(&s, "b/", Some("c"), 10, usize::MAX), (strs(&[]), false));
        // The continuation need not be a key that exists.
        assert_eq!(page(&s, "", Some("b/25"), 2, usize::MAX), (strs(&["b/3", "b/4"]), true));
        assert_eq!(page(&s, "", None, 0, usize::MAX), (strs(&[]), true));
    }

    #[test]
    fn pages_stop_at_the_byte_budget_but_always_hold_one_pair() {
        // Sizes count key and value: "a"+9 = 10, "b"+9 = 10, "c"+99 = 100.
        let s = store(&[("a", 9), ("b", 9), ("c", 99), ("d", 9)]);
        assert_eq!(page(&s, "", None, 10, 20), (strs(&["a", "b"]), true));
        assert_eq!(page(&s, "", None, 10, 19), (strs(&["a"]), true));
        assert_eq!(page(&s, "", Some("b"), 10, 20), (strs(&["c"]), true), "oversize pair alone");
        assert_eq!(page(&s, "", Some("c"), 10, 20), (strs(&["d"]), false));
        assert_eq!(page(&s, "", None, 10, 0), (strs(&["a"]), true));
        assert_eq!(page(&s, "", None, 10, 130), (strs(&["a", "b", "c", "d"]), false));
    }

    #[test]
    fn a_missing_table_is_an_empty_page() {
        let s = MemStore::default();
        assert_eq!(s.scan_page(Table::Vms, b"", None, PageLimit { count: 5, bytes: 5 }), Ok(Page::default()));
    }
}
