//! gRPC requests by service, method and status code, with their durations: one tower layer on
//! the tonic server (the one place every request passes), so no handler counts for itself.
//!
//! The code is read where gRPC puts it: the response headers of a trailers-only answer (an
//! error before any message), else the trailers. A request's duration runs until its answer's
//! trailers (the end of a stream), or until the client drops it (`Cancelled`).
//!
//! Label values are bounded whatever clients send: a path that names no method of ours
//! (answered `Unimplemented`) or is not a `/package.Service/Method` path is counted as
//! `unknown`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub service: &'static str,
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug)]
pub struct ApiMetrics {
    requests: Family<CodeLabels, Counter>,
    durations: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Per method of the table (by its index in `METHODS`), its duration histogram and its
    /// `OK` counter, taken from the families at its first answer: an answered request then
    /// costs no label hashing or family lock.
    answered: std::sync::Arc<[std::sync::OnceLock<(Histogram, Counter)>]>,
}

/// gRPC's status code names (as in the gRPC spec), by number.
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code).ok().and_then(|i| NAMES.get(i)).copied().unwrap_or("UNKNOWN")
}

const UNIMPLEMENTED: i32 = 12;
/// Longest service or method name counted under its own name.
const MAX_NAME: usize = 64;

/// `(service, method)` of a gRPC path `/blixard.v1.KvService/Put`; `None` for anything else.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ok = |s: &str, extra: &[char]| {
        !s.is_empty() && s.len() <= MAX_NAME && s.chars().all(|c| c.is_ascii_alphanumeric() || extra.contains(&c))
    };
    (ok(service, &['.', '_']) && ok(method, &['_'])).then_some((service, method))
}

impl ApiMetrics {
    pub fn new() -> Self {
        ApiMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(super::latency),
            answered: (0..crate::auth::METHODS.len()).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "blixard_api_requests",
            "gRPC requests answered, by service, method and code",
            self.requests.clone(),
        );
        r.register_with_unit(
            "blixard_api_request_duration",
            "gRPC requests from arrival to the end of the answer, by service and method",
            Unit::Seconds,
            self.durations.clone(),
        );
    }

    /// Counts one answered request. The labels are the method table's own strings (no
    /// allocation per request), so only methods of ours get a label of their own.
    pub fn record(&self, path: &str, code: i32, seconds: f64) {
        self.record_rule(crate::auth::rule_index(path), code, seconds)
    }

    /// [`Self::record`] of the method at `rule` in `METHODS` (`None`: not one of ours).
    pub fn record_rule(&self, rule: Option<usize>, code: i32, seconds: f64) {
        let rule = rule.filter(|_| code != UNIMPLEMENTED);
        let labels = |i: usize| split_path(crate::auth::METHODS[i].path);
        if let (Some(i), 0) = (rule, code) {
            if let (Some(slot), Some((service, method))) = (self.answered.get(i), labels(i)) {
                let (h, c) = slot.get_or_init(|| {
                    let h = self.durations.get_or_create(&MethodLabels { service, method }).clone();
                    let c = self.requests.get_or_create(&CodeLabels { service, method, code: "OK" }).clone();
                    (h, c)
                });
                h.observe(seconds);
                c.inc();
                return;
            }
        }
        let (service, method) = rule.and_then(labels).unwrap_or(("unknown", "unknown"));
        let m = MethodLabels { service, method };
        self.durations.get_or_create(&m).observe(seconds);
        self.requests.get_or_create(&CodeLabels { service, method, code: code_name(code) }).inc();
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The tower layer that records every request in [`ApiMetrics`].
#[derive(Clone, Debug)]
pub struct ApiLayer(pub std::sync::Arc<super::Metrics>);

#[cfg(not(madsim))]
mod layer {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Instant;

    use http_body::{Body, Frame, SizeHint};

    use super::*;

    impl<S> tower_layer::Layer<S> for ApiLayer {
        type Service = ApiService<S>;

        fn layer(&self, inner: S) -> Self::Service {
            ApiService { inner, metrics: self.0.clone() }
        }
    }

    #[derive(Clone, Debug)]
    pub struct ApiService<S> {
        inner: S,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    }

    /// Records the request once: at its trailers, its end, or when it is dropped unfinished.
    pub struct Recorder {
        metrics: std::sync::Arc<crate::metrics::Metrics>,
        /// The method's index in the table (`None`: not one of ours).
        rule: Option<usize>,
        start: Instant,
        done: bool,
    }

    impl Recorder {
        fn finish(&mut self, code: i32) {
            if !self.done {
                self.done = true;
                self.metrics.api.record_rule(self.rule, code, self.start.elapsed().as_secs_f64());
            }
        }
    }

    impl Drop for Recorder {
        fn drop(&mut self) {
            self.finish(1); // CANCELLED: the answer was not carried to its end
        }
    }

    fn code_of(h: &http::HeaderMap) -> Option<i32> {
        h.get("grpc-status")?.to_str().ok()?.parse().ok()
    }

    /// The answer's body, watched for its trailers (not watched with metrics off).
    pub struct ApiBody<B> {
        inner: B,
        recorder: Option<Recorder>,
    }

    impl<B: Body + Unpin> Body for ApiBody<B> {
        type Data = B::Data;
        type Error = B::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            let this = &mut *self;
            let r = Pin::new(&mut this.inner).poll_frame(cx);
            match &r {
                Poll::Ready(Some(Ok(f))) => {
                    if let (Some(code), Some(rec)) = (f.trailers_ref().and_then(code_of), &mut this.recorder) {
                        rec.finish(code);
                    }
                }
                Poll::Ready(Some(Err(_))) => this.recorder.iter_mut().for_each(|r| r.finish(13)), // INTERNAL
                Poll::Ready(None) => this.recorder.iter_mut().for_each(|r| r.finish(0)),
                Poll::Pending => {}
            }
            r
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }

    type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

    impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for ApiService<S>
    where
        S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        ReqBody: Send + 'static,
        ResBody: Body + Unpin,
    {
        type Response = http::Response<ApiBody<ResBody>>;
        type Error = S::Error;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }

        fn call(&mut self, req: http::Request<ReqBody>) -> Self::Future {
            // The clone that was polled ready serves this request (tower's rule).
            let clone = self.inner.clone();
            let mut inner = std::mem::replace(&mut self.inner, clone);
            if !self.metrics.enabled {
                return Box::pin(async move {
                    let resp = inner.call(req).await?;
                    Ok(resp.map(|inner| ApiBody { inner, recorder: None }))
                });
            }
            let mut recorder = Recorder {
                metrics: self.metrics.clone(),
                rule: crate::auth::rule_index(req.uri().path()),
                start: Instant::now(),
                done: false,
            };
            Box::pin(async move {
                let r = inner.call(req).await;
                match r {
                    Ok(resp) => {
                        if let Some(code) = code_of(resp.headers()) {
                            recorder.finish(code); // trailers-only: an error before any message
                        }
                        Ok(resp.map(|inner| ApiBody { inner, recorder: Some(recorder) }))
                    }
                    Err(e) => {
                        recorder.finish(13);
                        Err(e)
                    }
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method_or_are_refused() {
        assert_eq!(split_path("/blixard.v1.KvService/Put"), Some(("blixard.v1.KvService", "Put")));
        for bad in ["", "/", "noslash", "/a", "/a/", "//m", "/a/b/c", "/a b/m", "/a/m\u{e9}"] {
            assert_eq!(split_path(bad), None, "{bad:?}");
        }
        assert_eq!(split_path(&format!("/{}/m", "s".repeat(65))), None);
    }

    #[test]
    fn unknown_methods_share_one_series_whatever_their_names() {
        let m = ApiMetrics::new();
        for i in 0..1000 {
            m.record(&format!("/blixard.v1.KvService/Nope{i}"), 12, 0.001);
            m.record(&format!("/x{i}"), 0, 0.001);
        }
        m.record("/blixard.v1.KvService/Put", 0, 0.001);
        m.record("/blixard.v1.KvService/Put", 14, 0.001);
        let mut r = Registry::default();
        m.register(&mut r);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let series = |p: &str| text.lines().filter(|l| l.starts_with(p)).count();
        // unknown×{UNIMPLEMENTED, OK} and Put×{OK, UNAVAILABLE}; two methods timed.
        assert_eq!(series("blixard_api_requests_total{"), 4, "{text}");
        assert_eq!(series("blixard_api_request_duration_seconds_count{"), 2, "{text}");
        assert!(text
            .contains(r#"blixard_api_requests_total{service="unknown",method="unknown",code="UNIMPLEMENTED"} 1000"#));
        assert_eq!(code_name(14), "UNAVAILABLE");
        assert_eq!(code_name(99), "UNKNOWN");
        assert_eq!(code_name(-1), "UNKNOWN");
    }
}
