//! `blixard token create|list|revoke`: API tokens (see SECURITY.md). The secret is made here,
//! printed once, and only its SHA-256 is sent to the cluster.

use std::time::Duration;

use blixard_proto::v1::token_service_client::TokenServiceClient;
use blixard_proto::v1::{CreateTokenRequest, ListTokensRequest, ReadOptions, RevokeTokenRequest, TokenInfo};
use serde::Serialize;

use crate::client::connect;
use crate::output::{emit, Table};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum TokenCmd {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// viewer (reads), operator (VMs, tasks, KV) or admin (membership, tokens, backups).
        #[arg(long, value_parser = ["viewer", "operator", "admin"])]
        role: String,
        /// How long it stays valid, e.g. 90s, 30m, 24h, 7d (default: until revoked).
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
        /// A unique name (1-64 of A-Z a-z 0-9 . _ -); default: token-<random>.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the tokens (never their secrets).
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Revoke a token by name or id; every node refuses it once the revocation is applied.
    Revoke { which: String },
}

/// Parses `90s`, `30m`, `24h`, `7d`, `500ms`.
fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("expected a duration like 24h, got {s:?}"))?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("unknown unit in {s:?} (use ms, s, m, h or d)")),
    };
    match ms {
        Some(0) => Err("the ttl must be positive".into()),
        Some(ms) => Ok(Duration::from_millis(ms)),
        None => Err(format!("ttl {s:?} is too long")),
    }
}

#[derive(Serialize)]
struct Out {
    id: String,
    name: String,
    role: String,
    created_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

fn out(t: TokenInfo, secret: Option<String>) -> Out {
    Out {
        id: t.id,
        name: t.name,
        role: t.role,
        created_ms: t.created_ms,
        expires_ms: (t.expires_ms > 0).then_some(t.expires_ms),
        secret,
    }
}

fn table(ts: &[Out]) -> Table {
    let mut t = Table::new(vec!["ID", "NAME", "ROLE", "EXPIRES_MS"]);
    for o in ts {
        t = t.row(vec![
            o.id.clone(),
            o.name.clone(),
            o.role.clone(),
            o.expires_ms.map(|e| e.to_string()).unwrap_or_else(|| "never".into()),
        ]);
    }
    t
}

pub async fn run(addr: &str, fmt: Format, c: TokenCmd) -> anyhow::Result<()> {
    let mut conn = connect(addr).await?;
    let client = TokenServiceClient::new;
    match c {
        TokenCmd::Create { role, ttl, name } => {
            let secret = blixard_node::auth::secret::generate();
            let name = name.unwrap_or_else(|| format!("token-{}", &secret[4..12]));
            let req = CreateTokenRequest {
                name,
                role,
                hash: blixard_node::auth::secret::hash(&secret),
                ttl_ms: ttl.map(|d| d.as_millis() as u64).unwrap_or(0),
            };
            let t = conn.write(req, |ch, r| async move { client(ch).create_token(r).await }).await?;
            let o = out(t, Some(secret));
            match fmt {
                Format::Json => emit(fmt, &o, || table(std::slice::from_ref(&o))),
                Format::Table => {
                    // The secret alone on stdout (for `$(blixard token create ...)`); the rest
                    // on stderr.
                    eprintln!("token {:?} (id {}, role {}); its secret is shown only now:", o.name, o.id, o.role);
                    println!("{}", o.secret.as_deref().unwrap_or_default());
                }
            }
        }
        TokenCmd::List { stale } => {
            let req = ListTokensRequest { read: Some(ReadOptions { stale }) };
            let r = conn.read(req, |ch, r| async move { client(ch).list_tokens(r).await }).await?;
            let all: Vec<Out> = r.tokens.into_iter().map(|t| out(t, None)).collect();
            emit(fmt, &all, || table(&all));
        }
        TokenCmd::Revoke { which } => {
            let req = RevokeTokenRequest { which: which.clone() };
            conn.write(req, |ch, r| async move { client(ch).revoke_token(r).await }).await?;
            eprintln!("revoked token {which:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert_eq!(parse_ttl("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "h", "0s", "5y", "-1s", "99999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
