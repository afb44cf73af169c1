//! Client TLS for both systems under test: the CA that signed the servers' certificates and a
//! client certificate (blixard's mutual TLS; etcd's `--client-cert-auth`). Both connect through
//! tonic's own `ClientTlsConfig` (rustls with the `ring` provider, ALPN `h2`), so the client side
//! of the handshake and of every record costs the same for both.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use blixard_tls::issue::{CA_CERT, CLIENT_CERT, CLIENT_KEY};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// `--tls-dir`, or `--tls-ca`/`--tls-cert`/`--tls-key`: without any of them, plaintext.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// Connect over TLS with the files of a directory in the layout `blixard cert client` writes:
    /// ca.pem (the CA the servers' certificates are checked against), client.pem, client-key.pem.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    pub tls_dir: Option<PathBuf>,
    /// Connect over TLS: the CA certificate(s) (PEM) the servers' certificates are checked against.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// The client certificate (PEM) presented to the servers.
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

/// The PEM files of a client TLS configuration, read and checked once.
pub struct ClientTls {
    ca: String,
    cert: String,
    key: String,
}

impl std::fmt::Debug for ClientTls {
    // Never the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

/// `None`: plaintext. Shared by every connection of a run.
pub type Tls = Option<Arc<ClientTls>>;

impl TlsArgs {
    /// The files named by the flags, each parsed (an error names the flag and the file), or
    /// `None` when no TLS flag was given.
    pub fn load(&self) -> anyhow::Result<Tls> {
        let (ca, cert, key) = match (&self.tls_dir, &self.tls_ca, &self.tls_cert, &self.tls_key) {
            (Some(d), None, None, None) => {
                if !d.is_dir() {
                    anyhow::bail!("--tls-dir {}: not a directory", d.display());
                }
                (d.join(CA_CERT), d.join(CLIENT_CERT), d.join(CLIENT_KEY))
            }
            (None, Some(ca), Some(cert), Some(key)) => (ca.clone(), cert.clone(), key.clone()),
            (None, None, None, None) => return Ok(None),
            _ => anyhow::bail!("give either --tls-dir DIR or all of --tls-ca, --tls-cert and --tls-key"),
        };
        Ok(Some(Arc::new(ClientTls::load(&ca, &cert, &key)?)))
    }
}

fn read_pem(flag: &str, path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

impl ClientTls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<ClientTls> {
        // Parsed here so a wrong file fails at once with its name, not at the first handshake.
        blixard_tls::config::load_certs(ca).context("--tls-ca (ca.pem)")?;
        blixard_tls::config::load_certs(cert).context("--tls-cert (client.pem)")?;
        blixard_tls::config::load_key(key).context("--tls-key (client-key.pem)")?;
        Ok(ClientTls {
            ca: read_pem("--tls-ca", ca)?,
            cert: read_pem("--tls-cert", cert)?,
            key: read_pem("--tls-key", key)?,
        })
    }

    /// tonic's client configuration: trust only the CA, present the client certificate; the
    /// server name checked is the endpoint's host (an IP SAN for 127.0.0.1).
    pub fn config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn parse(args: &[&str]) -> Result<TlsArgs, clap::Error> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied())).map(|t| t.tls)
    }

    #[test]
    fn no_flag_is_plaintext_and_partial_flags_are_refused() {
        assert!(parse(&[]).unwrap().load().unwrap().is_none());
        assert!(parse(&["--tls-ca", "a"]).is_err());
        assert!(parse(&["--tls-ca", "a", "--tls-cert", "b"]).is_err());
        assert!(parse(&["--tls-dir", "d", "--tls-key", "k"]).is_err());
        assert!(parse(&["--tls-ca", "a", "--tls-cert", "b", "--tls-key", "c"]).is_ok());
    }

    #[test]
    fn a_cert_client_dir_loads_and_bad_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, ca, client) = (tmp.path(), tmp.path().join("ca"), tmp.path().join("client"));
        blixard_tls::issue::init_ca(&ca).unwrap();
        blixard_tls::issue::issue_client(&ca, "bench", None, &client).unwrap();
        let tls = parse(&["--tls-dir", client.to_str().unwrap()]).unwrap().load().unwrap().unwrap();
        assert!(tls.ca.contains("BEGIN CERTIFICATE") && tls.key.contains("PRIVATE KEY"));
        // The same files named one by one.
        let files = [client.join(CA_CERT), client.join(CLIENT_CERT), client.join(CLIENT_KEY)];
        let f: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
        assert!(parse(&["--tls-ca", f[0], "--tls-cert", f[1], "--tls-key", f[2]]).unwrap().load().unwrap().is_some());
        // A key where the certificate belongs, a missing file, a directory that is not one.
        let e = parse(&["--tls-ca", f[0], "--tls-cert", f[2], "--tls-key", f[2]]).unwrap().load().unwrap_err();
        assert!(format!("{e:#}").contains("--tls-cert"), "{e:#}");
        let e = parse(&["--tls-dir", root.to_str().unwrap()]).unwrap().load().unwrap_err();
        assert!(format!("{e:#}").contains("ca.pem"), "{e:#}");
        let e = parse(&["--tls-dir", f[0]]).unwrap().load().unwrap_err();
        assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
    }
}
