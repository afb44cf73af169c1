//! rustls configurations from certificate files, and a node's reloadable set of them.
//!
//! A node's TLS dir holds `ca.pem`, `node.pem` and `node-key.pem`; a client's holds `ca.pem`,
//! `client.pem` and `client-key.pem` (as `blixard cert node` / `cert client` write them).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{self, Identity};
use crate::issue::{CA_CERT, CLIENT_CERT, CLIENT_KEY, NODE_CERT, NODE_KEY};
use crate::{provider, TlsError};

/// The ALPN protocol gRPC speaks (gRPC clients of other languages insist on it).
pub const ALPN_H2: &[u8] = b"h2";

fn bad(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Bad { path: path.to_path_buf(), reason: reason.into() }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io { path: path.to_path_buf(), source })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "holds no certificate"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| bad(path, format!("not a PEM private key: {e}")))
}

pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| bad(path, format!("not a usable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// A server configuration that requires a client certificate signed by the CA in `ca`.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(load_roots(ca)?, provider())
        .build()
        .map_err(|e| bad(ca, e.to_string()))?;
    let mut c = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| bad(key, format!("does not fit {}: {e}", cert.display())))?;
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(c))
}

/// A client configuration that trusts only the CA in `ca` and presents `cert`/`key` (or no
/// certificate at all when `auth` is `None`, which a node refuses; for tests and errors).
pub fn client_config(ca: &Path, auth: Option<(&Path, &Path)>) -> Result<ClientConfig, TlsError> {
    let verifier = WebPkiServerVerifier::builder_with_provider(load_roots(ca)?, provider())
        .build()
        .map_err(|e| bad(ca, e.to_string()))?;
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_webpki_verifier(verifier);
    Ok(match auth {
        Some((cert, key)) => b
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| bad(key, format!("does not fit {}: {e}", cert.display())))?,
        None => b.with_no_client_auth(),
    })
}

/// A client's configuration from its TLS dir (`ca.pem`, `client.pem`, `client-key.pem`), for
/// gRPC (ALPN `h2`).
pub fn client_dir_config(dir: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut c = client_config(&dir.join(CA_CERT), Some((&dir.join(CLIENT_CERT), &dir.join(CLIENT_KEY))))?;
    c.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(c))
}

/// The identity the first certificate of a PEM file names.
pub fn identity_of_file(path: &Path) -> Result<Identity, TlsError> {
    let certs = load_certs(path)?;
    identity::of_der(&certs[0]).map_err(|e| bad(path, e))
}

/// One loaded set of a node's configurations.
#[derive(Clone)]
pub struct NodeConfigs {
    pub server: Arc<ServerConfig>,
    /// For peer links (no ALPN).
    pub peer: Arc<ClientConfig>,
    /// For gRPC to other nodes (ALPN `h2`).
    pub grpc: Arc<ClientConfig>,
}

/// A node's TLS: its configurations, reloaded from its TLS dir when the files change.
pub struct NodeTls {
    dir: PathBuf,
    id: u64,
    current: RwLock<(NodeConfigs, Fingerprint)>,
}

/// What identifies the files' contents cheaply: each one's length and modification time.
type Fingerprint = Vec<Option<(u64, SystemTime)>>;

fn fingerprint(dir: &Path) -> Fingerprint {
    [CA_CERT, NODE_CERT, NODE_KEY]
        .iter()
        .map(|f| std::fs::metadata(dir.join(f)).ok().and_then(|m| Some((m.len(), m.modified().ok()?))))
        .collect()
}

fn load_node(dir: &Path, id: u64) -> Result<NodeConfigs, TlsError> {
    let (ca, cert, key) = (dir.join(CA_CERT), dir.join(NODE_CERT), dir.join(NODE_KEY));
    match identity_of_file(&cert)? {
        Identity::Node(n) if n == id => {}
        other => return Err(bad(&cert, format!("names {other}, but this is node {id}"))),
    }
    let server = server_config(&ca, &cert, &key)?;
    let peer = client_config(&ca, Some((&cert, &key)))?;
    let mut grpc = peer.clone();
    grpc.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(NodeConfigs { server, peer: Arc::new(peer), grpc: Arc::new(grpc) })
}

impl NodeTls {
    /// Loads node `id`'s TLS dir; its certificate must name node `id`.
    pub fn open(dir: &Path, id: u64) -> Result<Arc<NodeTls>, TlsError> {
        let fp = fingerprint(dir);
        let c = load_node(dir, id)?;
        Ok(Arc::new(NodeTls { dir: dir.to_path_buf(), id, current: RwLock::new((c, fp)) }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configurations new connections use.
    pub fn get(&self) -> NodeConfigs {
        self.current.read().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Reloads the files if they changed since the last load (or always, when `force`).
    /// Returns whether new configurations are in use. On an error (say, a certificate written
    /// but not yet its key) the current configurations stay; the next call tries again.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let fp = fingerprint(&self.dir);
        if !force && self.current.read().unwrap_or_else(|e| e.into_inner()).1 == fp {
            return Ok(false);
        }
        let c = load_node(&self.dir, self.id)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = (c, fp);
        Ok(true)
    }
}
