//! The receiving side of snapshots (the gRPC `RaftTransport` service): the chunks of one
//! snapshot are spooled to a file in the data dir as they arrive, never gathered in memory, up
//! to [`Limits::max_snapshot_bytes`](super::limits::Limits); one snapshot is received at a
//! time. Only a whole stream within the cap, whose state decodes, is read back and stepped
//! into Raft (which checks the message itself, see `blixard_consensus::validate`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use blixard_consensus::eraftpb::Message;
use blixard_consensus::Handle;
use blixard_proto::v1::raft_transport_server::RaftTransport;
use blixard_proto::v1::{RaftAck, SnapshotChunk};
use protobuf::Message as _;
use tonic::{Request, Response, Status, Streaming};

use super::PeerTransport;

pub struct SnapshotService {
    pub handle: Handle,
    pub transport: Arc<PeerTransport>,
}

fn parse(b: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(b).map_err(|e| Status::invalid_argument(format!("invalid raft message: {e}")))
}

/// The spool file of the snapshot being received; removed however the receive ends.
struct Spool {
    path: PathBuf,
    file: std::fs::File,
}

impl Spool {
    fn create(dir: &std::path::Path) -> Result<Spool, Status> {
        let io = |e: std::io::Error| Status::internal(format!("snapshot spool in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let path = dir.join("incoming.snap");
        let file =
            std::fs::File::options().create(true).truncate(true).read(true).write(true).open(&path).map_err(io)?;
        Ok(Spool { path, file })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tonic::async_trait]
impl RaftTransport for SnapshotService {
    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftAck>, Status> {
        let t = &self.transport;
        let cap = t.limits().max_snapshot_bytes;
        let Ok(_one) = t.snapshot_gate.try_lock() else {
            return Err(Status::resource_exhausted("another snapshot is being received; one at a time"));
        };
        // On a TLS port: the identity the connection's certificate names.
        #[cfg(not(madsim))]
        let cert = req.extensions().get::<crate::tls::PeerInfo>().and_then(|p| p.identity.clone());
        let mut stream = req.into_inner();
        let mut msg: Option<Message> = None;
        let mut spool = Spool::create(&t.spool_dir())?;
        let mut size: u64 = 0;
        while let Some(chunk) = stream.message().await? {
            if msg.is_none() {
                let m = parse(&chunk.message)?;
                #[cfg(not(madsim))]
                if let Some(id) = &cert {
                    match id {
                        blixard_tls::Identity::Node(n) if *n == m.from => {}
                        blixard_tls::Identity::Node(n) => {
                            t.drop_forged(*n, m.from, 1);
                            return Err(Status::permission_denied(format!(
                                "a snapshot from node {} on a connection of node {n}",
                                m.from
                            )));
                        }
                        _ => return Err(Status::permission_denied("only a node certificate may send snapshots")),
                    }
                }
                t.learn(m.from, &chunk.from_addr);
                msg = Some(m);
            }
            size += chunk.data.len() as u64;
            if size > cap {
                tracing::warn!(from = msg.as_ref().map(|m| m.from), cap, "refusing a snapshot larger than the cap");
                return Err(Status::resource_exhausted(format!(
                    "snapshot is larger than the {cap} bytes allowed (--max-snapshot-mib)"
                )));
            }
            spool
                .file
                .write_all(&chunk.data)
                .map_err(|e| Status::internal(format!("writing the snapshot spool: {e}")))?;
        }
        let mut m = msg.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        // Read back in one go (a blocking read of a local file, once per snapshot).
        let read = |f: &mut std::fs::File| -> std::io::Result<Vec<u8>> {
            use std::io::Seek;
            f.flush()?;
            f.seek(std::io::SeekFrom::Start(0))?;
            let mut data = Vec::with_capacity(size as usize);
            f.read_to_end(&mut data)?;
            Ok(data)
        };
        let data = read(&mut spool.file).map_err(|e| Status::internal(format!("reading the snapshot spool: {e}")))?;
        drop(spool);
        if let Err(e) = blixard_core::state::check_snapshot(&data) {
            tracing::warn!(from = m.from, "refusing a snapshot: {e}");
            return Err(Status::invalid_argument(format!("refused snapshot: {e}")));
        }
        tracing::info!(from = m.from, bytes = data.len(), "received snapshot");
        m.mut_snapshot().data = data.into();
        self.handle.step(m).await;
        Ok(Response::new(RaftAck {}))
    }
}
