//! Connecting to a cluster and calling it: fail fast when nobody answers, fail over between the
//! endpoints given, retry what is safe to retry, and turn a `Status` into one clear line.
//!
//! Every write is made exactly once: the process has one client session, each write takes the
//! next sequence number, and every retry of that write carries the same one, so the cluster
//! applies it once and answers a repeat with the first outcome. A write whose outcome is unknown
//! (the node answering it died, lost its leader, or its deadline passed) is therefore retried
//! until it is known or this command's deadline passes. Retries are decided by the typed reason
//! of an error (`blixard_proto::rpc`), never by its text.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use blixard_core::ClientSession;
use blixard_proto::rpc;
use blixard_proto::v1::error_detail::Reason;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One attempt of a request (the server answers a write by its own 8 s deadline).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(12);
/// How long a command keeps retrying what is safe to retry.
const RETRY_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node reachable at {0}")]
    Unreachable(String),
    #[error(
        "the node at {0} requires mutual TLS: give --tls-dir DIR (or BLIXARD_TLS_DIR) with ca.pem, client.pem and \
         client-key.pem (`blixard cert client`)"
    )]
    NeedsTls(String),
    #[error("--tls-dir: {0}")]
    Tls(String),
    #[error("invalid --addr {0:?}: expected HOST:PORT[,HOST:PORT...]")]
    BadAddr(String),
    #[error("{}", .0.message())]
    Status(Status),
    #[error("the outcome of the request is unknown: {0}")]
    Unknown(String),
}

/// The endpoints of `--addr`: `HOST:PORT[,HOST:PORT...]`.
pub fn endpoints(addr: &str) -> Result<Vec<String>, ClientError> {
    let list: Vec<String> = addr.split(',').map(|a| a.trim().to_string()).collect();
    if list.iter().any(|a| a.is_empty() || a.contains("://") || !a.contains(':')) {
        return Err(ClientError::BadAddr(addr.to_string()));
    }
    Ok(list)
}

/// This invocation's request id, sent with every request (`x-request-id`) and printed by `-v`.
pub fn request_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// Marks a request with this invocation's request id.
pub fn tag<R>(r: &mut tonic::Request<R>) {
    if let Ok(v) = request_id().parse() {
        r.metadata_mut().insert(blixard_node::request_id::HEADER, v);
    }
}

type Tls = Option<Arc<blixard_tls::rustls::ClientConfig>>;

/// The global `--token` / BLIXARD_TOKEN (set once by `main`).
pub static TOKEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// Adds `authorization: Bearer TOKEN` to a request when a token was given.
pub fn authorize<T>(r: &mut tonic::Request<T>) {
    if let Some(v) = TOKEN.get().cloned().flatten().and_then(|t| format!("Bearer {}", t.trim()).parse().ok()) {
        r.metadata_mut().insert("authorization", v);
    }
}

/// The client TLS configuration of `--tls-dir`, if given.
fn load_tls() -> Result<Tls, ClientError> {
    match crate::cmd::cert::TLS_DIR.get().cloned().flatten() {
        None => Ok(None),
        Some(d) => blixard_tls::config::client_dir_config(&d)
            .map(Some)
            .map_err(|e| ClientError::Tls(blixard_node::status::chain(&e))),
    }
}

async fn dial(addr: &str, tls: &Tls) -> Result<Channel, String> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(ATTEMPT_TIMEOUT);
    let r = match tls {
        Some(c) => ep.connect_with_connector(blixard_node::tls::GrpcConnector::Client(c.clone())).await,
        None => ep.connect().await,
    };
    r.map_err(|e| {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(c) = src {
            let c_s = c.to_string();
            if !s.contains(&c_s) {
                s = format!("{s}: {c_s}");
            }
            src = c.source();
        }
        if tls.is_some() && s.contains("InvalidContentType") {
            s.push_str("; the node does not speak TLS (it runs without --tls-dir)");
        }
        s
    })
}

/// Whether `addr` answers a plaintext HTTP/2 preface with a TLS alert: a TLS port.
async fn speaks_tls(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.ok()?;
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.ok()?;
        Some(b == [0x15, 0x03])
    };
    matches!(tokio::time::timeout(Duration::from_secs(2), probe).await, Ok(Some(true)))
}

/// A connection to one of the endpoints, with this process's client session.
pub struct Conn {
    endpoints: Vec<String>,
    at: usize,
    ch: Channel,
    session: ClientSession,
    tls: Tls,
}

/// What to do about a failed attempt.
enum Next {
    /// Try again (after a pause), on another endpoint if `elsewhere`.
    Retry {
        elsewhere: bool,
        unknown: bool,
    },
    Fail,
}

fn classify(s: &Status) -> Next {
    match rpc::reason(s) {
        Some(Reason::NotApplied) => Next::Retry { elsewhere: true, unknown: false },
        Some(Reason::Exhausted) => Next::Retry { elsewhere: false, unknown: false },
        Some(Reason::OutcomeUnknown) => Next::Retry { elsewhere: true, unknown: true },
        Some(Reason::SessionExpired) | Some(Reason::Unspecified) => Next::Fail,
        // No typed reason: the connection itself failed or the call timed out on our side. A
        // write may have arrived: its outcome is unknown.
        None if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled) => {
            Next::Retry { elsewhere: true, unknown: true }
        }
        None => Next::Fail,
    }
}

pub async fn connect(addr: &str) -> Result<Conn, ClientError> {
    let endpoints = endpoints(addr)?;
    let tls = load_tls()?;
    let mut why = Vec::new();
    for (at, a) in endpoints.iter().enumerate() {
        match dial(a, &tls).await {
            Ok(ch) => {
                let session = ClientSession::new(rand::random::<u128>());
                return Ok(Conn { endpoints, at, ch, session, tls });
            }
            // With TLS the reason matters (a refused certificate, a plaintext node).
            Err(e) if tls.is_some() => why.push(format!("{a} ({e})")),
            Err(_) => why.push(a.clone()),
        }
    }
    if tls.is_none() && speaks_tls(&endpoints[0]).await {
        return Err(ClientError::NeedsTls(endpoints[0].clone()));
    }
    Err(ClientError::Unreachable(why.join(", ")))
}

impl Conn {
    pub fn channel(&self) -> Channel {
        self.ch.clone()
    }

    /// Moves to the next endpoint that answers (the same one when it is the only one).
    async fn fail_over(&mut self) {
        let n = self.endpoints.len();
        for k in 1..=n {
            let at = (self.at + k) % n;
            if let Ok(ch) = dial(&self.endpoints[at], &self.tls).await {
                self.at = at;
                self.ch = ch;
                return;
            }
        }
    }

    /// Calls `f` until it succeeds, fails for good, or the deadline passes. `f` gets a channel
    /// and the request (with this write's session when `write`).
    async fn run<R: Clone, T, F, Fut>(&mut self, req: R, write: bool, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, tonic::Request<R>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let session = write.then(|| self.session.begin());
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        let mut backoff = Duration::from_millis(50);
        let mut unknown_seen = false;
        let result = loop {
            let mut r = tonic::Request::new(req.clone());
            authorize(&mut r);
            if let Some(s) = &session {
                rpc::set_session(r.metadata_mut(), s);
            }
            tag(&mut r);
            let s = match f(self.ch.clone(), r).await {
                Ok(r) => break Ok(r.into_inner()),
                Err(s) => s,
            };
            // A plaintext request to a TLS port fails as a broken connection: say so at once.
            let broken = matches!(s.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal);
            if self.tls.is_none() && broken && rpc::reason(&s).is_none() && speaks_tls(&self.endpoints[self.at]).await {
                break Err(ClientError::NeedsTls(self.endpoints[self.at].clone()));
            }
            match classify(&s) {
                Next::Retry { elsewhere, unknown: u } if tokio::time::Instant::now() + backoff < deadline => {
                    unknown_seen |= u && write;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    if elsewhere && (self.endpoints.len() > 1 || rpc::reason(&s).is_none()) {
                        self.fail_over().await;
                    }
                }
                Next::Retry { unknown: u, .. } => {
                    break Err(if write && (u || unknown_seen) {
                        ClientError::Unknown(s.message().to_string())
                    } else if rpc::reason(&s).is_none() {
                        ClientError::Unreachable(self.endpoints.join(", "))
                    } else {
                        ClientError::Status(s)
                    });
                }
                Next::Fail => break Err(ClientError::Status(s)),
            }
        };
        if let Some(s) = session {
            self.session.end(s.seq);
        }
        result
    }

    /// A read (or any call that is safe to repeat).
    pub async fn read<R: Clone, T, F, Fut>(&mut self, req: R, f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, tonic::Request<R>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.run(req, false, f).await
    }

    /// A write, exactly once (see the module doc).
    pub async fn write<R: Clone, T, F, Fut>(&mut self, req: R, f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, tonic::Request<R>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.run(req, true, f).await
    }
}
