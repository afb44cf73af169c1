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

/// Batches queued on a peer's stream before new ones are dropped.
const QUEUE: usize = 1024;
/// Most bytes sent in one batch.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest message the transport accepts (a batch, or a snapshot chunk).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Batches queued for a peer while its stream is (re)opening, before new ones are dropped.
const PENDING: usize = 64;

/// One peer's outgoing side. The Ready loop hands each Ready's messages for the peer, as one
/// batch, straight to the open stream's queue (no task in between); a connection task only
/// opens and reopens the stream.
struct Peer {
    state: Mutex<PeerState>,
    wake: tokio::sync::Notify,
    reachable: AtomicBool,
}

#[derive(Default)]
struct PeerState {
    /// The open stream's queue.
    stream: Option<mpsc::Sender<RaftBatch>>,
    /// Batches waiting for a stream (the oldest dropped past [`PENDING`]: Raft resends).
    pending: std::collections::VecDeque<RaftBatch>,
}

pub struct GrpcTransport {
    id: u64,
    /// Our advertised address, sent with every batch.
    addr: String,
    /// Addresses learned from incoming traffic, used only for ids the member table lacks.
    learned: Mutex<HashMap<u64, String>>,
    db: Arc<Database>,
    pool: Arc<ChannelPool>,
    peers: Mutex<HashMap<u64, Arc<Peer>>>,
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

    fn peer(self: &Arc<Self>, id: u64) -> Arc<Peer> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = peers.get(&id) {
            return p.clone();
        }
        let p = Arc::new(Peer {
            state: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            reachable: AtomicBool::new(true),
        });
        tokio::spawn(run_peer(self.clone(), id, p.clone()));
        peers.insert(id, p.clone());
        p
    }

    fn report_unreachable(&self, id: u64) {
        if let Some(h) = self.handle.get() {
            h.report_unreachable(id);
        }
    }

    /// Queues one batch for `to`: onto its open stream, or to wait for one. Never waits.
    fn enqueue(self: &Arc<Self>, to: u64, batch: RaftBatch) {
        let peer = self.peer(to);
        let mut st = peer.state.lock().unwrap_or_else(|e| e.into_inner());
        let batch = match &st.stream {
            Some(tx) => match tx.try_send(batch) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!(to, "peer stream full; dropping a batch");
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(b)) => {
                    st.stream = None;
                    b
                }
            },
            None => batch,
        };
        if st.pending.len() >= PENDING {
            st.pending.pop_front();
        }
        st.pending.push_back(batch);
        drop(st);
        peer.wake.notify_one();
    }
}

/// `Transport` needs `&self`; the peer tasks need an `Arc`. This wrapper gives both.
pub struct SharedTransport(pub Arc<GrpcTransport>);

impl Transport for SharedTransport {
    fn send(&self, msgs: Vec<Message>) {
        // One batch per peer per call (the driver calls once per Ready step), in message order.
        let mut batches: Vec<(u64, usize, Vec<Vec<u8>>)> = Vec::new();
        for m in msgs {
            if m.to == self.0.id {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                tokio::spawn(send_snapshot(self.0.clone(), m));
                continue;
            }
            let b = m.write_to_bytes().unwrap_or_default();
            // A batch stays well under the receiver's message limit.
            match batches.iter_mut().rev().find(|(to, size, _)| *to == m.to && size + b.len() <= MAX_BATCH_BYTES) {
                Some((_, size, v)) => {
                    *size += b.len();
                    v.push(b);
                }
                None => batches.push((m.to, b.len(), vec![b])),
            }
        }
        for (to, _, messages) in batches {
            self.0.enqueue(to, RaftBatch { from: self.0.id, messages, from_addr: self.0.addr.clone() });
        }
    }

    fn reachable(&self, id: u64) -> bool {
        let peers = self.0.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(&id).is_some_and(|p| p.reachable.load(Ordering::Relaxed))
    }
}

/// One peer's connection task: when there is something to send, opens a long-lived client
/// stream (no per-batch request set-up on the write path) and hands its queue to the senders;
/// reopens it with backoff when it breaks. Batches queued while it is down wait (a bounded
/// number); Raft resends whatever was dropped.
async fn run_peer(t: Arc<GrpcTransport>, id: u64, peer: Arc<Peer>) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let has_pending = !peer.state.lock().unwrap_or_else(|e| e.into_inner()).pending.is_empty();
        if !has_pending {
            peer.wake.notified().await;
        }
        let err = match t.addr_of(id) {
            None => format!("no address known for node {id}"),
            Some(addr) => match stream_to(&addr, &peer).await {
                Ok(()) => {
                    backoff = Duration::from_millis(20);
                    format!("{addr}: stream closed")
                }
                Err(e) => format!("{addr}: {e}"),
            },
        };
        if peer.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(peer = id, "peer unreachable: {err}");
        }
        t.report_unreachable(id);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Opens a stream to `addr`, publishes its queue (after what was pending), and waits until the
/// stream ends.
async fn stream_to(addr: &str, peer: &Peer) -> Result<(), String> {
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
    let (tx, rx) = mpsc::channel::<RaftBatch>(QUEUE);
    {
        let mut st = peer.state.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(b) = st.pending.pop_front() {
            let _ = tx.try_send(b);
        }
        st.stream = Some(tx);
    }
    if !peer.reachable.swap(true, Ordering::Relaxed) {
        tracing::info!(to = addr, "peer reachable again");
    }
    let mut client =
        RaftTransportClient::new(ch).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE);
    let r = client.stream(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    peer.state.lock().unwrap_or_else(|e| e.into_inner()).stream = None;
    match r {
        Ok(_) => Ok(()),
        Err(s) => Err(s.message().to_string()),
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
