//! `BackupService`: a consistent copy of the replicated state for `blixard backup save`.
//!
//! The copy is taken after a linearizable read barrier, so it holds every write acknowledged
//! before the request, and from one redb read transaction, so its state, index and term agree.
//! It is sent as the bytes of a backup file (`blixard_core::backup`), in chunks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blixard_consensus::Handle;
use blixard_proto::v1::{self, BackupChunk};
use tonic::{Request, Response, Status};

use crate::status;

/// Bytes per streamed chunk.
const CHUNK: usize = 1024 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Backups {
    pub raft: Handle,
}

type Chunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl v1::backup_service_server::BackupService for Backups {
    type SaveStream = Chunks;

    async fn save(&self, _req: Request<v1::BackupRequest>) -> Result<Response<Chunks>, Status> {
        self.raft.read_index(READ_TIMEOUT).await.map_err(|e| status::propose(e, None))?;
        let snap = blixard_consensus::storage::snapshot_of(self.raft.db())
            .map_err(|e| Status::internal(format!("cannot read the state: {}", status::chain(&e))))?;
        let meta = snap.get_metadata();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let file = blixard_core::backup::encode(meta.index, meta.term, now, self.raft.status().id, &snap.data);
        tracing::info!(index = meta.index, bytes = file.len(), "backup taken");
        let chunks: Vec<Result<BackupChunk, Status>> =
            file.chunks(CHUNK).map(|c| Ok(BackupChunk { data: c.to_vec() })).collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
