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

pub mod limits;
pub mod link;
mod snapshot;
pub mod wire;

pub use limits::Limits;
pub use snapshot::SnapshotService;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use blixard_consensus::eraftpb::{Message, MessageType};
use blixard_consensus::{Handle, Transport};
use blixard_proto::v1::raft_transport_client::RaftTransportClient;
use blixard_proto::v1::SnapshotChunk;
use protobuf::Message as _;
use redb::Database;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::pool::ChannelPool;
use link::Link;

pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest gRPC message the snapshot service accepts (one chunk).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Frame bytes all peer connections together may hold while a frame arrives: a frame waits
/// for room before it is read, so many connections announcing large frames claim no more.
const FRAME_BUDGET: usize = 4 * wire::MAX_FRAME;

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
    /// Mutual TLS for outgoing links, when the node has a TLS dir.
    #[cfg(not(madsim))]
    tls: OnceLock<Arc<crate::tls::NodeTls>>,
    /// Raft messages dropped because their `from` is not the node their connection's
    /// certificate names.
    forged: std::sync::atomic::AtomicU64,
    limits: OnceLock<Limits>,
    /// Where an incoming snapshot is spooled (see [`snapshot`]).
    spool: OnceLock<std::path::PathBuf>,
    /// Held while a snapshot is received: one at a time.
    snapshot_gate: tokio::sync::Mutex<()>,
    conns: limits::ConnCounter,
    /// Room for frames being read (see [`FRAME_BUDGET`]).
    frame_budget: tokio::sync::Semaphore,
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
            #[cfg(not(madsim))]
            tls: OnceLock::new(),
            forged: Default::default(),
            limits: OnceLock::new(),
            spool: OnceLock::new(),
            snapshot_gate: tokio::sync::Mutex::new(()),
            conns: limits::ConnCounter::default(),
            frame_budget: tokio::sync::Semaphore::new(FRAME_BUDGET),
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

    /// Links connect with TLS from now on.
    #[cfg(not(madsim))]
    pub fn set_tls(&self, tls: Arc<crate::tls::NodeTls>) {
        let _ = self.tls.set(tls);
    }

    /// How many Raft messages were dropped because they claimed a node other than the one
    /// their connection's certificate names.
    pub fn forged_dropped(&self) -> u64 {
        self.forged.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts `n` dropped messages that claimed `claimed` on a connection of node `cert`.
    pub(crate) fn drop_forged(&self, cert: u64, claimed: u64, n: u64) {
        let total = self.forged.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        // Logged at the first drop and then at every doubling, so a flood cannot flood the log.
        if (total - n).checked_ilog2() != total.checked_ilog2() {
            tracing::warn!(
                peer = cert,
                claimed,
                forged_dropped = total,
                "dropped raft messages whose from is not the node its certificate names"
            );
        }
    }

    /// Sets the limits and the directory incoming snapshots are spooled in (default: the
    /// limits' defaults and the system's temp dir).
    pub fn configure(&self, limits: Limits, spool_dir: std::path::PathBuf) {
        let _ = self.limits.set(limits);
        let _ = self.spool.set(spool_dir);
    }

    pub fn limits(&self) -> Limits {
        self.limits.get().cloned().unwrap_or_default()
    }

    fn spool_dir(&self) -> std::path::PathBuf {
        self.spool.get().cloned().unwrap_or_else(|| std::env::temp_dir().join(format!("blixard-snapshot-{}", self.id)))
    }

    /// A place for one more connection from `ip` (see [`Limits::max_conns_per_ip`]); `None`
    /// means close it.
    pub fn admit(&self, ip: std::net::IpAddr) -> Option<limits::ConnSlot> {
        let max = self.limits().max_conns_per_ip;
        let slot = self.conns.admit(ip, max);
        if slot.is_none() {
            tracing::debug!(%ip, max, "closing a connection: too many from one address");
        }
        slot
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
        self.serve_peer_as(stream, None).await
    }

    /// [`Self::serve_peer`] for a connection whose certificate names node `cert`: only its
    /// messages (`from == cert`) are stepped, the others are dropped and counted.
    pub async fn serve_peer_as<S: AsyncRead + Unpin>(self: &Arc<Self>, stream: S, cert: Option<u64>) {
        let limits = self.limits();
        let mut r = tokio::io::BufReader::with_capacity(256 * 1024, stream);
        let from = match tokio::time::timeout(limits.handshake_timeout, read_preamble(&mut r)).await {
            Ok(Ok((from, addr))) => {
                match cert {
                    Some(c) if c != from => {
                        tracing::warn!(peer = c, claimed = from, "a peer connection's preamble claims another node")
                    }
                    // Only a certificate's own node may say where it is.
                    _ => self.learn(from, &addr),
                }
                cert.unwrap_or(from)
            }
            Ok(Err(e)) => {
                tracing::debug!("dropping a peer connection: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!("dropping a peer connection: no preamble within {:?}", limits.handshake_timeout);
                return;
            }
        };
        let Some(handle) = self.handle.get().cloned() else { return };
        let idle = limits.idle_timeout;
        let mut body = Vec::new();
        loop {
            let mut prefix = [0u8; 4];
            match tokio::time::timeout(idle, r.read_exact(&mut prefix)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return, // closed
                Err(_) => {
                    tracing::debug!(peer = from, "closing a peer connection: no frame for {idle:?}");
                    return;
                }
            }
            let len = match wire::frame_len(prefix) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(peer = from, "closing a peer connection: {e}");
                    return;
                }
            };
            // A frame's bytes are read only once there is room for them among all connections'
            // (its length alone, from anyone who can connect, must not claim memory), and
            // within the idle timeout.
            let Ok(_room) = self.frame_budget.acquire_many(len.max(1) as u32).await else { return };
            if body.capacity() > 4 * 1024 * 1024 {
                body = Vec::new(); // do not keep a rare large frame's buffer
            }
            body.clear();
            match tokio::time::timeout(idle, (&mut r).take(len as u64).read_to_end(&mut body)).await {
                Ok(Ok(n)) if n == len => {}
                Ok(_) => return, // closed mid-frame
                Err(_) => {
                    tracing::debug!(peer = from, "closing a peer connection: a frame took over {idle:?}");
                    return;
                }
            }
            match wire::decode_frame(&body) {
                Ok(msgs) => {
                    let (mut forged, mut claimed) = (0, 0);
                    for m in msgs {
                        if cert.is_some_and(|c| c != m.from) {
                            forged += 1;
                            claimed = m.from;
                            continue;
                        }
                        handle.step(m).await;
                    }
                    if forged > 0 {
                        self.drop_forged(from, claimed, forged);
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

    #[cfg(not(madsim))]
    fn tls(&self) -> Option<Arc<crate::tls::NodeTls>> {
        self.tls.get().cloned()
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
            let to = m.to;
            let b = match frames.iter_mut().position(|(t, _)| *t == to) {
                Some(i) => &mut frames[i].1,
                None => {
                    frames.push((to, wire::FrameBuilder::default()));
                    &mut frames.last_mut().expect("just pushed").1
                }
            };
            for part in wire::split_proposal(m) {
                b.push(&part);
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
