//! Mutual TLS on the node's one port (`blixard node --tls-dir DIR`).
//!
//! Every accepted connection completes a TLS handshake in which the client presents a
//! certificate signed by the cluster CA (no certificate, or one from another CA, and the
//! handshake fails). Inside the TLS stream the first byte tells a peer from a gRPC client, as on
//! a plaintext port. A peer connection is only accepted from a node certificate, and its node id
//! comes from that certificate: [`crate::transport::PeerTransport`] drops (and counts) every
//! Raft message whose `from` differs from it. gRPC requests carry the client's [`PeerInfo`] in
//! their extensions.
//!
//! Outgoing connections (peer links, gRPC channels to other nodes) present this node's
//! certificate and check the other node's: its address as the server name, and for a peer link
//! its node id. The files are reloaded on SIGHUP and when they change (polled every second):
//! new connections use the new certificates, open ones keep theirs.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use blixard_tls::config::NodeTls;
use blixard_tls::rustls::pki_types::ServerName;
use blixard_tls::tokio_rustls::{client, server, TlsAcceptor, TlsConnector};
use blixard_tls::Identity;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::transport::PeerTransport;

/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// Who is on the other end of a gRPC request's connection (a request extension).
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The verified certificate's identity; `None` on a plaintext port.
    pub identity: Option<Identity>,
    /// Who the connection's requests come from when they carry no token: worked out at its
    /// first request, shared by every request's copy of this (see `auth::layer`), and whether
    /// it is final (a token cannot change it).
    pub caller: Arc<std::sync::OnceLock<(crate::auth::layer::Caller, bool)>>,
}

/// Loads node `id`'s TLS dir and starts watching it for changes and SIGHUP.
pub fn open(dir: &Path, id: u64) -> Result<Arc<NodeTls>, String> {
    let tls = NodeTls::open(dir, id).map_err(|e| format!("--tls-dir: {}", crate::status::chain(&e)))?;
    tracing::info!(dir = %dir.display(), "mutual TLS on; certificates reload on SIGHUP and when they change");
    tokio::spawn(watch(Arc::downgrade(&tls)));
    Ok(tls)
}

/// Reloads on SIGHUP and on changes, until the node's TLS is dropped (the node stopped).
async fn watch(tls: std::sync::Weak<NodeTls>) {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_err = String::new();
    loop {
        let forced = tokio::select! {
            _ = async { match hup.as_mut() { Some(h) => { h.recv().await; } None => std::future::pending().await } } => true,
            _ = tokio::time::sleep(POLL) => false,
        };
        let Some(tls) = tls.upgrade() else { return };
        match tls.reload(forced) {
            Ok(true) => {
                tracing::info!(dir = %tls.dir().display(), sighup = forced, "reloaded the TLS certificates");
                last_err.clear();
            }
            Ok(false) => {}
            Err(e) => {
                let e = crate::status::chain(&e);
                if e != last_err || forced {
                    tracing::warn!("cannot reload the TLS certificates (the loaded ones stay in use): {e}");
                    last_err = e;
                }
            }
        }
    }
}

/// A stream whose first byte was already read: it is given back before the rest.
pub struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(b) = self.first.take() {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

type ServerTls = Prefixed<server::TlsStream<TcpStream>>;

/// A connection handed to the gRPC server: plaintext or TLS.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<ServerTls>, PeerInfo),
}

impl From<TcpStream> for Io {
    fn from(s: TcpStream) -> Io {
        Io::Plain(s)
    }
}

impl tonic::transport::server::Connected for Io {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        match self {
            Io::Plain(s) => PeerInfo { remote: s.peer_addr().ok(), identity: None, caller: Default::default() },
            Io::Tls(_, i) => i.clone(),
        }
    }
}

macro_rules! both {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Plain($s) => $e,
            Io::Tls($s, _) => $e,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        both!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        both!(self, s => Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        both!(self, s => Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        both!(self, s => Pin::new(s).poll_shutdown(cx))
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        both!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s, _) => s.is_write_vectored(),
        }
    }
}

/// Serves one accepted connection on a TLS port: the handshake, then a peer connection (from a
/// node certificate only) or gRPC. Anything that fails is dropped with a debug line.
pub async fn route(
    s: TcpStream,
    slot: crate::transport::limits::ConnSlot,
    tls: Arc<NodeTls>,
    transport: Arc<PeerTransport>,
    grpc: tokio::sync::mpsc::Sender<std::io::Result<crate::transport::limits::Counted<Io>>>,
) {
    let remote = s.peer_addr().ok();
    let acceptor = TlsAcceptor::from(tls.get().server);
    let mut t = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(s)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(?remote, "TLS handshake refused: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(?remote, "TLS handshake not done within {HANDSHAKE_TIMEOUT:?}");
            return;
        }
    };
    let identity = match t.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(c) => match blixard_tls::identity::of_der(c) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(?remote, "refusing a connection: its certificate names no identity: {e}");
                return;
            }
        },
        None => return, // the verifier requires one; never here
    };
    let mut first = [0u8; 1];
    match tokio::time::timeout(transport.limits().handshake_timeout, t.read(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return, // closed, failed or silent
    }
    let stream = Prefixed { first: Some(first[0]), inner: t };
    if first[0] == crate::transport::wire::MAGIC[0] {
        match identity {
            Identity::Node(n) => {
                let _slot = slot; // held while the connection is open
                transport.serve_peer_as(stream, Some(n)).await
            }
            other => tracing::warn!(?remote, "refusing a peer connection from {other}: not a node certificate"),
        }
    } else {
        let io = Io::Tls(Box::new(stream), PeerInfo { remote, identity: Some(identity), caller: Default::default() });
        let _ = grpc.send(Ok(crate::transport::limits::Counted::new(io, slot))).await;
    }
}

fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("bad server name {host:?}: {e}")))
}

/// Opens a TLS connection to a node for peer traffic; `peer` is the node id its certificate
/// must name.
pub async fn connect_peer(
    tls: &NodeTls,
    s: TcpStream,
    addr: &str,
    peer: u64,
) -> std::io::Result<client::TlsStream<TcpStream>> {
    let t = tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsConnector::from(tls.get().peer).connect(server_name(addr)?, s))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let named = t.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| blixard_tls::identity::of_der(c));
    match named {
        Some(Ok(Identity::Node(n))) if n == peer => Ok(t),
        other => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{addr} is not node {peer}: its certificate names {other:?}"),
        )),
    }
}

/// Connects gRPC channels over TLS: a node's to other nodes (with the certificates current at
/// each connect), or a client's.
#[derive(Clone)]
pub enum GrpcConnector {
    Node(Arc<NodeTls>),
    Client(Arc<blixard_tls::rustls::ClientConfig>),
}

impl tower_service::Service<tonic::transport::Uri> for GrpcConnector {
    type Response = hyper_util::rt::TokioIo<client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::transport::Uri) -> Self::Future {
        let cfg = match self {
            GrpcConnector::Node(t) => t.get().grpc,
            GrpcConnector::Client(c) => c.clone(),
        };
        Box::pin(async move {
            let addr = uri
                .authority()
                .map(|a| a.to_string())
                .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address in the URI"))?;
            let s = TcpStream::connect(&addr).await?;
            s.set_nodelay(true)?;
            let t = TlsConnector::from(cfg).connect(server_name(&addr)?, s).await?;
            Ok(hyper_util::rt::TokioIo::new(t))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_prefixed_stream_gives_back_its_first_byte_then_the_rest() {
        let (a, mut b) = tokio::io::duplex(64);
        b.write_all(b"ello").await.unwrap();
        drop(b);
        let mut p = Prefixed { first: Some(b'h'), inner: a };
        let mut got = String::new();
        p.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
    }

    #[test]
    fn server_names_come_from_the_host_of_an_address() {
        assert_eq!(server_name("127.0.0.1:7001").unwrap(), ServerName::try_from("127.0.0.1").unwrap());
        assert_eq!(server_name("[::1]:7001").unwrap(), ServerName::try_from("::1").unwrap());
        assert_eq!(server_name("node-1.example:7001").unwrap(), ServerName::try_from("node-1.example").unwrap());
        assert!(server_name("bad host:1").is_err());
    }
}
