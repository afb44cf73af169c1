//! What one node's port grants whoever connects to it: connections per source address, time
//! to say who it is, time between frames, and snapshot bytes. Beyond them the connection is
//! closed (or the snapshot refused) with the limit named in the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The limits (`blixard node --max-snapshot-bytes ... --max-conns-per-ip ...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest snapshot received; a stream past it is cut and refused.
    pub max_snapshot_bytes: u64,
    /// Open connections from one source address at once; more are closed at once.
    pub max_conns_per_ip: usize,
    /// How long a new connection may take to show what it is (its first byte, then a peer's
    /// whole preamble).
    pub handshake_timeout: Duration,
    /// A peer connection that carries no frame for this long is closed (the sender reconnects
    /// when it has something to send).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_snapshot_bytes: 4 << 30,
            max_conns_per_ip: 64,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Open connections by source address.
#[derive(Default)]
pub struct ConnCounter {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One admitted connection; dropping it frees its place.
pub struct ConnSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl ConnCounter {
    /// A place for one more connection from `ip`, unless it has `max` open already.
    pub fn admit(&self, ip: IpAddr, max: usize) -> Option<ConnSlot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnSlot { open: self.open.clone(), ip })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// A gRPC connection that holds its [`ConnSlot`] for as long as it is open.
#[cfg(not(madsim))]
pub struct Counted<S = tokio::net::TcpStream> {
    stream: S,
    _slot: ConnSlot,
}

#[cfg(not(madsim))]
impl<S> Counted<S> {
    pub fn new(stream: S, slot: ConnSlot) -> Self {
        Counted { stream, _slot: slot }
    }
}

#[cfg(not(madsim))]
mod counted_io {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::Counted;

    impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.stream).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.stream.is_write_vectored()
        }
    }

    impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Counted<S> {
        type ConnectInfo = S::ConnectInfo;

        fn connect_info(&self) -> Self::ConnectInfo {
            self.stream.connect_info()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_per_address_are_capped_and_freed_on_drop() {
        let c = ConnCounter::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| c.admit(a, 3).expect("room")).collect();
        assert!(c.admit(a, 3).is_none(), "a fourth from one address");
        assert!(c.admit(b, 3).is_some(), "another address has its own places");
        drop(held);
        assert!(c.admit(a, 3).is_some());
        assert!(c.open.lock().unwrap().get(&a).is_none_or(|&n| n <= 1));
    }
}
