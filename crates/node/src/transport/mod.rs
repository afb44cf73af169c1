//! The Raft transport between nodes.
//!
//! Raft messages travel over one TCP connection per peer and direction, in the framing of
//! [`wire`], on the node's one port (the first byte of a connection tells a peer from a gRPC
//! client). The Ready loop writes each step's messages for a peer as one frame straight into
//! the socket when it can ([`link`]); the receiving side reads frames and steps each message
//! into the local driver. A slow or dead peer never blocks the Ready loop: its frames queue up
//! to a bound, then are dropped, and Raft resends.
//!
//! Snapshots go their own way: streamed in chunks over the gRPC `RaftTransport` service, on
//! their own connection, so a large snapshot never holds up heartbeats and appends.
//!
//! Why not gRPC for every message: a tonic client stream costs two task hand-offs on each side
//! of every hop (the body pipe and the HTTP/2 connection task, then the connection task and the
//! handler), which measured ~100 µs per hop on the benchmark machine; the direct write and one
//! reader task cost a fraction of that (docs/BENCHMARKS.md).

pub mod link;
pub mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use blixard_consensus::eraftpb::{Message, MessageType};
use blixard_consensus::{Handle, Transport};
use blixard_proto::v1::raft_transport_client::RaftTransportClient;
use blixard_proto::v1::raft_transport_server::RaftTransport;
use blixard_proto::v1::{RaftAck, SnapshotChunk};
use protobuf::Message as _;
use redb::Database;
use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::{Request, Response, Status, Streaming};

use crate::pool::ChannelPool;
use link::Link;

pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest gRPC message the snapshot service accepts (one chunk).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// How long an accepted peer connection may take to send its preamble.
const PREAMBLE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PeerTransport {
    id: u64,
    /// Our advertised address, sent in every connection's preamble.
    addr: String,
    /// Addresses learned from incoming connections, used only for ids the member table lacks.
    learned: Mutex<HashMap<u64, String>>,
    db: Arc<Database>,
    pool: Arc<ChannelPool>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    handle: OnceLock<Handle>,
    me: OnceLock<std::sync::Weak<PeerTransport>>,
    /// The node's runtime: link and snapshot tasks run there, not on the Ready loop's thread.
    #[cfg(not(madsim))]
    rt: tokio::runtime::Handle,
}

impl PeerTransport {
    /// `(peer, reachable, queued bytes)` of every peer this node has sent to, by id.
    pub fn peer_stats(&self) -> Vec<(u64, bool, usize)> {
        let links: Vec<(u64, Arc<Link>)> = {
            let l = self.links.lock().unwrap_or_else(|e| e.into_inner());
            l.iter().map(|(id, link)| (*id, link.clone())).collect()
        };
        let mut v: Vec<_> = links.into_iter().map(|(id, l)| (id, l.reachable(), l.queued_bytes())).collect();
        v.sort_unstable();
        v
    }

    pub fn new(id: u64, addr: String, db: Arc<Database>, pool: Arc<ChannelPool>) -> Arc<Self> {
        let t = Arc::new(PeerTransport {
            id,
            addr,
            learned: Mutex::default(),
            db,
            pool,
            links: Mutex::default(),
            handle: OnceLock::new(),
            me: OnceLock::new(),
            #[cfg(not(madsim))]
            rt: tokio::runtime::Handle::current(),
        });
        let _ = t.me.set(Arc::downgrade(&t));
        t
    }

    /// Runs a task on the node's runtime.
    pub fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        #[cfg(not(madsim))]
        self.rt.spawn(f);
        #[cfg(madsim)]
        tokio::spawn(f);
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

    fn member_addr(&self, id: u64) -> Option<String> {
        let from_table = blixard_consensus::sm::ReadView::begin(&self.db)
            .ok()
            .and_then(|view| blixard_core::state::members(&view).ok())
            .and_then(|ms| ms.into_iter().find(|m| m.id == id).map(|m| m.addr));
        from_table.or_else(|| self.learned.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned())
    }

    fn link(&self, id: u64) -> Option<Arc<Link>> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = links.get(&id) {
            return Some(l.clone());
        }
        let owner = self.me.get()?.upgrade()?;
        let l = Link::new();
        self.spawn(link::run(l.clone(), owner, id));
        links.insert(id, l.clone());
        Some(l)
    }

    /// Serves one accepted peer connection: reads its preamble, then steps every message of
    /// every frame into the driver, until the peer closes it or sends something malformed.
    pub async fn serve_peer<S: AsyncRead + Unpin>(self: Arc<Self>, stream: S) {
        let mut r = tokio::io::BufReader::with_capacity(256 * 1024, stream);
        let from = match tokio::time::timeout(PREAMBLE_TIMEOUT, read_preamble(&mut r)).await {
            Ok(Ok((from, addr))) => {
                self.learn(from, &addr);
                from
            }
            Ok(Err(e)) => {
                tracing::debug!("dropping a peer connection: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("dropping a peer connection: no preamble within {PREAMBLE_TIMEOUT:?}");
                return;
            }
        };
        let Some(handle) = self.handle.get().cloned() else { return };
        let mut body = Vec::new();
        loop {
            let mut prefix = [0u8; 4];
            if r.read_exact(&mut prefix).await.is_err() {
                return; // closed
            }
            let len = match wire::frame_len(prefix) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(peer = from, "closing a peer connection: {e}");
                    return;
                }
            };
            // Grown as the bytes arrive, not reserved up front: a frame's length alone, from
            // anyone who can connect, must not claim memory.
            if body.capacity() > 4 * 1024 * 1024 {
                body = Vec::new(); // do not keep a rare large frame's buffer
            }
            body.clear();
            match (&mut r).take(len as u64).read_to_end(&mut body).await {
                Ok(n) if n == len => {}
                _ => return, // closed mid-frame
            }
            match wire::decode_frame(&body) {
                Ok(msgs) => {
                    for m in msgs {
                        handle.step(m).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(peer = from, "closing a peer connection: {e}");
                    return;
                }
            }
        }
    }
}

async fn read_preamble<S: AsyncRead + Unpin>(r: &mut S) -> Result<(u64, String), String> {
    let mut head = [0u8; 18];
    r.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    let (from, n) = wire::preamble_head(&head).map_err(|e| e.to_string())?;
    let mut addr = vec![0u8; n];
    r.read_exact(&mut addr).await.map_err(|e| e.to_string())?;
    let addr = wire::preamble_addr(&addr).map_err(|e| e.to_string())?;
    Ok((from, addr))
}

impl link::Owner for PeerTransport {
    fn addr_of(&self, id: u64) -> Option<String> {
        self.member_addr(id)
    }

    fn me(&self) -> (u64, &str) {
        (self.id, &self.addr)
    }

    fn unreachable(&self, id: u64) {
        if let Some(h) = self.handle.get() {
            h.report_unreachable(id);
        }
    }
}

/// `Transport` for the driver; the links and the snapshot tasks need an `Arc`.
pub struct SharedTransport(pub Arc<PeerTransport>);

impl Transport for SharedTransport {
    fn send(&self, msgs: Vec<Message>) {
        // Frames per peer, in message order (the driver calls once per Ready step).
        let mut frames: Vec<(u64, wire::FrameBuilder)> = Vec::new();
        for m in msgs {
            if m.to == self.0.id {
                continue;
            }
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.0.spawn(send_snapshot(self.0.clone(), m));
                continue;
            }
            match frames.iter_mut().find(|(to, _)| *to == m.to) {
                Some((_, b)) => b.push(&m),
                None => {
                    let mut b = wire::FrameBuilder::default();
                    b.push(&m);
                    frames.push((m.to, b));
                }
            }
        }
        for (to, b) in frames {
            let Some(link) = self.0.link(to) else { continue };
            for f in b.finish() {
                link.send(f);
            }
        }
    }

    fn reachable(&self, id: u64) -> bool {
        let links = self.0.links.lock().unwrap_or_else(|e| e.into_inner());
        links.get(&id).is_some_and(|l| l.reachable())
    }
}

async fn send_snapshot(t: Arc<PeerTransport>, mut m: Message) {
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
    let ok = match t.member_addr(to).map(|a| t.pool.get(&a)) {
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

/// The receiving side of snapshots: reassembles the chunks and steps the message.
pub struct SnapshotService {
    pub handle: Handle,
    pub transport: Arc<PeerTransport>,
}

fn parse(b: &[u8]) -> Result<Message, Status> {
    Message::parse_from_bytes(b).map_err(|e| Status::invalid_argument(format!("invalid raft message: {e}")))
}

#[tonic::async_trait]
impl RaftTransport for SnapshotService {
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
        self.handle.step(m).await;
        Ok(Response::new(RaftAck {}))
    }
}
