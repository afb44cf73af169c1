use thiserror::Error;

/// The durable store failed or holds something it cannot read.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("database error")]
    Db(#[source] redb::Error),
    #[error("corrupt record: {0}")]
    Corrupt(String),
    #[error("data dir belongs to node {found}, not node {expected}")]
    WrongNode { found: u64, expected: u64 },
    #[error(transparent)]
    State(#[from] blixard_core::StoreError),
}

impl StorageError {
    pub fn db(e: impl Into<redb::Error>) -> Self {
        StorageError::Db(e.into())
    }
}

impl From<StorageError> for raft::Error {
    fn from(e: StorageError) -> Self {
        raft::Error::Store(raft::StorageError::Other(Box::new(e)))
    }
}
