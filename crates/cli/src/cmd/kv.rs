use blixard_proto::v1::kv_service_client::KvServiceClient;
use blixard_proto::v1::{DeleteRequest, GetRequest, ListRequest, PutRequest, ReadOptions};
use serde::Serialize;

use crate::client::{connect, MAX_ANSWER};
use crate::output::{emit, text_or_hex, Table};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum KvCmd {
    /// Set a key (1–1024 bytes) to a value (at most 1 MiB).
    Put { key: String, value: String },
    /// Read a key (linearizable unless --stale).
    Get {
        key: String,
        /// Read the answering node's local state: faster, may be stale.
        #[arg(long)]
        stale: bool,
    },
    /// Delete a key.
    Delete { key: String },
    /// List keys with a prefix, in byte order.
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys (1–10000).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        #[arg(long)]
        stale: bool,
    },
}

#[derive(Serialize)]
struct Pair {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_hex: Option<String>,
}

fn pair(key: &[u8], value: &[u8]) -> Pair {
    let (value, value_hex) = text_or_hex(value);
    Pair { key: String::from_utf8_lossy(key).into_owned(), value, value_hex }
}

fn shown(p: &Pair) -> String {
    p.value.clone().or_else(|| p.value_hex.as_ref().map(|h| format!("0x{h}"))).unwrap_or_default()
}

pub async fn run(addr: &str, fmt: Format, c: KvCmd) -> anyhow::Result<()> {
    let mut conn = connect(addr).await?;
    let kv = |ch| KvServiceClient::new(ch).max_decoding_message_size(MAX_ANSWER);
    match c {
        KvCmd::Put { key, value } => {
            let req = PutRequest { key: key.clone().into_bytes(), value: value.into_bytes() };
            let r = conn.write(req, |ch, r| async move { kv(ch).put(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                key: String,
                index: u64,
            }
            let out = Out { key, index: r.index };
            emit(fmt, &out, || Table::new(vec!["KEY", "INDEX"]).row(vec![out.key.clone(), out.index.to_string()]));
        }
        KvCmd::Get { key, stale } => {
            let req = GetRequest { key: key.clone().into_bytes(), read: Some(ReadOptions { stale }) };
            let r = conn.read(req, |ch, r| async move { kv(ch).get(r).await }).await?;
            if !r.found {
                anyhow::bail!("key {key:?} not found");
            }
            let p = pair(key.as_bytes(), &r.value);
            match fmt {
                Format::Json => emit(fmt, &p, String::new),
                Format::Table => println!("{}", shown(&p)),
            }
        }
        KvCmd::Delete { key } => {
            let req = DeleteRequest { key: key.clone().into_bytes() };
            let r = conn.write(req, |ch, r| async move { kv(ch).delete(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                key: String,
                deleted: bool,
                index: u64,
            }
            let out = Out { key, deleted: r.existed, index: r.index };
            emit(fmt, &out, || {
                Table::new(vec!["KEY", "DELETED", "INDEX"]).row(vec![
                    out.key.clone(),
                    out.deleted.to_string(),
                    out.index.to_string(),
                ])
            });
        }
        KvCmd::List { prefix, limit, stale } => {
            let req = ListRequest { prefix: prefix.into_bytes(), limit, read: Some(ReadOptions { stale }) };
            let r = conn.read(req, |ch, r| async move { kv(ch).list(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                pairs: Vec<Pair>,
                more: bool,
            }
            let out = Out { pairs: r.pairs.iter().map(|p| pair(&p.key, &p.value)).collect(), more: r.more };
            emit(fmt, &out, || {
                let mut t = Table::new(vec!["KEY", "VALUE"]);
                for p in &out.pairs {
                    t = t.row(vec![p.key.clone(), shown(p)]);
                }
                if out.more {
                    t = t.row(vec!["…".into(), format!("(more past --limit {limit})")]);
                }
                t
            });
        }
    }
    Ok(())
}
