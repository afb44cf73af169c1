//! The Raft transport over gRPC: per-peer bounded queues drained by one sender task each, so a
//! slow or dead peer never blocks the Ready loop (its queue fills and messages are dropped; Raft
//! retries). Snapshots go their own way, streamed in chunks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use blixard_consensus::eraftpb::{Message, MessageType};
use blixard_consensus::{Handle, Transport};
use blixard_proto::v1::raft_transport_client::RaftTransportClient;
use blixard_proto::v1::raft_transport_server::RaftTransport;
use blixard_proto::v1::{RaftAck, RaftBatch, SnapshotChunk};
use protobuf::Message as _;
use redb::Database;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::pool::ChannelPool;

/// Messages queued per peer before new ones are dropped.
const QUEUE: usize = 4096;
/// Most bytes sent in one batch.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest message the transport accepts (a batch, or a snapshot chunk).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

struct Peer {
    tx: mpsc::Sender<Message>,
    reachable: Arc<AtomicBool>,
}

pub struct GrpcTransport {
    id: u64,
    /// Our advertised address, sent with every batch.
    addr: String,
    /// Addresses learned from incoming traffic, used only for ids the member table lacks.
    learned: Mutex<HashMap<u64, String>>,
    db: Arc<Database>,
    pool: Arc<ChannelPool>,
    peers: Mutex<HashMap<u64, Peer>>,
    handle: OnceLock<Handle>,
}

impl GrpcTransport {
    pub fn new(id: u64, addr: String, db: Arc<Database>, pool: Arc<ChannelPool>) -> Arc<Self> {
        Arc::new(GrpcTransport {
            id,
            addr,
            learned: Mutex::default(),
            db,
            pool,
            peers: Mutex::default(),
            handle: OnceLock::new(),
        })
    }

    fn learn(&self, id: u64, addr: &str) {
        if id != 0 && !addr.is_empty() {
            let mut l = self.learned.lock().unwrap_or_else(|e| e.into_inner());
            if l.get(&id).map(String::as_str) != Some(addr) {
                l.insert(id, addr.to_string());
            }
        }
    }

    /// Completes the wiring once the driver exists.
    pub fn set_handle(&self, h: Handle) {
        let _ = self.handle.set(h);
    }

    fn addr_of(&self, id: u64) -> Option<String> {
        let from_table = blixard_consensus::sm::ReadView::begin(&self.db)
            .ok()
            .and_then(|view| blixard_core::state::members(&view).ok())
            .and_then(|ms| ms.into_iter().find(|m| m.id == id).map(|m| m.addr));
        from_table.or_else(|| self.learned.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned())
    }

    fn peer_queue(self: &Arc<Self>, id: u64) -> mpsc::Sender<Message> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = peers.get(&id) {
            return p.tx.clone();
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let reachable = Arc::new(AtomicBool::new(true));
        tokio::spawn(run_peer(self.clone(), id, rx, reachable.clone()));
        peers.insert(id, Peer { tx: tx.clone(), reachable });
        tx
    }

    fn report_unreachable(&self, id: u64) {
        if let Some(h) = self.handle.get() {
            h.report_unreachable(id);
        }
    }
}

/// `Transport` needs `&self`; the peer tasks need an `Arc`. This wrapper gives both.
pub struct SharedTransport(pub Arc<GrpcTransport>);

impl Transport for SharedTransport {
    fn send(&self, msgs: Vec<Message>) {
        for m in msgs {
            if m.to == self.0.id {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                tokio::spawn(send_snapshot(self.0.clone(), m));
                continue;
            }
            let to = m.to;
            if self.0.peer_queue(to).try_send(m).is_err() {
                tracing::debug!(to, "peer queue full; dropping a message");
            }
        }
    }

    fn reachable(&self, id: u64) -> bool {
        let peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&id).is_some_and(|p| p.reachable.load(Ordering::Relaxed))
    }
}

/// Builds the next batch: `first` plus whatever else is queued, up to [`MAX_BATCH_BYTES`].
fn batch(t: &GrpcTransport, first: Message, rx: &mut mpsc::Receiver<Message>) -> RaftBatch {
    let first = first.write_to_bytes().unwrap_or_default();
    let mut size = first.len();
    let mut messages = vec![first];
    while size < MAX_BATCH_BYTES {
        match rx.try_recv() {
            Ok(m) => {
                let b = m.write_to_bytes().unwrap_or_default();
                size += b.len();
                messages.push(b);
            }
            Err(_) => break,
        }
    }
    RaftBatch { from: t.id, messages, from_addr: t.addr.clone() }
}

/// One peer's sender: a long-lived client stream of batches (no per-batch request set-up on
/// the write path), reopened with backoff when it breaks. While it is down, what queued up is
/// dropped: Raft resends what still matters.
async fn run_peer(t: Arc<GrpcTransport>, id: u64, mut rx: mpsc::Receiver<Message>, reachable: Arc<AtomicBool>) {
    let mut backoff = Duration::from_millis(20);
    while let Some(first) = rx.recv().await {
        let err = match t.addr_of(id) {
            None => format!("no address known for node {id}"),
            Some(addr) => match stream_to(&t, &addr, first, &mut rx, &reachable).await {
                Ok(()) => return, // the queue closed: the node is shutting down
                Err(e) => format!("{addr}: {e}"),
            },
        };
        if reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(peer = id, "peer unreachable: {err}");
        }
        t.report_unreachable(id);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
        while rx.try_recv().is_ok() {}
    }
}

/// Streams batches to `addr` until the stream breaks (`Err`) or the queue closes (`Ok`).
async fn stream_to(
    t: &GrpcTransport,
    addr: &str,
    first: Message,
    rx: &mut mpsc::Receiver<Message>,
    reachable: &AtomicBool,
) -> Result<(), String> {
    // Its own channel: the pooled ones carry a per-request timeout, which would cut a stream.
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, srx) = mpsc::channel::<RaftBatch>(64);
    let mut client =
        RaftTransportClient::new(ch).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
    let mut call = Box::pin(async move { client.stream(tokio_stream::wrappers::ReceiverStream::new(srx)).await });
    let mut next = Some(first);
    loop {
        let m = match next.take() {
            Some(m) => m,
            None => tokio::select! {
                m = rx.recv() => match m { Some(m) => m, None => return Ok(()) },
                r = &mut call => return Err(match r { Ok(_) => "stream closed".into(), Err(s) => s.message().to_string() }),
            },
        };
        let b = batch(t, m, rx);
        tokio::select! {
            sent = tx.send(b) => if sent.is_err() { return Err("stream closed".into()) },
            r = &mut call => return Err(match r { Ok(_) => "stream closed".into(), Err(s) => s.message().to_string() }),
        }
        if !reachable.swap(true, Ordering::Relaxed) {
            tracing::debug!(to = addr, "peer stream open");
        }
    }
}

async fn send_snapshot(t: Arc<GrpcTransport>, mut m: Message) {
    let to = m.to;
    let data = std::mem::take(&mut m.mut_snapshot().data);
    let header = m.write_to_bytes().unwrap_or_default();
    let mut chunks = Vec::with_capacity(data.len() / SNAPSHOT_CHUNK + 1);
    let mut rest = &data[..];
    let mut first = true;
    while first || !rest.is_empty() {
        let (piece, tail) = rest.split_at(rest.len().min(SNAPSHOT_CHUNK));
        chunks.push(SnapshotChunk {
            message: if first { header.clone() } else { Vec::new() },
            data: piece.to_vec(),
            from_addr: t.addr.clone(),
        });
        rest = tail;
        first = false;
    }
    let n = chunks.len();
    let ok = match t.addr_of(to).map(|a| t.pool.get(&a)) {
        Some(Ok(ch)) => {
            let r = RaftTransportClient::new(ch)
                .max_encoding_message_size(MAX_MESSAGE)
                .install_snapshot(tokio_stream::iter(chunks))
                .await;
            if let Err(e) = &r {
                tracing::warn!(to, "sending snapshot failed: {}", e.message());
            }
            r.is_ok()
        }
        _ => false,
    };
    tracing::info!(to, bytes = data.len(), chunks = n, ok, "snapshot sent");
    if let Some(h) = t.handle.get() {
        h.report_snapshot(to, ok);
    }
}

/// The receiving side: hands messages to the local driver.
pub struct RaftService {
    pub handle: Handle,
    pub transport: Arc<GrpcTransport>,
}

fn parse(b: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(b).map_err(|e| Status::invalid_argument(format!("invalid raft message: {e}")))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        let batch = req.into_inner();
        self.transport.learn(batch.from, &batch.from_addr);
        for b in batch.messages {
            self.handle.step(parse(&b)?);
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn stream(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            self.transport.learn(batch.from, &batch.from_addr);
            for b in batch.messages {
                self.handle.step(parse(&b)?);
            }
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn install_snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        let mut msg: Option<Message> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            if msg.is_none() {
                let m = parse(&chunk.message)?;
                self.transport.learn(m.from, &chunk.from_addr);
                msg = Some(m);
            }
            data.extend_from_slice(&chunk.data);
        }
        let mut m = msg.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        tracing::info!(from = m.from, bytes = data.len(), "received snapshot");
        m.mut_snapshot().data = data.into();
        self.handle.step(m);
        Ok(Response::new(RaftAck {}))
    }
}
