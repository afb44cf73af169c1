use std::io::Read;
use std::path::PathBuf;

use blixard_core::MAX_VALUE_LEN;
use blixard_proto::v1::kv_service_client::KvServiceClient;
use blixard_proto::v1::{DeleteRequest, GetRequest, ListRequest, PutRequest, ReadOptions};
use blixard_proto::MAX_MESSAGE_BYTES;
use serde::Serialize;

use crate::client::connect;
use crate::output::{emit, text_or_hex, Table};
use crate::page::{Pager, Printer};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum KvCmd {
    /// Set a key (1–1024 bytes) to a value (at most 1 MiB): VALUE, --file PATH, or - for stdin.
    Put {
        key: String,
        /// The value; `-` reads it from stdin.
        #[arg(required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from this file (byte for byte).
        #[arg(long, value_name = "PATH", conflicts_with = "value")]
        file: Option<PathBuf>,
    },
    /// Read a key (linearizable unless --stale).
    Get {
        key: String,
        /// Read the answering node's local state: faster, may be stale.
        #[arg(long)]
        stale: bool,
        /// Write the value to this file (byte for byte) instead of printing it.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
    /// Delete a key.
    Delete { key: String },
    /// List keys with a prefix, in byte order (fetched and printed page by page).
    List {
        #[arg(default_value = "")]
        prefix: String,
        /// At most this many keys.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
        limit: u64,
        /// Start after this key (exclusive), e.g. the `next` of an earlier listing.
        #[arg(long, value_name = "KEY")]
        start_after: Option<String>,
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

/// Reads a value of at most [`MAX_VALUE_LEN`] bytes from `src` (named `what` in errors)
/// without ever holding more than one byte past the limit.
fn read_value(src: impl Read, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut value = Vec::new();
    src.take(MAX_VALUE_LEN as u64 + 1)
        .read_to_end(&mut value)
        .map_err(|e| anyhow::anyhow!("cannot read {what}: {e}"))?;
    if value.len() > MAX_VALUE_LEN {
        anyhow::bail!("invalid value: must be at most {MAX_VALUE_LEN} bytes ({what} holds more)");
    }
    Ok(value)
}

pub async fn run(addr: &str, fmt: Format, c: KvCmd) -> anyhow::Result<()> {
    let mut conn = connect(addr).await?;
    let kv = |ch| {
        KvServiceClient::new(ch)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    };
    match c {
        KvCmd::Put { key, value, file } => {
            let value = match (value, file) {
                (Some(v), None) if v == "-" => read_value(std::io::stdin().lock(), "stdin")?,
                (Some(v), None) => v.into_bytes(),
                (None, Some(path)) => {
                    let f = std::fs::File::open(&path)
                        .map_err(|e| anyhow::anyhow!("cannot read --file {}: {e}", path.display()))?;
                    read_value(f, &format!("--file {}", path.display()))?
                }
                // clap admits exactly one of them.
                _ => anyhow::bail!("give the value as VALUE, --file PATH or - (stdin)"),
            };
            let req = PutRequest { key: key.clone().into_bytes(), value };
            let r = conn.write(req, |ch, r| async move { kv(ch).put(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                key: String,
                index: u64,
            }
            let out = Out { key, index: r.index };
            emit(fmt, &out, || Table::new(vec!["KEY", "INDEX"]).row(vec![out.key.clone(), out.index.to_string()]));
        }
        KvCmd::Get { key, stale, out } => {
            let req = GetRequest { key: key.clone().into_bytes(), read: Some(ReadOptions { stale }) };
            let r = conn.read(req, |ch, r| async move { kv(ch).get(r).await }).await?;
            if !r.found {
                anyhow::bail!("key {} not found", blixard_core::quoted(&key));
            }
            if let Some(path) = out {
                std::fs::write(&path, &r.value)
                    .map_err(|e| anyhow::anyhow!("cannot write --out {}: {e}", path.display()))?;
                #[derive(Serialize)]
                struct Out {
                    key: String,
                    out: String,
                    bytes: usize,
                }
                let out = Out { key, out: path.display().to_string(), bytes: r.value.len() };
                if fmt == Format::Json {
                    emit(fmt, &out, String::new);
                }
                return Ok(());
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
        KvCmd::List { prefix, limit, start_after, stale } => {
            let mut out = Printer::stdout(fmt, "pairs");
            let mut pager = Pager::new(limit, start_after.map(String::into_bytes).unwrap_or_default());
            while let Some((start_after, limit)) = pager.request() {
                let read = Some(ReadOptions { stale });
                let req = ListRequest { prefix: prefix.clone().into_bytes(), limit, read, start_after };
                let r = conn.read(req, |ch, r| async move { kv(ch).list(r).await }).await?;
                let pairs: Vec<Pair> = r.pairs.iter().map(|p| pair(&p.key, &p.value)).collect();
                out.page(&pairs, |pairs| {
                    let mut t = Table::new(vec!["KEY", "VALUE"]);
                    for p in pairs {
                        t = t.row(vec![p.key.clone(), shown(p)]);
                    }
                    t
                })?;
                pager.answered(r.pairs.len(), r.more, r.next)?;
            }
            let stop = pager.stop().map(|k| String::from_utf8_lossy(&k).into_owned());
            out.finish(stop, || {
                Table::new(vec!["KEY", "VALUE"]).row(vec!["…".into(), format!("(more past --limit {limit})")])
            })?;
        }
    }
    Ok(())
}
