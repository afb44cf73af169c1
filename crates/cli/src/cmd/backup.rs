//! `blixard backup save|restore|inspect`: a consistent copy of the replicated state, and a new
//! cluster made from one (as etcd's `snapshot save` / `snapshot restore`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use blixard_proto::v1::backup_service_client::BackupServiceClient;
use blixard_proto::v1::BackupRequest;
use serde::Serialize;

use crate::client::connect;
use crate::output::{emit, Table};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum BackupCmd {
    /// Save a consistent copy of the cluster's state (taken at a linearizable read) to FILE.
    Save { file: PathBuf },
    /// Create the data dir of a new one-node cluster from a backup; start it with `blixard node
    /// --id N --data-dir DIR`, then join other nodes to it.
    Restore {
        file: PathBuf,
        #[arg(long)]
        data_dir: PathBuf,
        /// The new cluster's first node.
        #[arg(long)]
        id: u64,
        /// The address the node will serve on (recorded as its member address).
        #[arg(long, default_value = "127.0.0.1:7001")]
        bind: String,
    },
    /// Check a backup file and show what it holds.
    Inspect { file: PathBuf },
}

#[derive(Serialize)]
struct Info {
    file: String,
    index: u64,
    term: u64,
    created_at_ms: u64,
    source_node: u64,
    bytes: u64,
    sha256: String,
    keys: usize,
    vms: usize,
    members: usize,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks a backup file's bytes and summarises them.
fn inspect(file: &Path, bytes: &[u8]) -> anyhow::Result<Info> {
    let (h, state) = blixard_core::backup::decode(bytes).with_context(|| format!("backup {}", file.display()))?;
    let mut st = blixard_core::MemStore::default();
    blixard_core::state::import(&mut st, state).with_context(|| format!("backup {}: its state", file.display()))?;
    use blixard_core::ReadStore;
    let count = |t| st.scan(t, b"", usize::MAX).map(|v| v.len()).unwrap_or(0);
    Ok(Info {
        file: file.display().to_string(),
        index: h.index,
        term: h.term,
        created_at_ms: h.created_ms,
        source_node: h.source_node,
        bytes: bytes.len() as u64,
        sha256: hex(&h.sha256),
        keys: count(blixard_core::Table::Kv),
        vms: count(blixard_core::Table::Vms),
        members: count(blixard_core::Table::Members),
    })
}

fn show(fmt: Format, info: &Info) {
    emit(fmt, info, || {
        Table::new(vec!["FILE", "INDEX", "TERM", "BYTES", "KEYS", "VMS", "MEMBERS"]).row(vec![
            info.file.clone(),
            info.index.to_string(),
            info.term.to_string(),
            info.bytes.to_string(),
            info.keys.to_string(),
            info.vms.to_string(),
            info.members.to_string(),
        ])
    });
}

pub async fn run(addr: &str, fmt: Format, c: BackupCmd) -> anyhow::Result<()> {
    match c {
        BackupCmd::Save { file } => {
            let mut conn = connect(addr).await?;
            let mut stream = conn
                .read(BackupRequest {}, |ch, r| async move {
                    BackupServiceClient::new(ch)
                        .max_decoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
                        .save(r)
                        .await
                })
                .await?;
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await.map_err(|s| anyhow::anyhow!("{}", s.message()))? {
                bytes.extend_from_slice(&chunk.data);
            }
            // Checked before it is kept: a file that is there is a whole backup.
            let info = inspect(&file, &bytes)?;
            let tmp = file.with_extension("partial");
            let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
            f.write_all(&bytes)
                .and_then(|_| f.sync_all())
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            std::fs::rename(&tmp, &file).with_context(|| format!("cannot write {}", file.display()))?;
            show(fmt, &info);
        }
        BackupCmd::Inspect { file } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            show(fmt, &inspect(&file, &bytes)?);
        }
        BackupCmd::Restore { file, data_dir, id, bind } => {
            if id == 0 {
                anyhow::bail!("invalid --id: must be a positive integer (got 0)");
            }
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let info = inspect(&file, &bytes)?;
            blixard_node::datadir::restore(&data_dir, id, &bind, &bytes)
                .map_err(|e| anyhow::anyhow!(blixard_node::status::chain(&e)))?;
            #[derive(Serialize)]
            struct Out {
                data_dir: String,
                id: u64,
                bind: String,
                index: u64,
                keys: usize,
                vms: usize,
            }
            let out = Out {
                data_dir: data_dir.display().to_string(),
                id,
                bind,
                index: info.index,
                keys: info.keys,
                vms: info.vms,
            };
            emit(fmt, &out, || {
                format!(
                    "restored {} keys and {} vms (index {}) into {}; start it with: blixard node --id {} --bind {} --data-dir {}\n",
                    out.keys, out.vms, out.index, out.data_dir, out.id, out.bind, out.data_dir
                )
            });
        }
    }
    Ok(())
}
