//! Request ids: every gRPC request is served inside a `request` span carrying its id, so every
//! line the node logs while serving it (an error included) names the request. The id is the
//! client's `x-request-id` metadata when it is a sane one (1–64 characters of `[A-Za-z0-9._-]`;
//! `blixard -v` prints the one it sends), else one made here; the answer carries it back in
//! its `x-request-id` header. One tower layer on the tonic server, next to the metrics one.

/// The metadata key of a request id.
pub const HEADER: &str = "x-request-id";
/// Longest request id taken from a client.
pub const MAX_LEN: usize = 64;

/// The client's id when it is sane, else `None` (a new one is made).
pub fn accept(v: Option<&[u8]>) -> Option<String> {
    let v = std::str::from_utf8(v?).ok()?;
    let ok = !v.is_empty()
        && v.len() <= MAX_LEN
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then(|| v.to_string())
}

/// A request's id, in its extensions (for the audit log).
#[derive(Clone, Debug)]
pub struct RequestId(pub std::sync::Arc<str>);

/// The tower layer that serves every request in its `request` span.
#[derive(Clone, Debug, Default)]
pub struct RequestIdLayer;

#[cfg(not(madsim))]
mod layer {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tracing::Instrument;

    use super::*;

    impl<S> tower_layer::Layer<S> for RequestIdLayer {
        type Service = RequestIdService<S>;

        fn layer(&self, inner: S) -> Self::Service {
            RequestIdService { inner }
        }
    }

    #[derive(Clone, Debug)]
    pub struct RequestIdService<S> {
        inner: S,
    }

    type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

    /// gRPC codes that are the server's fault, logged as errors.
    fn server_fault(code: i32) -> bool {
        matches!(code, 2 | 13 | 15) // UNKNOWN, INTERNAL, DATA_LOSS
    }

    impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RequestIdService<S>
    where
        S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Send + 'static,
    {
        type Response = S::Response;
        type Error = S::Error;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            let id = accept(req.headers().get(HEADER).map(|v| v.as_bytes()))
                .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
            let method: std::borrow::Cow<'static, str> = match crate::auth::rule(req.uri().path()) {
                Some(r) => r.path.into(),
                None => req.uri().path().chars().take(2 * MAX_LEN).collect::<String>().into(),
            };
            let span = tracing::info_span!("request", request_id = %id, method = %method);
            req.extensions_mut().insert(RequestId(std::sync::Arc::from(id.as_str())));
            Box::pin(
                async move {
                    let mut r = inner.call(req).await;
                    if let Ok(resp) = &mut r {
                        if let Ok(v) = http::HeaderValue::from_str(&id) {
                            resp.headers_mut().insert(HEADER, v);
                        }
                        // A trailers-only answer: an error before any message.
                        let code = resp.headers().get("grpc-status").and_then(|v| v.to_str().ok()?.parse::<i32>().ok());
                        let message =
                            resp.headers().get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        match code {
                            Some(c) if server_fault(c) => tracing::error!(code = c, %message, "request failed"),
                            Some(c) if c != 0 => tracing::debug!(code = c, %message, "request refused"),
                            _ => tracing::debug!("request answered"),
                        }
                    }
                    r
                }
                .instrument(span),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_taken_only_when_sane() {
        assert_eq!(accept(Some(b"abc-1.2_3")), Some("abc-1.2_3".into()));
        assert_eq!(accept(Some("a".repeat(64).as_bytes())), Some("a".repeat(64)));
        for bad in [&b""[..], b"a b", b"a\nb", b"\xff", "é".as_bytes(), "a".repeat(65).as_bytes()] {
            assert_eq!(accept(Some(bad)), None, "{bad:?}");
        }
        assert_eq!(accept(None), None);
    }
}
