//! One peer's outgoing connection: frames from the Ready loop to one other node, over TCP.
//!
//! The Ready loop never waits here. When the connection is open and nothing is queued ahead,
//! it writes a frame straight into the socket with one non-blocking `write` (no task hop on the
//! write path); whatever does not fit queues, bounded by [`MAX_QUEUED`] bytes, and the link's
//! task writes it as the socket drains. Past the bound, frames are dropped: Raft resends.
//! The task also (re)connects with backoff. Everything queued for a connection that breaks is
//! dropped with it, so a frame is never split across connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::wire;

/// Bytes queued for a peer before new frames are dropped.
pub const MAX_QUEUED: usize = 32 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Unacknowledged data older than this closes the connection (a peer cut off by the network).
#[cfg(not(madsim))]
const USER_TIMEOUT: Duration = Duration::from_secs(3);
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub struct Link {
    state: Mutex<State>,
    wake: Notify,
    reachable: AtomicBool,
}

#[derive(Default)]
struct State {
    /// The open connection, for writes straight from the Ready loop.
    #[cfg(not(madsim))]
    conn: Option<Arc<TcpStream>>,
    /// Increases with every connection; a failure only closes the one it happened on.
    generation: u64,
    connected: bool,
    /// Frames (or the unwritten rest of one) waiting for the link's task, oldest first.
    queue: VecDeque<Vec<u8>>,
    queued: usize,
    /// The task is writing frames it took from the queue: new ones must wait behind them.
    writing: bool,
}

impl State {
    fn close(&mut self, generation: u64) {
        if self.generation == generation && self.connected {
            #[cfg(not(madsim))]
            {
                self.conn = None;
            }
            self.connected = false;
            self.queue.clear();
            self.queued = 0;
            self.writing = false;
        }
    }
}

/// What the link's task needs from its owner.
pub trait Owner: Send + Sync + 'static {
    /// The peer's current address, if known.
    fn addr_of(&self, id: u64) -> Option<String>;
    /// Our id and advertised address, for the preamble.
    fn me(&self) -> (u64, &str);
    /// The peer could not be reached (Raft stops pipelining to it).
    fn unreachable(&self, id: u64);
    /// Mutual TLS for the connection, when the node has a TLS dir.
    #[cfg(not(madsim))]
    fn tls(&self) -> Option<Arc<crate::tls::NodeTls>> {
        None
    }
}

impl Link {
    /// A link; [`run`] is its task.
    pub fn new() -> Arc<Link> {
        Arc::new(Link { state: Mutex::default(), wake: Notify::new(), reachable: AtomicBool::new(true) })
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Bytes queued for the link's task (not yet written to the connection).
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one frame, or queues it; never waits.
    pub fn send(&self, frame: Vec<u8>) {
        let mut st = self.lock();
        #[cfg(not(madsim))]
        if st.queue.is_empty() && !st.writing {
            if let Some(c) = &st.conn {
                match c.try_write(&frame) {
                    Ok(n) if n == frame.len() => return,
                    Ok(n) => {
                        st.queued += frame.len() - n;
                        st.queue.push_back(frame[n..].to_vec());
                        drop(st);
                        self.wake.notify_one();
                        return;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        tracing::debug!("peer write failed: {e}");
                        let g = st.generation;
                        st.close(g);
                        drop(st);
                        self.wake.notify_one();
                        return;
                    }
                }
            }
        }
        if st.queued + frame.len() > MAX_QUEUED {
            tracing::debug!(bytes = st.queued, "peer queue full; dropping a frame");
            return;
        }
        st.queued += frame.len();
        st.queue.push_back(frame);
        drop(st);
        self.wake.notify_one();
    }
}

/// Connects to peer `id` whenever there is something to send, and writes what the fast path
/// could not; runs until the process ends.
pub async fn run<O: Owner>(link: Arc<Link>, owner: Arc<O>, id: u64) {
    let mut backoff = BACKOFF_MIN;
    loop {
        // Connect only when there is something to send.
        while link.lock().queue.is_empty() {
            link.wake.notified().await;
        }
        let err = match owner.addr_of(id) {
            None => format!("no address known for node {id}"),
            Some(addr) => {
                let (me, my_addr) = owner.me();
                #[cfg(not(madsim))]
                let connected = connect(&addr, me, my_addr, owner.tls().map(|t| (t, id))).await;
                #[cfg(madsim)]
                let connected = connect(&addr, me, my_addr).await;
                match connected {
                    Err(e) => format!("{addr}: {e}"),
                    Ok(conn) => {
                        backoff = BACKOFF_MIN;
                        if !link.reachable.swap(true, Ordering::Relaxed) {
                            tracing::info!(peer = id, %addr, "peer reachable again");
                        }
                        match serve(&link, conn).await {
                            Closed::Idle => {
                                // The peer closed a connection that had nothing to carry (its
                                // idle timeout): connect again when there is something to send.
                                tracing::debug!(peer = id, %addr, "idle peer connection closed by the peer");
                                continue;
                            }
                            Closed::Broken(why) => format!("{addr}: {why}"),
                        }
                    }
                }
            }
        };
        if link.reachable.swap(false, Ordering::Relaxed) {
            tracing::warn!(peer = id, "peer unreachable: {err}");
        }
        owner.unreachable(id);
        {
            let mut st = link.lock();
            st.queue.clear();
            st.queued = 0;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Why a connection ended.
enum Closed {
    /// The peer closed it while nothing was queued or being written.
    Idle,
    Broken(String),
}

/// Writes queued frames on `conn` until it breaks; returns why.
async fn serve(link: &Link, mut conn: Conn) -> Closed {
    let generation = {
        let mut st = link.lock();
        st.generation += 1;
        st.connected = true;
        #[cfg(not(madsim))]
        {
            st.conn = conn.fast();
        }
        st.generation
    };
    let why = loop {
        let frames: Vec<Vec<u8>> = {
            let mut st = link.lock();
            if st.generation != generation || !st.connected {
                break Closed::Broken("a write failed".to_string());
            }
            st.writing = !st.queue.is_empty();
            st.queued = 0;
            st.queue.drain(..).collect()
        };
        if frames.is_empty() {
            tokio::select! {
                _ = link.wake.notified() => continue,
                e = conn.closed() => {
                    let idle = e.kind() == std::io::ErrorKind::UnexpectedEof && link.lock().queue.is_empty();
                    break if idle { Closed::Idle } else { Closed::Broken(e.to_string()) };
                }
            }
        }
        let mut failed = None;
        for f in &frames {
            if let Err(e) = conn.write_all(f).await {
                failed = Some(e.to_string());
                break;
            }
        }
        if let Some(e) = failed {
            break Closed::Broken(e);
        }
        link.lock().writing = false;
    };
    link.lock().close(generation);
    why
}

/// An open connection's write side. A plaintext one is shared with the Ready loop's fast path;
/// a TLS one is written by the link's task only (its records are made under a lock of its own).
#[cfg(not(madsim))]
enum Conn {
    Plain(Arc<TcpStream>),
    Tls(Box<blixard_tls::tokio_rustls::client::TlsStream<TcpStream>>),
}

#[cfg(not(madsim))]
impl Conn {
    /// The socket the Ready loop may write to directly.
    fn fast(&self) -> Option<Arc<TcpStream>> {
        match self {
            Conn::Plain(s) => Some(s.clone()),
            Conn::Tls(_) => None,
        }
    }

    async fn write_all(&mut self, mut b: &[u8]) -> std::io::Result<()> {
        let s = match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => {
                use tokio::io::AsyncWriteExt;
                t.write_all(b).await?;
                return t.flush().await;
            }
        };
        while !b.is_empty() {
            s.writable().await?;
            match s.try_write(b) {
                Ok(n) => b = &b[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Resolves when the peer closes or resets the connection (it never sends anything).
    async fn closed(&mut self) -> std::io::Error {
        let mut buf = [0u8; 64];
        let s = match self {
            Conn::Plain(s) => s,
            Conn::Tls(t) => loop {
                use tokio::io::AsyncReadExt;
                // Reading also takes in the TLS records the other side sends (session tickets).
                match t.read(&mut buf).await {
                    Ok(0) => return std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by the peer"),
                    Ok(_) => {}
                    Err(e) => return e,
                }
            },
        };
        loop {
            if let Err(e) = s.readable().await {
                return e;
            }
            match s.try_read(&mut buf) {
                Ok(0) => return std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed by the peer"),
                Ok(_) => {} // nothing is expected; ignore it
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return e,
            }
        }
    }
}

/// Under simulation the task owns the stream and does every write (MadSim's streams have no
/// non-blocking write for the fast path).
#[cfg(madsim)]
struct Conn(TcpStream);

#[cfg(madsim)]
impl Conn {
    async fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(b).await?;
        self.0.flush().await
    }

    /// Never resolves: a broken simulated stream shows as a failed write.
    fn closed(&mut self) -> std::future::Pending<std::io::Error> {
        std::future::pending()
    }
}

/// Connects to `addr`, over TLS when given the node's TLS and the peer's id (which its
/// certificate must name), and sends the preamble.
async fn connect(
    addr: &str,
    me: u64,
    my_addr: &str,
    #[cfg(not(madsim))] tls: Option<(Arc<crate::tls::NodeTls>, u64)>,
) -> std::io::Result<Conn> {
    let s = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
    };
    s.set_nodelay(true)?;
    #[cfg(not(madsim))]
    {
        let sock = socket2::SockRef::from(&s);
        sock.set_tcp_user_timeout(Some(USER_TIMEOUT))?;
        sock.set_keepalive(true)?;
        sock.set_tcp_keepalive(
            &socket2::TcpKeepalive::new()
                .with_time(Duration::from_secs(2))
                .with_interval(Duration::from_secs(1))
                .with_retries(3),
        )?;
    }
    #[cfg(not(madsim))]
    let mut conn = match tls {
        Some((tls, peer)) => Conn::Tls(Box::new(crate::tls::connect_peer(&tls, s, addr, peer).await?)),
        None => Conn::Plain(Arc::new(s)),
    };
    #[cfg(madsim)]
    let mut conn = Conn(s);
    conn.write_all(&wire::preamble(me, my_addr)).await?;
    Ok(conn)
}
