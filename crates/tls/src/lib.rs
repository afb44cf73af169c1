//! Blixard's certificates and mutual TLS.
//!
//! A cluster has one CA ([`issue::init_ca`]). It issues node certificates, whose identity is a
//! SAN URI `blixard://node/N` (plus the node's address as an IP or DNS SAN, which clients check
//! like any server name), and client certificates, `blixard://client/NAME` with a role URI
//! `blixard://role/R`. [`identity`] reads the identity back from a certificate the handshake
//! verified; [`config`] builds the rustls configurations: a node requires a client certificate
//! signed by the cluster CA on every connection, and presents its own certificate both as a
//! server and as a client (to its peers).
//!
//! Crypto: rustls with the `ring` provider (no system libraries needed).

pub mod config;
pub mod identity;
pub mod issue;

pub use identity::{Identity, Role};
pub use rustls;
pub use rustls_pki_types;
pub use tokio_rustls;

/// What went wrong with certificates or keys; every message names the file and the rule.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Bad { path: std::path::PathBuf, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every configuration uses.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests;
