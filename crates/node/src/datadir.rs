//! The data dir: a redb file holding the state machine, and the Raft log's segment files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The simulated disk, for the simulation (see [`crate::NodeConfig::disk`]).
pub use blixard_consensus::simdisk::{Crash, SimDisk};
pub use blixard_consensus::wal::Disk;
use blixard_consensus::wal::SEGMENT_BYTES;
use blixard_consensus::{DiskStorage, StorageError};

pub const DB_FILE: &str = "blixard.redb";
pub const LOG_DIR: &str = "raft-log";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot create data dir {dir}")]
    Create {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {dir} is in use by another blixard process")]
    InUse { dir: PathBuf },
    #[error("data dir {dir} is corrupt or not a blixard data dir")]
    Corrupt {
        dir: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("data dir {dir} belongs to node {found}, not node {expected}; use --id {found} or another --data-dir")]
    WrongNode { dir: PathBuf, found: u64, expected: u64 },
    #[error("data dir {dir} cannot be used")]
    Storage {
        dir: PathBuf,
        #[source]
        source: StorageError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Backup(#[from] blixard_core::backup::BackupError),
    #[error("data dir {0} is not empty; restore into a new one")]
    NotEmpty(PathBuf),
    #[error("invalid --bind: {0}")]
    Addr(blixard_core::ValidationError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot restore into data dir {dir}")]
    Storage {
        dir: PathBuf,
        #[source]
        source: StorageError,
    },
}

/// Creates the data dir of a new one-node cluster of node `id` (serving at `addr`) from a
/// backup file's bytes. The whole file is checked first: a damaged, truncated or foreign one
/// is refused with nothing written; so is a data dir that is not new.
pub fn restore(dir: &Path, id: u64, addr: &str, backup: &[u8]) -> Result<blixard_core::backup::Header, RestoreError> {
    let (header, state) = blixard_core::backup::decode(backup)?;
    blixard_core::membership::validate_addr(addr).map_err(RestoreError::Addr)?;
    let mut probe = blixard_core::MemStore::default();
    blixard_core::state::import(&mut probe, state)
        .map_err(|e| RestoreError::Storage { dir: dir.into(), source: StorageError::State(e) })?;
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        return Err(RestoreError::NotEmpty(dir.into()));
    }
    let mut storage = open(dir, id)?;
    storage
        .restore(id, addr, state, header.index, header.term)
        .map_err(|source| RestoreError::Storage { dir: dir.into(), source })?;
    Ok(header)
}

/// Opens the data dir for node `id`, creating it when missing. Never wipes anything.
pub fn open(dir: &Path, id: u64) -> Result<DiskStorage, DataDirError> {
    open_on(dir, id, &Disk::Real)
}

/// [`open`], with the state store and the log on `disk` (the simulation's simulated disk; the
/// data dir itself is still created on the real one, for the node's other files).
pub fn open_on(dir: &Path, id: u64, disk: &Disk) -> Result<DiskStorage, DataDirError> {
    std::fs::create_dir_all(dir).map_err(|source| DataDirError::Create { dir: dir.into(), source })?;
    let corrupt = |e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => DataDirError::InUse { dir: dir.into() },
        source => DataDirError::Corrupt { dir: dir.into(), source },
    };
    let db = match disk {
        Disk::Real => redb::Database::create(dir.join(DB_FILE)).map_err(corrupt)?,
        Disk::Sim(sim) => {
            let backend =
                sim.backend(&dir.join(DB_FILE)).map_err(|source| DataDirError::Create { dir: dir.into(), source })?;
            redb::Database::builder().create_with_backend(backend).map_err(corrupt)?
        }
    };
    let storage = DiskStorage::open_on(Arc::new(db), disk.clone(), &dir.join(LOG_DIR), SEGMENT_BYTES)
        .map_err(|source| DataDirError::Storage { dir: dir.into(), source })?;
    match storage.node_id() {
        Ok(Some(found)) if found != id => Err(DataDirError::WrongNode { dir: dir.into(), found, expected: id }),
        Ok(_) => Ok(storage),
        Err(source) => Err(DataDirError::Storage { dir: dir.into(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_is_not_redb_is_reported_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let e = open(dir.path(), 1).err().expect("must fail");
        assert!(matches!(e, DataDirError::Corrupt { .. }), "{e}");
    }

    #[test]
    fn a_dir_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1).unwrap();
        s.claim(1).unwrap();
        drop(s);
        let e = open(dir.path(), 2).err().expect("must fail");
        assert_eq!(
            e.to_string(),
            format!(
                "data dir {} belongs to node 1, not node 2; use --id 1 or another --data-dir",
                dir.path().display()
            )
        );
    }

    /// A data dir that ran: node 1 bootstrapped in it.
    fn used_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut s = open(dir.path(), 1).unwrap();
        s.bootstrap(&blixard_consensus::Bootstrap { id: 1, addr: "127.0.0.1:1".into() }).unwrap();
        dir
    }

    fn refused(dir: &Path) -> String {
        let e = open(dir, 1).err().expect("must be refused");
        crate::status::chain(&e)
    }

    #[test]
    fn a_missing_state_store_is_refused_not_started_empty() {
        let dir = used_dir();
        std::fs::remove_file(dir.path().join(DB_FILE)).unwrap();
        let e = refused(dir.path());
        assert!(e.contains("has no state store") && e.contains("--join"), "{e}");
    }

    #[test]
    fn a_state_store_from_another_data_dir_is_refused() {
        let (a, b) = (used_dir(), used_dir());
        std::fs::copy(b.path().join(DB_FILE), a.path().join(DB_FILE)).unwrap();
        let e = refused(a.path());
        assert!(e.contains("belong to different data dirs"), "{e}");
    }

    #[test]
    fn a_missing_raft_log_is_refused() {
        let dir = used_dir();
        std::fs::remove_dir_all(dir.path().join(LOG_DIR)).unwrap();
        let e = refused(dir.path());
        assert!(e.contains("has no raft log"), "{e}");
    }

    #[test]
    fn a_dir_open_elsewhere_is_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let _s = open(dir.path(), 1).unwrap();
        assert!(matches!(open(dir.path(), 1), Err(DataDirError::InUse { .. })));
    }
}
