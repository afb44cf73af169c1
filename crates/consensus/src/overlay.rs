//! Where the state machine applies while a checkpoint is being made durable in the background.
//!
//! redb has one writer, and a durable commit holds it while it writes out every page the
//! non-durable commits since the last checkpoint dirtied, and syncs (~150 ms once per ~400,000
//! small writes here). So a checkpoint commits the open transaction without an fsync (it is then
//! visible to readers), and a thread of its own makes it durable with an empty durable commit;
//! meanwhile the Ready loop applies on top of a read view taken right after that commit, into an
//! in-memory [`Overlay`] of the writes since. When the durable commit is done, the overlay is
//! written into a new transaction and the log is compacted. Entries applied into the overlay are
//! durable in the log (committed on a majority) like any other applied entry, so a crash loses
//! nothing: the log is compacted only after the durable commit.

use std::collections::BTreeMap;
use std::ops::Bound;

use blixard_core::store::{KvPairs, Page, PageBuilder, PageLimit};
use blixard_core::{ReadStore, Store, StoreError, Table};

use crate::sm::ReadView;

/// The state changes since a read view: a value, or `None` for a deleted key.
#[derive(Default)]
pub(crate) struct Overlay {
    pub writes: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>>,
    /// The last entry applied into it: `(index, term)`.
    pub applied: Option<(u64, u64)>,
}

impl Overlay {
    pub fn len(&self) -> usize {
        self.writes.len()
    }
}

/// The state as the read view plus the overlay.
pub(crate) struct OverlayStore<'a> {
    pub base: &'a ReadView,
    pub overlay: &'a mut Overlay,
    /// The scheduler's counts of what applied into it (for the node's metrics).
    pub tally: blixard_core::scheduler::Tally,
}

impl OverlayStore<'_> {
    /// The overlay's entries of `table` from `from` on whose keys start with `prefix`.
    fn changes<'b>(
        ov: &'b Overlay,
        table: Table,
        prefix: &'b [u8],
        from: Bound<Vec<u8>>,
    ) -> impl Iterator<Item = (&'b [u8], &'b Option<Vec<u8>>)> + 'b {
        let lo = match from {
            Bound::Included(k) => Bound::Included((table, k)),
            Bound::Excluded(k) => Bound::Excluded((table, k)),
            Bound::Unbounded => Bound::Included((table, Vec::new())),
        };
        ov.writes
            .range((lo, Bound::Unbounded))
            .take_while(move |((t, k), _)| *t == table && k.starts_with(prefix))
            .map(|((_, k), v)| (k.as_slice(), v))
    }

    /// Every pair of `table` under `prefix` from `from` on, base and overlay merged in key
    /// order, until `keep` says stop.
    fn merged(
        &self,
        table: Table,
        prefix: &[u8],
        from: Bound<Vec<u8>>,
        base_limit: usize,
        mut keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let base: KvPairs = match &from {
            Bound::Excluded(a) => {
                // The base pages from just past `a`.
                let limit = PageLimit { count: base_limit, bytes: usize::MAX };
                self.base.scan_page(table, prefix, Some(a), limit)?.pairs
            }
            _ => self.base.scan(table, prefix, base_limit)?,
        };
        let mut changes = Self::changes(self.overlay, table, prefix, from).peekable();
        let mut base = base.into_iter().peekable();
        loop {
            let next = match (base.peek(), changes.peek()) {
                (None, None) => return Ok(()),
                (Some((bk, _)), Some((ck, _))) if bk.as_slice() == *ck => {
                    base.next();
                    changes.next().and_then(|(k, v)| v.as_ref().map(|v| (k.to_vec(), v.clone())))
                }
                (Some((bk, _)), Some((ck, _))) if bk.as_slice() > *ck => {
                    changes.next().and_then(|(k, v)| v.as_ref().map(|v| (k.to_vec(), v.clone())))
                }
                (Some(_), _) => base.next(),
                (None, Some(_)) => changes.next().and_then(|(k, v)| v.as_ref().map(|v| (k.to_vec(), v.clone()))),
            };
            if let Some((k, v)) = next {
                if !keep(&k, &v) {
                    return Ok(());
                }
            }
        }
    }
}

impl ReadStore for OverlayStore<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.writes.get(&(table, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(table, key),
        }
    }

    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError> {
        // Each change can hide at most one base pair: read that many more from the base.
        let extra = Self::changes(self.overlay, table, prefix, Bound::Unbounded).count();
        let mut out = Vec::new();
        self.merged(table, prefix, Bound::Unbounded, limit.saturating_add(extra), |k, v| {
            if out.len() >= limit {
                return false;
            }
            out.push((k.to_vec(), v.to_vec()));
            true
        })?;
        Ok(out)
    }

    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let from = start_after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.to_vec()));
        let extra = Self::changes(self.overlay, table, prefix, from.clone()).count();
        let mut page = PageBuilder::new(prefix, limit);
        self.merged(table, prefix, from, limit.count.saturating_add(extra + 1), |k, v| page.offer(k, v))?;
        Ok(page.finish())
    }
}

impl Store for OverlayStore<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.overlay.writes.insert((table, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let existed = self.get(table, key)?.is_some();
        self.overlay.writes.insert((table, key.to_vec()), None);
        Ok(existed)
    }

    fn clear(&mut self, _table: Table) -> Result<(), StoreError> {
        // Only a snapshot install clears tables, and it waits for the checkpoint first.
        Err(StoreError("a table cannot be cleared while a checkpoint is being made durable".into()))
    }

    fn tally(&mut self) -> Option<&mut blixard_core::scheduler::Tally> {
        Some(&mut self.tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::MemStore;

    /// The overlay on a read view reads exactly as the same writes applied to one store.
    #[test]
    fn reads_through_the_overlay_match_a_plain_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let mut mem = MemStore::default();
        let txn = db.begin_write().unwrap();
        crate::sm::create_tables(&txn).unwrap();
        {
            let mut st = crate::sm::TxnStore::new(&txn);
            for k in ["a", "b/1", "b/2", "b/4", "c"] {
                st.put(Table::Kv, k.as_bytes(), b"base").unwrap();
                mem.put(Table::Kv, k.as_bytes(), b"base").unwrap();
            }
        }
        txn.commit().unwrap();
        let view = ReadView::begin(&db).unwrap();
        let mut ov = Overlay::default();
        let mut st = OverlayStore { base: &view, overlay: &mut ov, tally: Default::default() };
        for (k, v) in [("b/2", None), ("b/3", Some("new")), ("b/1", Some("changed")), ("d", Some("new")), ("zz", None)]
        {
            match v {
                Some(v) => {
                    st.put(Table::Kv, k.as_bytes(), v.as_bytes()).unwrap();
                    mem.put(Table::Kv, k.as_bytes(), v.as_bytes()).unwrap();
                }
                None => assert_eq!(
                    st.delete(Table::Kv, k.as_bytes()).unwrap(),
                    mem.delete(Table::Kv, k.as_bytes()).unwrap()
                ),
            }
        }
        for key in ["a", "b/1", "b/2", "b/3", "d", "zz"] {
            assert_eq!(
                st.get(Table::Kv, key.as_bytes()).unwrap(),
                mem.get(Table::Kv, key.as_bytes()).unwrap(),
                "{key}"
            );
        }
        for (prefix, limit) in [("", 100), ("b/", 100), ("b/", 2), ("", 3), ("x", 5)] {
            assert_eq!(
                st.scan(Table::Kv, prefix.as_bytes(), limit).unwrap(),
                mem.scan(Table::Kv, prefix.as_bytes(), limit).unwrap(),
                "{prefix:?} {limit}"
            );
        }
        let limit = PageLimit { count: 2, bytes: usize::MAX };
        for after in [None, Some(&b"a"[..]), Some(&b"b/1"[..]), Some(&b"b/3"[..])] {
            assert_eq!(
                st.scan_page(Table::Kv, b"", after, limit).unwrap(),
                mem.scan_page(Table::Kv, b"", after, limit).unwrap(),
                "{after:?}"
            );
        }
    }
}
