//! Making the cluster CA and issuing node and client certificates (`blixard cert ...`).
//!
//! Files are written whole and then renamed into place, so a node that watches its
//! certificate files never reads half of one; private keys are created `0600`.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::identity::{check_client_name, Role, CLIENT_PREFIX, NODE_PREFIX, ROLE_PREFIX};
use crate::TlsError;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const NODE_CERT: &str = "node.pem";
pub const NODE_KEY: &str = "node-key.pem";
pub const CLIENT_CERT: &str = "client.pem";
pub const CLIENT_KEY: &str = "client-key.pem";

/// How long a CA is valid.
const CA_DAYS: i64 = 3650;
/// How long node and client certificates are valid.
const LEAF_DAYS: i64 = 365;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// Writes `data` to `path` through a temporary file and a rename, with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&tmp).map_err(io(&tmp))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(io(dir))
}

fn validity(p: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks a little behind.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days);
}

/// Makes a new cluster CA in `dir`: `ca.pem` and `ca-key.pem` (0600). Refuses to replace an
/// existing one (every certificate it issued would stop working).
pub fn init_ca(dir: &Path) -> Result<(), TlsError> {
    create_dir(dir)?;
    for f in [CA_CERT, CA_KEY] {
        let p = dir.join(f);
        if p.exists() {
            return Err(TlsError::Bad {
                path: p,
                reason: "already exists; refusing to replace a cluster CA (remove it first to start over)".into(),
            });
        }
    }
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Blixard cluster CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut p, CA_DAYS);
    let cert = p.self_signed(&key)?;
    write_file(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&dir.join(CA_CERT), cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn load_ca(dir: &Path) -> Result<Ca, TlsError> {
    let (cp, kp) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let pem = std::fs::read_to_string(&cp).map_err(io(&cp))?;
    let key_pem = std::fs::read_to_string(&kp).map_err(io(&kp))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Bad { path: kp.clone(), reason: e.to_string() })?;
    let issuer = Issuer::from_ca_cert_pem(&pem, key).map_err(|e| TlsError::Bad { path: cp, reason: e.to_string() })?;
    Ok(Ca { pem, issuer })
}

fn uri(s: String) -> Result<SanType, TlsError> {
    Ok(SanType::URI(s.as_str().try_into().map_err(|_| TlsError::Invalid(format!("{s:?} is not an ASCII URI")))?))
}

/// The host part of `HOST:PORT` (`[v6]:PORT` too) as a SAN.
fn host_san(addr: &str) -> Result<SanType, TlsError> {
    let bad = || TlsError::Invalid(format!("invalid --addr {addr:?}: expected HOST:PORT"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(bad());
    }
    Ok(match host.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().map_err(|_| bad())?),
    })
}

fn leaf(cn: &str, sans: Vec<SanType>, server: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, LEAF_DAYS);
    p
}

fn write_leaf(
    out: &Path,
    ca: &Ca,
    params: CertificateParams,
    names: (&str, &str),
) -> Result<(PathBuf, PathBuf), TlsError> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca.issuer)?;
    create_dir(out)?;
    let (cert_path, key_path) = (out.join(names.0), out.join(names.1));
    write_file(&out.join(CA_CERT), ca.pem.as_bytes(), 0o644)?;
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Issues node `id`'s certificate, for a node reached at `addr` (HOST:PORT), signed by the CA
/// in `ca_dir`; writes `ca.pem`, `node.pem` and `node-key.pem` (0600) into `out` (replacing
/// what is there: that is how a certificate is rotated). Returns the certificate's path.
pub fn issue_node(ca_dir: &Path, id: u64, addr: &str, out: &Path) -> Result<PathBuf, TlsError> {
    if id == 0 {
        return Err(TlsError::Invalid("invalid --id: must be a positive integer (got 0)".into()));
    }
    let sans = vec![uri(format!("{NODE_PREFIX}{id}"))?, host_san(addr)?];
    let ca = load_ca(ca_dir)?;
    Ok(write_leaf(out, &ca, leaf(&format!("blixard node {id}"), sans, true), (NODE_CERT, NODE_KEY))?.0)
}

/// Issues a client certificate named `name` (with `role`, when given) signed by the CA in
/// `ca_dir`; writes `ca.pem`, `client.pem` and `client-key.pem` (0600) into `out`.
pub fn issue_client(ca_dir: &Path, name: &str, role: Option<Role>, out: &Path) -> Result<PathBuf, TlsError> {
    check_client_name(name).map_err(TlsError::Invalid)?;
    let mut sans = vec![uri(format!("{CLIENT_PREFIX}{name}"))?];
    if let Some(r) = role {
        sans.push(uri(format!("{ROLE_PREFIX}{r}"))?);
    }
    let ca = load_ca(ca_dir)?;
    Ok(write_leaf(out, &ca, leaf(&format!("blixard client {name}"), sans, false), (CLIENT_CERT, CLIENT_KEY))?.0)
}
