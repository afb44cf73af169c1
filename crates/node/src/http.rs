//! The operator's HTTP endpoint (`blixard node --http-bind ADDR`), on a port of its own:
//!
//! - `GET /metrics`: this node's registry; OpenMetrics when the scraper asks for it (Prometheus
//!   does), else Prometheus's text format 0.0.4.
//! - `GET /healthz`: 200 while the process serves requests.
//! - `GET /readyz`: 200 when this node knows a leader, has applied everything it knows
//!   committed and its VM backend is open; else 503 with the first unmet condition in one line.
//!
//! Input is hostile: requests must arrive within [`HEADER_TIMEOUT`], at most [`MAX_CONNECTIONS`]
//! are served at once (more wait in the accept queue), and only the three paths answer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use blixard_consensus::{Handle, NodeStatus};

use crate::metrics::Metrics;

pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_CONNECTIONS: usize = 64;

/// Whether the VM backend opened: unset while it opens (building or checking the guest image).
#[derive(Debug, Default)]
pub struct BackendState(OnceLock<Result<(), String>>);

impl BackendState {
    pub fn opened(&self) {
        let _ = self.0.set(Ok(()));
    }

    pub fn failed(&self, reason: String) {
        let _ = self.0.set(Err(reason));
    }

    pub fn get(&self) -> Option<&Result<(), String>> {
        self.0.get()
    }
}

/// What the endpoint reads: the node's Raft handle, its metrics and its VM backend's state.
pub struct Ops {
    pub raft: Handle,
    pub metrics: Arc<Metrics>,
    pub backend: Arc<BackendState>,
}

/// `Ok` when ready, else the first unmet condition.
pub fn readiness(s: &NodeStatus, backend: Option<&Result<(), String>>) -> Result<(), String> {
    if s.leader_id.is_none() {
        return Err(format!("no leader is known (term {}, role {})", s.term, s.role.as_str()));
    }
    if s.applied < s.commit {
        return Err(format!("applied index {} is behind the commit index {}", s.applied, s.commit));
    }
    match backend {
        None => Err("the VM backend is still opening".into()),
        Some(Err(e)) => Err(format!("the VM backend is unavailable: {e}")),
        Some(Ok(())) => Ok(()),
    }
}

/// A response: status, content type, body.
pub type Answer = (u16, &'static str, String);

const TEXT: &str = "text/plain; charset=utf-8";

/// Answers one request (the routing, apart from any IO).
pub fn answer(ops: &Ops, method: &str, path: &str, accept: Option<&str>) -> Answer {
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET and HEAD are served\n".into());
    }
    match path {
        "/metrics" if !ops.metrics.enabled => (404, TEXT, "metrics are off on this node (--metrics off)\n".into()),
        "/metrics" => {
            let om = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
            let ct = if om { crate::metrics::OPENMETRICS } else { crate::metrics::PROMETHEUS_TEXT };
            (200, ct, ops.metrics.render(om))
        }
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" => match readiness(&ops.raft.status(), ops.backend.get()) {
            Ok(()) => (200, TEXT, "ready\n".into()),
            Err(why) => (503, TEXT, format!("not ready: {why}\n")),
        },
        _ => (404, TEXT, "not found: the paths are /metrics, /healthz and /readyz\n".into()),
    }
}

/// Serves the endpoint on `listener` until `stop` turns true.
#[cfg(not(madsim))]
pub async fn serve(listener: tokio::net::TcpListener, ops: Arc<Ops>, mut stop: tokio::sync::watch::Receiver<bool>) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let s = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and the like: wait a little instead of spinning.
                tracing::warn!("http: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (ops, mut stop) = (ops.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let accept = req.headers().get(http::header::ACCEPT).and_then(|v| v.to_str().ok());
                let (code, ct, body) = answer(&ops, req.method().as_str(), req.uri().path(), accept);
                let body = if req.method() == http::Method::HEAD { String::new() } else { body };
                let resp = http::Response::builder()
                    .status(code)
                    .header(http::header::CONTENT_TYPE, ct)
                    .body(http_body_util::Full::new(hyper::body::Bytes::from(body)));
                async move { resp }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(s), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!("http: connection ended: {e}");
                },
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blixard_consensus::Role;

    fn status(leader: Option<u64>, commit: u64, applied: u64) -> NodeStatus {
        NodeStatus {
            id: 1,
            role: Role::Follower,
            term: 3,
            leader_id: leader,
            commit,
            applied,
            last_index: commit,
            voters: vec![1, 2, 3],
            learners: vec![],
        }
    }

    #[test]
    fn ready_only_with_a_leader_caught_up_and_a_backend() {
        let ok = Ok(());
        assert_eq!(readiness(&status(Some(2), 10, 10), Some(&ok)), Ok(()));
        let e = readiness(&status(None, 10, 10), Some(&ok)).unwrap_err();
        assert_eq!(e, "no leader is known (term 3, role follower)");
        let e = readiness(&status(Some(2), 10, 7), Some(&ok)).unwrap_err();
        assert_eq!(e, "applied index 7 is behind the commit index 10");
        let e = readiness(&status(Some(2), 10, 10), None).unwrap_err();
        assert_eq!(e, "the VM backend is still opening");
        let bad = Err("qemu-system-x86_64 not found".to_string());
        let e = readiness(&status(Some(2), 10, 10), Some(&bad)).unwrap_err();
        assert_eq!(e, "the VM backend is unavailable: qemu-system-x86_64 not found");
    }
}
