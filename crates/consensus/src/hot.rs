//! The state machine's hottest rows kept in memory while a transaction is open.
//!
//! Every client command reads and writes the cluster clock (a `Meta` row) and its client's
//! session row (see `blixard_core::session`): two redb reads and two B-tree inserts per
//! command, on top of the command's own write, on every node. Those few rows are rewritten
//! over and over within one open transaction (which spans up to a second of commands), so
//! [`HotStore`] keeps the rows of the [`HOT`] tables it has read or written in memory and
//! writes them into the transaction once, when it is committed ([`HotRows::flush`], called by
//! the driver's only commit path). Nothing else reads the open transaction: readers see
//! committed state only, so the rows reach redb before anyone could miss them, and a crash
//! loses the open transaction with or without them (the log replays it).

use std::collections::BTreeMap;
use std::ops::Bound;

use blixard_core::store::{KvPairs, Page, PageBuilder, PageLimit};
use blixard_core::{ReadStore, Store, StoreError, Table};
use redb::WriteTransaction;

use crate::error::StorageError;
use crate::sm::TxnStore;

/// The tables whose rows are kept: few rows, each written by most commands.
pub(crate) const HOT: [Table; 2] = [Table::Meta, Table::Sessions];

/// What [`HOT`]'s tables hold in the open transaction, as far as read or written: a value, or
/// `None` for a row known absent (read as missing, or deleted). `dirty` rows differ from redb.
#[derive(Default)]
pub(crate) struct HotRows {
    tables: [BTreeMap<Vec<u8>, Row>; HOT.len()],
}

struct Row {
    value: Option<Vec<u8>>,
    dirty: bool,
}

fn slot(table: Table) -> Option<usize> {
    HOT.iter().position(|t| *t == table)
}

impl HotRows {
    /// Writes the changed rows into `txn` (before it is committed) and forgets every row.
    pub fn flush(&mut self, txn: &WriteTransaction) -> Result<(), StorageError> {
        if self.tables.iter().all(|t| t.is_empty()) {
            return Ok(());
        }
        let mut st = TxnStore::new(txn);
        for (i, rows) in self.tables.iter_mut().enumerate() {
            for (k, row) in std::mem::take(rows) {
                match (row.dirty, row.value) {
                    (false, _) => {}
                    (true, Some(v)) => st.put(HOT[i], &k, &v)?,
                    (true, None) => {
                        st.delete(HOT[i], &k)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A store whose [`HOT`] rows live in `rows` (see the module doc), the rest in `inner`.
pub(crate) struct HotStore<'a, S> {
    pub inner: S,
    rows: std::cell::RefCell<&'a mut HotRows>,
}

impl<'a, S: Store> HotStore<'a, S> {
    pub fn new(inner: S, rows: &'a mut HotRows) -> Self {
        HotStore { inner, rows: std::cell::RefCell::new(rows) }
    }

    /// The hot table's changes under `prefix` from `from` on (in key order), copied.
    fn changes(&self, i: usize, prefix: &[u8], from: Bound<&[u8]>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let rows = self.rows.borrow();
        let lo = match from {
            Bound::Unbounded => Bound::Included(prefix),
            b => b,
        };
        rows.tables[i]
            .range::<[u8], _>((lo, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, r)| r.dirty)
            .map(|(k, r)| (k.clone(), r.value.clone()))
            .collect()
    }

    /// `base` (pairs in key order, complete up to its last key) with `changes` applied.
    fn merge(base: KvPairs, changes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = base.into_iter().collect();
        for (k, v) in changes {
            match v {
                Some(v) => out.insert(k, v),
                None => out.remove(&k),
            };
        }
        out
    }
}

impl<S: Store> ReadStore for HotStore<'_, S> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(i) = slot(table) else { return self.inner.get(table, key) };
        if let Some(r) = self.rows.borrow().tables[i].get(key) {
            return Ok(r.value.clone());
        }
        let value = self.inner.get(table, key)?;
        self.rows.borrow_mut().tables[i].insert(key.to_vec(), Row { value: value.clone(), dirty: false });
        Ok(value)
    }

    // Scans of the hot tables are rare (no command scans them): merged from a base read long
    // enough that each change can hide at most one of its pairs and the result stays exact.
    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError> {
        let Some(i) = slot(table) else { return self.inner.scan(table, prefix, limit) };
        let changes = self.changes(i, prefix, Bound::Unbounded);
        let base = self.inner.scan(table, prefix, limit.saturating_add(changes.len()))?;
        Ok(Self::merge(base, changes).into_iter().take(limit).collect())
    }

    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let Some(i) = slot(table) else { return self.inner.scan_page(table, prefix, start_after, limit) };
        let changes = self.changes(i, prefix, start_after.map_or(Bound::Unbounded, Bound::Excluded));
        let wide = PageLimit { count: limit.count.saturating_add(changes.len() + 1), bytes: usize::MAX };
        let base = self.inner.scan_page(table, prefix, start_after, wide)?.pairs;
        let mut page = PageBuilder::new(prefix, limit);
        for (k, v) in Self::merge(base, changes) {
            if !page.offer(&k, &v) {
                break;
            }
        }
        Ok(page.finish())
    }
}

impl<S: Store> Store for HotStore<'_, S> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let Some(i) = slot(table) else { return self.inner.put(table, key, value) };
        let rows = &mut self.rows.get_mut().tables[i];
        match rows.get_mut(key) {
            Some(r) => {
                let v = r.value.get_or_insert_with(Vec::new);
                v.clear();
                v.extend_from_slice(value);
                r.dirty = true;
            }
            None => {
                rows.insert(key.to_vec(), Row { value: Some(value.to_vec()), dirty: true });
            }
        }
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let Some(i) = slot(table) else { return self.inner.delete(table, key) };
        let existed = self.get(table, key)?.is_some();
        if let Some(r) = self.rows.get_mut().tables[i].get_mut(key) {
            r.value = None;
            r.dirty = true;
        }
        Ok(existed)
    }

    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        if let Some(i) = slot(table) {
            self.rows.get_mut().tables[i].clear();
        }
        self.inner.clear(table)
    }

    fn tally(&mut self) -> Option<&mut blixard_core::scheduler::Tally> {
        self.inner.tally()
    }
}

impl<S: crate::apply::Sink> crate::apply::Sink for HotStore<'_, S> {
    fn set_applied(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        self.inner.set_applied(index, term)
    }

    fn txn(&self) -> Option<&WriteTransaction> {
        self.inner.txn()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::MemStore;
    use rand::{Rng, SeedableRng};

    /// Random puts, deletes, gets and scans on hot and plain tables read exactly as the same
    /// operations on one in-memory store, before the flush (through the hot rows) and after it
    /// (from redb alone), across several transactions.
    #[test]
    fn hot_rows_read_and_flush_as_a_plain_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let mut mem = MemStore::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let tables = [Table::Meta, Table::Sessions, Table::Kv];
        for round in 0..20 {
            let txn = db.begin_write().unwrap();
            crate::sm::create_tables(&txn).unwrap();
            let mut rows = HotRows::default();
            {
                let mut st = HotStore::new(TxnStore::new(&txn), &mut rows);
                for _ in 0..200 {
                    let t = tables[rng.gen_range(0..tables.len())];
                    let key = format!("k{}", rng.gen_range(0..12)).into_bytes();
                    match rng.gen_range(0..6) {
                        0 | 1 => {
                            let v = format!("v{}", rng.gen::<u16>()).into_bytes();
                            st.put(t, &key, &v).unwrap();
                            mem.put(t, &key, &v).unwrap();
                        }
                        2 => assert_eq!(st.delete(t, &key).unwrap(), mem.delete(t, &key).unwrap(), "{round} {t:?}"),
                        3 => assert_eq!(st.get(t, &key).unwrap(), mem.get(t, &key).unwrap(), "{round} {t:?}"),
                        4 => {
                            let (p, n) = ([b"k1".as_slice(), b"", b"k"][rng.gen_range(0..3)], rng.gen_range(0..6));
                            assert_eq!(st.scan(t, p, n).unwrap(), mem.scan(t, p, n).unwrap(), "{round} {t:?}");
                        }
                        _ => {
                            let after = format!("k{}", rng.gen_range(0..12)).into_bytes();
                            let after = rng.gen_bool(0.5).then_some(after.as_slice());
                            let limit = PageLimit { count: rng.gen_range(0..5), bytes: rng.gen_range(1..40) };
                            assert_eq!(
                                st.scan_page(t, b"k", after, limit).unwrap(),
                                mem.scan_page(t, b"k", after, limit).unwrap(),
                                "{round} {t:?} {after:?} {limit:?}"
                            );
                        }
                    }
                }
            }
            rows.flush(&txn).unwrap();
            txn.commit().unwrap();
            let view = crate::sm::ReadView::begin(&db).unwrap();
            for t in tables {
                assert_eq!(
                    view.scan(t, b"", usize::MAX).unwrap(),
                    mem.scan(t, b"", usize::MAX).unwrap(),
                    "{round} {t:?}"
                );
            }
        }
    }
}
