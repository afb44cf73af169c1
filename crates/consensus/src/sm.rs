//! The core state machine's storage, over redb tables (one per [`Table`]).

use blixard_core::store::{KvPairs, PageBuilder};
use blixard_core::{Page, PageLimit, ReadStore, Store, StoreError, Table};
use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

fn def(t: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

/// Creates every state table, so readers never see "table does not exist".
pub fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    for t in Table::ALL {
        txn.open_table(def(t)).map_err(err)?;
    }
    Ok(())
}

/// The state machine's view of one write transaction: `apply` writes into it and the caller
/// commits it. Tables stay open for the life of the view (opening one per operation would cost
/// two B-tree operations on redb's table of tables each time).
pub struct TxnStore<'a> {
    txn: &'a WriteTransaction,
    open: [Option<redb::Table<'a, &'static [u8], &'static [u8]>>; Table::ALL.len()],
    /// The scheduler's counts of what applied into it (for the node's metrics).
    pub(crate) tally: blixard_core::scheduler::Tally,
}

impl<'a> TxnStore<'a> {
    pub fn new(txn: &'a WriteTransaction) -> Self {
        TxnStore { txn, open: Default::default(), tally: Default::default() }
    }

    pub fn txn(&self) -> &'a WriteTransaction {
        self.txn
    }

    fn slot(table: Table) -> usize {
        Table::ALL.iter().position(|t| *t == table).unwrap_or(0)
    }

    fn table(&mut self, table: Table) -> Result<&mut redb::Table<'a, &'static [u8], &'static [u8]>, StoreError> {
        let slot = &mut self.open[Self::slot(table)];
        if slot.is_none() {
            *slot = Some(self.txn.open_table(def(table)).map_err(err)?);
        }
        slot.as_mut().ok_or_else(|| StoreError("table not open".into()))
    }
}

fn scan_table(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
    limit: usize,
) -> Result<KvPairs, StoreError> {
    let mut out = Vec::new();
    for item in t.range::<&[u8]>(prefix..).map_err(err)? {
        if out.len() >= limit {
            break;
        }
        let (k, v) = item.map_err(err)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push((k.value().to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// Reads keys and values in place (redb hands out borrowed pages): only what the page takes is
/// copied.
fn scan_page_table(
    t: &impl ReadableTable<&'static [u8], &'static [u8]>,
    prefix: &[u8],
    start_after: Option<&[u8]>,
    limit: PageLimit,
) -> Result<Page, StoreError> {
    let mut page = PageBuilder::new(prefix, limit);
    for item in t.range::<&[u8]>(page.start(start_after)).map_err(err)? {
        let (k, v) = item.map_err(err)?;
        if !page.offer(k.value(), v.value()) {
            break;
        }
    }
    Ok(page.finish())
}

impl ReadStore for TxnStore<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let get = |t: &redb::Table<'_, &'static [u8], &'static [u8]>| {
            Ok(t.get(key).map_err(err)?.map(|v| v.value().to_vec()))
        };
        match &self.open[Self::slot(table)] {
            Some(t) => get(t),
            None => get(&self.txn.open_table(def(table)).map_err(err)?),
        }
    }

    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError> {
        match &self.open[Self::slot(table)] {
            Some(t) => scan_table(t, prefix, limit),
            None => scan_table(&self.txn.open_table(def(table)).map_err(err)?, prefix, limit),
        }
    }

    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        match &self.open[Self::slot(table)] {
            Some(t) => scan_page_table(t, prefix, start_after, limit),
            None => scan_page_table(&self.txn.open_table(def(table)).map_err(err)?, prefix, start_after, limit),
        }
    }
}

impl Store for TxnStore<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.table(table)?.insert(key, value).map_err(err)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        let existed = self.table(table)?.remove(key).map_err(err)?.is_some();
        Ok(existed)
    }

    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        self.open[Self::slot(table)] = None;
        self.txn.delete_table(def(table)).map_err(err)?;
        self.txn.open_table(def(table)).map_err(err)?;
        Ok(())
    }

    fn tally(&mut self) -> Option<&mut blixard_core::scheduler::Tally> {
        Some(&mut self.tally)
    }
}

/// A consistent read-only view of the state (one redb read transaction).
pub struct ReadView(pub ReadTransaction);

impl ReadView {
    pub fn begin(db: &redb::Database) -> Result<Self, StoreError> {
        Ok(ReadView(db.begin_read().map_err(err)?))
    }
}

impl ReadStore for ReadView {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let t = self.0.open_table(def(table)).map_err(err)?;
        let v = t.get(key).map_err(err)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError> {
        let t = self.0.open_table(def(table)).map_err(err)?;
        scan_table(&t, prefix, limit)
    }

    fn scan_page(
        &self,
        table: Table,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
    ) -> Result<Page, StoreError> {
        let t = self.0.open_table(def(table)).map_err(err)?;
        scan_page_table(&t, prefix, start_after, limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_core::MemStore;

    /// redb's pages are exactly the in-memory store's, through a write transaction and a read view.
    #[test]
    fn pages_match_the_in_memory_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("t.redb")).unwrap();
        let mut mem = MemStore::default();
        let keys = ["a", "b/1", "b/2", "b/3", "c", "d"];
        let txn = db.begin_write().unwrap();
        {
            create_tables(&txn).unwrap();
            let mut store = TxnStore::new(&txn);
            for (i, k) in keys.iter().enumerate() {
                let v = vec![b'v'; i * 10];
                store.put(Table::Kv, k.as_bytes(), &v).unwrap();
                mem.put(Table::Kv, k.as_bytes(), &v).unwrap();
            }
            type Case<'a> = (&'a [u8], Option<&'a [u8]>, usize, usize);
            let cases: [Case; 6] = [
                (b"", None, 2, usize::MAX),
                (b"b/", None, 2, usize::MAX),
                (b"b/", Some(b"b/2"), 5, usize::MAX),
                (b"", Some(b"a"), 10, 25),
                (b"", Some(b"c"), 10, 1),
                (b"b/", Some(b"c"), 10, 100),
            ];
            for (prefix, after, count, bytes) in cases {
                let limit = PageLimit { count, bytes };
                let want = mem.scan_page(Table::Kv, prefix, after, limit).unwrap();
                assert_eq!(
                    store.scan_page(Table::Kv, prefix, after, limit).unwrap(),
                    want,
                    "{prefix:?} {after:?} {limit:?}"
                );
            }
        }
        txn.commit().unwrap();
        let view = ReadView::begin(&db).unwrap();
        let limit = PageLimit { count: 3, bytes: 45 };
        for after in [None, Some(&b"b/1"[..]), Some(b"b/3")] {
            assert_eq!(view.scan_page(Table::Kv, b"", after, limit), mem.scan_page(Table::Kv, b"", after, limit));
        }
    }
}
