//! `blixard cert`: the cluster CA and the certificates it issues; and the node's TLS flags.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use blixard_tls::{issue, Role};

#[derive(clap::Subcommand)]
pub enum CertCmd {
    /// Make a new cluster CA in DIR: ca.pem and ca-key.pem (0600; keep it offline).
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue node ID's certificate (identity blixard://node/ID, and ADDR's host as a name);
    /// writes ca.pem, node.pem and node-key.pem for `blixard node --tls-dir`. Issuing again
    /// replaces them: a running node picks the new ones up.
    Node {
        /// The CA's directory.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        id: u64,
        /// The address clients and peers reach the node at (its --advertise or --bind):
        /// HOST:PORT.
        #[arg(long, value_parser = crate::addr::endpoint)]
        addr: String,
        /// Where to write the files (default: DIR/node-ID).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Issue a client certificate (identity blixard://client/NAME, and a role when given);
    /// writes ca.pem, client.pem and client-key.pem for `--tls-dir` / BLIXARD_TLS_DIR.
    Client {
        /// The CA's directory.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = Role::parse)]
        role: Option<Role>,
        /// Where to write the files (default: DIR/client-NAME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

pub fn run(c: CertCmd) -> anyhow::Result<()> {
    match c {
        CertCmd::Init { dir } => {
            issue::init_ca(&dir)?;
            println!("cluster CA written to {} ({} is its private key)", dir.display(), issue::CA_KEY);
        }
        CertCmd::Node { dir, id, addr, out } => {
            let out = out.unwrap_or_else(|| dir.join(format!("node-{id}")));
            let cert = issue::issue_node(&dir, id, &addr, &out)?;
            println!("node {id}'s certificate written to {} (use --tls-dir {})", cert.display(), out.display());
        }
        CertCmd::Client { dir, name, role, out } => {
            blixard_tls::identity::check_client_name(&name).map_err(anyhow::Error::msg)?;
            let out = out.unwrap_or_else(|| dir.join(format!("client-{name}")));
            let cert = issue::issue_client(&dir, &name, role, &out)?;
            println!("client {name}'s certificate written to {} (use --tls-dir {})", cert.display(), out.display());
        }
    }
    Ok(())
}

/// The global `--tls-dir` (set once by `main`): a client's certificates, or for `blixard node`
/// the node's.
pub static TLS_DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

fn loopback(bind: &str) -> bool {
    let host = bind.rsplit_once(':').map_or(bind, |(h, _)| h);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `blixard node`'s TLS dir (the global `--tls-dir`: the node's ca.pem, node.pem and
/// node-key.pem); refuses plaintext on a non-loopback `bind` without `--insecure`.
pub fn plaintext_check(bind: &str, insecure: bool) -> anyhow::Result<Option<PathBuf>> {
    check_with(bind, insecure, TLS_DIR.get().cloned().flatten())
}

fn check_with(bind: &str, insecure: bool, tls_dir: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    if let Some(d) = tls_dir {
        if insecure {
            anyhow::bail!("--insecure and --tls-dir contradict each other: give one");
        }
        let d = std::fs::canonicalize(&d).with_context(|| format!("invalid --tls-dir {}", d.display()))?;
        return Ok(Some(d));
    }
    if loopback(bind) {
        tracing::info!("serving plaintext on loopback {bind} (no --tls-dir)");
    } else if insecure {
        tracing::warn!(
            "serving plaintext on {bind} (--insecure): anyone who can reach this port can act as a peer or a \
             client; use --tls-dir"
        );
    } else {
        anyhow::bail!(
            "refusing to serve plaintext on {bind}, which is not a loopback address: give --tls-dir DIR (see \
             `blixard cert`), or --insecure to accept that anyone who can reach the port controls the cluster"
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_needs_insecure_off_loopback() {
        assert!(check_with("127.0.0.1:7001", false, None).unwrap().is_none());
        assert!(check_with("[::1]:7001", false, None).unwrap().is_none());
        assert!(check_with("localhost:7001", false, None).unwrap().is_none());
        let e = check_with("0.0.0.0:7001", false, None).unwrap_err().to_string();
        assert!(e.contains("--insecure") && e.contains("--tls-dir"), "{e}");
        assert!(check_with("10.0.0.5:7001", false, None).is_err());
        assert!(check_with("0.0.0.0:7001", true, None).unwrap().is_none());
        let d = tempfile::tempdir().unwrap();
        assert!(check_with("0.0.0.0:7001", true, Some(d.path().into())).is_err());
        assert!(check_with("0.0.0.0:7001", false, Some(d.path().into())).unwrap().is_some());
    }
}
