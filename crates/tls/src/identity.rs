//! Who a certificate names: a node (`blixard://node/N`) or a client (`blixard://client/NAME`,
//! with an optional role `blixard://role/R`), from its subject alternative names.
//!
//! Only certificates that a handshake verified against the cluster CA are worth reading: the
//! identity of an unverified certificate means nothing.

use std::fmt;

use x509_parser::extensions::GeneralName;

pub const NODE_PREFIX: &str = "blixard://node/";
pub const CLIENT_PREFIX: &str = "blixard://client/";
pub const ROLE_PREFIX: &str = "blixard://role/";

/// A client's role, as its certificate may carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Reads.
    Viewer,
    /// VMs, tasks, key/value writes.
    Operator,
    /// Membership, tokens, certificates, backups.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("unknown role {s:?}: expected viewer, operator or admin")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a certificate names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    Node(u64),
    Client { name: String, role: Option<Role> },
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Node(n) => write!(f, "node {n}"),
            Identity::Client { name, role: Some(r) } => write!(f, "client {name} ({r})"),
            Identity::Client { name, role: None } => write!(f, "client {name}"),
        }
    }
}

/// A client name: 1-64 characters of `A-Z a-z 0-9 . _ -`.
pub fn check_client_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid client name {name:?}: must be 1-64 characters of A-Z a-z 0-9 . _ -"))
    }
}

/// Reads the identity of a DER certificate. A certificate must name exactly one node or one
/// client, and at most one role.
pub fn of_der(der: &[u8]) -> Result<Identity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
        .ok_or("the certificate has no subject alternative names (no blixard:// identity)")?;
    let (mut nodes, mut clients, mut roles) = (Vec::new(), Vec::new(), Vec::new());
    for n in &san.value.general_names {
        let GeneralName::URI(u) = n else { continue };
        if let Some(id) = u.strip_prefix(NODE_PREFIX) {
            match id.parse::<u64>() {
                Ok(n) if n > 0 => nodes.push(n),
                _ => return Err(format!("bad node identity {u:?}: the id must be a positive integer")),
            }
        } else if let Some(name) = u.strip_prefix(CLIENT_PREFIX) {
            check_client_name(name)?;
            clients.push(name.to_string());
        } else if let Some(r) = u.strip_prefix(ROLE_PREFIX) {
            roles.push(Role::parse(r)?);
        }
    }
    match (nodes.as_slice(), clients.as_slice(), roles.as_slice()) {
        ([n], [], []) => Ok(Identity::Node(*n)),
        ([], [c], r) if r.len() <= 1 => Ok(Identity::Client { name: c.clone(), role: r.first().copied() }),
        ([], [], _) => Err("the certificate names no blixard:// node or client".into()),
        _ => Err("the certificate must name exactly one node or one client, with at most one role".into()),
    }
}
