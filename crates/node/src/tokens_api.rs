//! `TokenService`: API tokens (create, list, revoke) through Raft, and a new cluster's first
//! admin token. Who may call it is decided by [`crate::auth`], like every other service.

use std::path::{Path, PathBuf};
use std::time::Duration;

use blixard_consensus::Handle;
use blixard_core::state::tokens::TokenRecord;
use blixard_core::{Command, Query, QueryResult};
use blixard_proto::rpc;
use blixard_proto::v1;
use tonic::{Request, Response, Status};

use crate::api::Api;

#[derive(Clone)]
pub struct Tokens {
    pub api: Api,
}

fn info(t: &TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: t.id(),
        name: t.name.clone(),
        role: t.role.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms.unwrap_or(0),
    }
}

impl Tokens {
    async fn all(&self, read: Option<v1::ReadOptions>) -> Result<Vec<TokenRecord>, Status> {
        match self.api.query(read, Query::Tokens).await? {
            QueryResult::Tokens(t) => Ok(t),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl v1::token_service_server::TokenService for Tokens {
    async fn create_token(&self, req: Request<v1::CreateTokenRequest>) -> Result<Response<v1::TokenInfo>, Status> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        let ttl_ms = (r.ttl_ms > 0).then_some(r.ttl_ms);
        let cmd = Command::TokenCreate { name: r.name.clone(), role: r.role, hash: r.hash.clone(), ttl_ms };
        self.api.write_command(session, cmd).await?;
        let all = self.all(Some(v1::ReadOptions { stale: true })).await?;
        let t =
            all.iter().find(|t| t.hash == r.hash).ok_or_else(|| Status::not_found("the new token expired already"))?;
        Ok(Response::new(info(t)))
    }

    async fn list_tokens(
        &self,
        req: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let all = self.all(req.into_inner().read).await?;
        Ok(Response::new(v1::ListTokensResponse { tokens: all.iter().map(info).collect() }))
    }

    async fn revoke_token(
        &self,
        req: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let session = rpc::session_of(req.metadata())?;
        let which = req.into_inner().which;
        self.api.write_command(session, Command::TokenRevoke { which }).await?;
        Ok(Response::new(v1::RevokeTokenResponse {}))
    }
}

/// Where a new cluster's first admin token is written.
pub fn admin_token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin.token")
}

/// Writes `secret` to `path`, readable by its owner only, atomically.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{secret}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A new cluster's first admin token: proposed through Raft once this node leads, then written
/// to `<data-dir>/admin.token` (mode 0600). `secret` is made by the caller.
pub async fn first_admin(raft: Handle, data_dir: PathBuf, secret: String, hash: Vec<u8>) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let cmd = Command::TokenCreate { name: "admin".into(), role: "admin".into(), hash: hash.clone(), ttl_ms: None };
        match crate::internal::propose(&raft, cmd).await {
            Ok((_, Ok(_))) => break,
            Ok((_, Err(e))) => {
                tracing::error!("the first admin token was refused: {e}");
                return;
            }
            Err(s) => tracing::debug!("first admin token not accepted yet: {}", s.message()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    let path = admin_token_path(&data_dir);
    match write_secret(&path, &secret) {
        Ok(()) => tracing::info!(
            path = %path.display(),
            "wrote the cluster's first admin token (mode 0600); use it with --token or BLIXARD_TOKEN, then create others and revoke it"
        ),
        Err(e) => tracing::error!("cannot write the first admin token to {}: {e}", path.display()),
    }
}
