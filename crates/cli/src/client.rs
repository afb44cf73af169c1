//! Connecting to a node and calling it: fail fast when nobody answers, retry briefly while the
//! cluster has no leader, and turn a `Status` into one clear line.

use std::future::Future;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to keep retrying while a cluster elects a leader.
const RETRY_FOR: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node reachable at {0}")]
    Unreachable(String),
    #[error("invalid --addr {0:?}: expected HOST:PORT")]
    BadAddr(String),
    #[error("{}", .0.message())]
    Status(Status),
}

pub async fn connect(addr: &str) -> Result<Channel, ClientError> {
    if addr.is_empty() || addr.contains("://") || !addr.contains(':') {
        return Err(ClientError::BadAddr(addr.to_string()));
    }
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| ClientError::BadAddr(addr.to_string()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    ep.connect().await.map_err(|_| ClientError::Unreachable(addr.to_string()))
}

/// Whether the server said "not applied, try again" (no leader yet, or a leader change).
fn retryable(s: &Status) -> bool {
    s.code() == Code::Unavailable
        && (s.message().starts_with("no leader")
            || s.message().starts_with("not the leader")
            || s.message().starts_with("proposal dropped"))
}

/// Calls `f` until it succeeds, fails for good, or [`RETRY_FOR`] passes.
pub async fn call<T, F, Fut>(addr: &str, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, Status>>,
{
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let mut backoff = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if retryable(&s) && tokio::time::Instant::now() + backoff < deadline => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
            }
            Err(s) if s.code() == Code::Unavailable && !retryable(&s) => {
                return Err(ClientError::Unreachable(addr.to_string()))
            }
            Err(s) => return Err(ClientError::Status(s)),
        }
    }
}
