//! The tower layer every gRPC request of the node passes (see [`super`]): identify the caller,
//! check its role against the method's [`super::Rule`], admit it past the rate limits and the
//! concurrency cap, serve it, and write an `audit` event for every mutating request.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blixard_consensus::sm::ReadView;
use blixard_consensus::Handle;
use blixard_tls::Identity;
use tonic::Status;

use super::audit::{AuditLog, Event};
use super::limits::Limiter;
use super::{AuthConfig, Need, Rule};
use crate::request_id::RequestId;
use crate::tls::PeerInfo;

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// `token:NAME`, `cert:NAME`, `node:N`, or `anonymous@IP`.
    pub who: Arc<str>,
    /// The role's rank; `None`: no role.
    pub rank: Option<u8>,
    pub role: Option<String>,
    pub node: bool,
    /// What its rate limits are counted under.
    pub key: Arc<str>,
}

/// The shared state of the layer.
pub struct Auth {
    cfg: AuthConfig,
    raft: Handle,
    /// The node serves mutual TLS (so a node is known by its certificate).
    tls: bool,
    limiter: Limiter,
    concurrent: Option<Arc<tokio::sync::Semaphore>>,
    audit: AuditLog,
}

/// The bearer token of `authorization: Bearer SECRET`, if any.
fn bearer(h: &http::HeaderMap) -> Result<Option<&str>, Status> {
    let Some(v) = h.get(http::header::AUTHORIZATION) else { return Ok(None) };
    let v = v.to_str().map_err(|_| Status::unauthenticated("the authorization header is not ASCII"))?;
    match v.strip_prefix("Bearer ") {
        Some(t) if !t.is_empty() && t.len() <= 256 => Ok(Some(t.trim())),
        _ => Err(Status::unauthenticated("the authorization header must be `Bearer TOKEN`")),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Auth {
    pub fn new(cfg: AuthConfig, raft: Handle, tls: bool, audit: AuditLog) -> Arc<Auth> {
        let limiter = Limiter::new(cfg.rates.clone());
        let concurrent =
            (cfg.rates.max_concurrent > 0).then(|| Arc::new(tokio::sync::Semaphore::new(cfg.rates.max_concurrent)));
        if cfg.enforce {
            tracing::info!("authorization on: every request needs a token or a client certificate with a role");
        }
        Arc::new(Auth { cfg, raft, tls, limiter, concurrent, audit })
    }

    /// The token whose secret is `secret`, as this node's applied state has it now.
    fn token(&self, secret: &str) -> Result<Caller, String> {
        let hash = super::secret::hash(secret);
        let view = ReadView::begin(self.raft.db()).map_err(|e| format!("cannot read the token table: {e}"))?;
        let t = blixard_core::state::tokens::by_hash(&view, &hash)
            .map_err(|e| format!("cannot read the token table: {e}"))?
            .ok_or("unknown or revoked token")?;
        if t.expired_at(now_ms()) {
            return Err(format!("token {:?} expired", t.name));
        }
        Ok(Caller {
            who: format!("token:{}", t.name).into(),
            rank: super::role_rank(&t.role),
            key: format!("token:{}", t.id()).into(),
            role: Some(t.role),
            node: false,
        })
    }

    /// Who sends the requests of a connection that carry no token: its certificate's identity,
    /// else the address it comes from. `trusted` is whether that identity has a role of its
    /// own (a node or a client certificate with a role), so that a token cannot change it.
    fn connection_caller(peer: Option<&PeerInfo>) -> (Caller, bool) {
        let anonymous = Self::anonymous(peer);
        match peer.and_then(|p| p.identity.as_ref()) {
            Some(Identity::Node(n)) => {
                let who: Arc<str> = format!("node:{n}").into();
                (Caller { who: who.clone(), rank: Some(2), role: None, node: true, key: who }, true)
            }
            Some(Identity::Client { name, role: Some(r) }) => {
                let who: Arc<str> = format!("cert:{name}").into();
                let role = Some(r.as_str().to_string());
                (Caller { who: who.clone(), rank: super::role_rank(r.as_str()), role, node: false, key: who }, true)
            }
            Some(Identity::Client { name, role: None }) => {
                let who: Arc<str> = format!("cert:{name}").into();
                (Caller { who: who.clone(), key: who, ..anonymous }, false)
            }
            None => (anonymous, false),
        }
    }

    /// A caller known by its address only.
    fn anonymous(peer: Option<&PeerInfo>) -> Caller {
        let remote = peer.and_then(|p| p.remote).map(|a| a.ip().to_string()).unwrap_or_else(|| "?".into());
        Caller {
            who: format!("anonymous@{remote}").into(),
            rank: None,
            role: None,
            node: false,
            key: format!("ip:{remote}").into(),
        }
    }

    /// Who sent a request with these headers over this connection, or why it is refused.
    pub fn identify(&self, h: &http::HeaderMap, peer: Option<&PeerInfo>) -> Result<Caller, Status> {
        // Worked out once per connection (its requests share `PeerInfo::caller`).
        let made;
        let (base, trusted) = match peer {
            Some(p) => {
                let (c, trusted) = p.caller.get_or_init(|| Self::connection_caller(peer));
                (c, *trusted)
            }
            None => {
                made = Self::connection_caller(None);
                (&made.0, made.1)
            }
        };
        if trusted {
            return Ok(base.clone());
        }
        let token = match bearer(h) {
            Ok(t) => t,
            Err(s) if self.cfg.enforce => return Err(s),
            Err(_) => None,
        };
        match token {
            Some(t) => match self.token(t) {
                Ok(c) => Ok(c),
                Err(why) if self.cfg.enforce => Err(Status::unauthenticated(why)),
                Err(_) => Ok(Self::anonymous(peer)),
            },
            None => Ok(base.clone()),
        }
    }

    /// Whether `caller` may call the method of `rule`.
    pub fn check(&self, rule: &Rule, caller: &Caller) -> Result<(), Status> {
        if !self.cfg.enforce || caller.node {
            return Ok(());
        }
        let method = rule.path.rsplit('/').next().unwrap_or(rule.path);
        match rule.need.rank() {
            // A plaintext port cannot tell nodes apart from anyone else: open, as before.
            None if !self.tls => Ok(()),
            None => Err(Status::permission_denied(format!("{method} is for cluster nodes only (a node certificate)"))),
            Some(need) => match caller.rank {
                None => Err(Status::unauthenticated(format!(
                    "{method} needs a token (--token or BLIXARD_TOKEN; `blixard token create`) or a client certificate with a role"
                ))),
                Some(r) if r >= need => Ok(()),
                Some(_) => Err(Status::permission_denied(format!(
                    "{method} needs role {}; {} has role {}",
                    role_name(rule.need),
                    caller.who,
                    caller.role.as_deref().unwrap_or("none")
                ))),
            },
        }
    }
}

fn role_name(n: Need) -> &'static str {
    match n {
        Need::Viewer => "viewer",
        Need::Operator => "operator",
        Need::Admin => "admin",
        Need::Peer => "node",
    }
}

fn exhausted(why: String, retry: Duration) -> Status {
    let mut s = Status::resource_exhausted(why);
    let ms = retry.as_millis().max(1).to_string();
    if let Ok(v) = ms.parse() {
        s.metadata_mut().insert("retry-after-ms", v);
    }
    s
}

/// The first field of a protobuf message, when it is a short printable string (a key or a VM
/// name), looking one level into a nested message (a VM spec's name).
pub fn first_name(msg: &[u8], depth: u8) -> Option<String> {
    // Field 1, wire type 2 (length-delimited), whose length fits in one varint byte.
    if msg.len() < 2 || msg[0] != 0x0a || msg[1] >= 0x80 {
        return None;
    }
    let body = msg.get(2..2 + msg[1] as usize)?;
    match std::str::from_utf8(body) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic()) => Some(s.to_string()),
        _ if depth > 0 => first_name(body, depth - 1),
        _ => None,
    }
}

/// The name a gRPC request body (one length-prefixed message) is about, if cheap to find.
fn target_of(body: &[u8]) -> Option<String> {
    if body.len() < 5 || body[0] != 0 {
        return None; // compressed or not a whole frame
    }
    first_name(&body[5..], 1)
}

impl Auth {
    /// Writes one audit line (off the request's path: see [`super::audit`]).
    fn audit(
        &self,
        who: Arc<str>,
        path: &'static str,
        name: Option<String>,
        code: &'static str,
        id: Option<&RequestId>,
    ) {
        self.audit.record(Event {
            at_ms: super::audit::now_ms(),
            who,
            method: path,
            name,
            code,
            request_id: id.map(|r| r.0.clone()),
        });
    }
}

/// What a mutating request's body showed as it streamed by to the handler: its size (counted
/// against the caller's written-bytes rate) and the name it is about (for the audit line).
/// Nothing is buffered: the body reaches the handler as it came.
#[derive(Default)]
struct Tap {
    bytes: std::sync::atomic::AtomicU64,
    target: std::sync::OnceLock<Option<String>>,
}

/// A request body that reports what passes through it to a [`Tap`].
struct Tapped {
    inner: Body,
    tap: Arc<Tap>,
}

impl http_body::Body for Tapped {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(f))) = &r {
            if let Some(d) = f.data_ref() {
                self.tap.bytes.fetch_add(d.len() as u64, std::sync::atomic::Ordering::Relaxed);
                // The first frame holds the message's start (where its name is) when it is
                // whole enough to tell; otherwise the audit line goes without the name.
                self.tap.target.get_or_init(|| target_of(d));
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The layer (see the module doc).
#[derive(Clone)]
pub struct AuthLayer(pub Arc<Auth>);

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Auth>,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;
type Body = tonic::body::Body;

impl<S> tower_service::Service<http::Request<Body>> for AuthService<S>
where
    S: tower_service::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            let Some(rule) = super::rule(req.uri().path()) else {
                let path: String = req.uri().path().chars().take(256).collect();
                return Ok(Status::unimplemented(format!("no method {path:?}")).into_http());
            };
            let path = rule.path;
            let id = req.extensions().get::<RequestId>().cloned();
            let refuse = |who: Arc<str>, s: Status| {
                if rule.mutating {
                    auth.audit(who, path, None, crate::metrics::api::code_name(s.code() as i32), id.as_ref());
                }
                Ok(s.into_http())
            };
            let peer = req.extensions().get::<PeerInfo>();
            let caller = match auth.identify(req.headers(), peer) {
                Ok(c) => c,
                Err(s) => {
                    let remote = peer.and_then(|p| p.remote).map(|a| a.ip().to_string()).unwrap_or_default();
                    return refuse(format!("unauthenticated@{remote}").into(), s);
                }
            };
            if let Err(s) = auth.check(rule, &caller) {
                return refuse(caller.who, s);
            }
            if let Err((wait, what)) = auth.limiter.admit(&caller.key, 0, Instant::now()) {
                let s = exhausted(format!("rate limit of {what} reached for {}; retry in {wait:?}", caller.who), wait);
                return refuse(caller.who, s);
            }
            let _permit = match &auth.concurrent {
                None => None,
                Some(sem) => match sem.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let n = auth.limiter.rates().max_concurrent;
                        let s = exhausted(
                            format!("{n} requests are in progress on this node (the cap)"),
                            Duration::from_millis(50),
                        );
                        return Ok(s.into_http());
                    }
                },
            };
            // A mutating unary request's body is watched as it streams to the handler: its size
            // counts as written, its name goes into the audit log.
            let tap = (rule.mutating && !rule.client_stream).then(|| Arc::new(Tap::default()));
            let req = match &tap {
                Some(tap) => req.map(|inner| Body::new(Tapped { inner, tap: tap.clone() })),
                None => req,
            };
            let r = inner.call(req).await;
            if rule.mutating {
                let code = match &r {
                    Ok(resp) => resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                        .map(crate::metrics::api::code_name)
                        .unwrap_or("OK"),
                    Err(_) => "INTERNAL",
                };
                let target = tap.as_ref().and_then(|t| {
                    auth.limiter.charge(&caller.key, t.bytes.load(std::sync::atomic::Ordering::Relaxed));
                    t.target.get().cloned().flatten()
                });
                auth.audit(caller.who, path, target, code, id.as_ref());
            }
            r
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_of_a_request_is_found_where_cheap() {
        // DeleteVmRequest { name: "web" }
        assert_eq!(first_name(&[0x0a, 3, b'w', b'e', b'b'], 1).as_deref(), Some("web"));
        // CreateVmRequest { spec: VmSpec { name: "db" } }
        assert_eq!(first_name(&[0x0a, 4, 0x0a, 2, b'd', b'b'], 1).as_deref(), Some("db"));
        assert_eq!(first_name(&[0x10, 1], 1), None);
        assert_eq!(first_name(&[0x0a, 9, b'x'], 1), None); // truncated
        assert_eq!(target_of(&[0, 0, 0, 0, 5, 0x0a, 3, b'k', b'e', b'y']).as_deref(), Some("key"));
    }

    #[test]
    fn an_exhausted_answer_carries_a_retry_hint() {
        let s = exhausted("rate limit".into(), Duration::from_micros(1500));
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.metadata().get("retry-after-ms").unwrap().to_str().unwrap(), "1");
        let s = exhausted("cap".into(), Duration::from_millis(250));
        assert_eq!(s.metadata().get("retry-after-ms").unwrap().to_str().unwrap(), "250");
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h).unwrap(), None);
        h.insert(http::header::AUTHORIZATION, "Bearer blx_1".parse().unwrap());
        assert_eq!(bearer(&h).unwrap(), Some("blx_1"));
        h.insert(http::header::AUTHORIZATION, "Basic x".parse().unwrap());
        assert_eq!(bearer(&h).unwrap_err().code(), tonic::Code::Unauthenticated);
    }
}
