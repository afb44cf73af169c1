use std::path::PathBuf;

use thiserror::Error;

/// How an operator recovers a node whose data dir cannot be trusted.
pub const RECOVER_HINT: &str = "to recover, remove this node from the cluster (`blixard cluster leave --node-id N` \
     through another node), move its data dir away and start it again with --join, so it copies the state from \
     its peers";

/// The durable store failed or holds something it cannot read.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("database error")]
    Db(#[source] redb::Error),
    /// A file operation failed (full disk, I/O error, permissions): the message names the
    /// operation and file, the cause says why.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The log refuses writes after one of its writes or syncs failed (see `Wal::flush`).
    #[error("{0}")]
    Failed(String),
    /// Acknowledged data is damaged: the node must not start on it.
    #[error("{} is damaged at byte {offset}: {detail}; {RECOVER_HINT}", file.display())]
    Damaged { file: PathBuf, offset: u64, detail: String },
    /// The state store and the log do not belong together (one missing, replaced or copied from
    /// another data dir).
    #[error("{0}; {RECOVER_HINT}")]
    Mismatch(String),
    #[error("data dir belongs to node {found}, not node {expected}")]
    WrongNode { found: u64, expected: u64 },
    #[error(transparent)]
    State(#[from] blixard_core::StoreError),
}

impl StorageError {
    pub fn db(e: impl Into<redb::Error>) -> Self {
        StorageError::Db(e.into())
    }

    /// A closure for `map_err` on file operations.
    pub fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.to_path_buf();
        move |source| StorageError::Io { what, path, source }
    }
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
