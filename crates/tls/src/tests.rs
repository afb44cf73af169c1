use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustls::pki_types::UnixTime;
use rustls::server::WebPkiClientVerifier;

use crate::config::{load_certs, load_roots, NodeTls};
use crate::identity::{of_der, Identity, Role};
use crate::issue::*;
use crate::*;

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn verifies(ca_dir: &Path, cert: &Path) -> bool {
    let v = WebPkiClientVerifier::builder_with_provider(load_roots(&ca_dir.join(CA_CERT)).unwrap(), provider())
        .build()
        .unwrap();
    let certs = load_certs(cert).unwrap();
    v.verify_client_cert(&certs[0], &certs[1..], UnixTime::now()).is_ok()
}

#[test]
fn a_ca_issues_node_and_client_certificates_that_name_their_identity() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    init_ca(&ca).unwrap();
    assert_eq!(mode(&ca.join(CA_KEY)), 0o600);

    let n = d.path().join("n3");
    let cert = issue_node(&ca, 3, "127.0.0.1:7003", &n).unwrap();
    assert_eq!(mode(&n.join(NODE_KEY)), 0o600);
    assert_eq!(of_der(&load_certs(&cert).unwrap()[0]), Ok(Identity::Node(3)));
    assert!(verifies(&ca, &cert));

    let c = d.path().join("alice");
    let cert = issue_client(&ca, "alice", Some(Role::Operator), &c).unwrap();
    assert_eq!(mode(&c.join(CLIENT_KEY)), 0o600);
    let id = of_der(&load_certs(&cert).unwrap()[0]).unwrap();
    assert_eq!(id, Identity::Client { name: "alice".into(), role: Some(Role::Operator) });
    assert!(verifies(&ca, &cert));

    let cert = issue_client(&ca, "bob", None, &d.path().join("bob")).unwrap();
    assert_eq!(of_der(&load_certs(&cert).unwrap()[0]), Ok(Identity::Client { name: "bob".into(), role: None }));

    // A node's TLS dir loads, and only for the node it names.
    assert!(NodeTls::open(&n, 3).is_ok());
    let e = NodeTls::open(&n, 1).err().expect("wrong id accepted").to_string();
    assert!(e.contains("names node 3, but this is node 1"), "{e}");
}

#[test]
fn a_certificate_from_another_ca_does_not_verify() {
    let d = tempfile::tempdir().unwrap();
    let (ca, other) = (d.path().join("ca"), d.path().join("other"));
    init_ca(&ca).unwrap();
    init_ca(&other).unwrap();
    let foreign = issue_node(&other, 1, "127.0.0.1:7001", &d.path().join("f")).unwrap();
    assert!(verifies(&other, &foreign));
    assert!(!verifies(&ca, &foreign));
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    init_ca(&ca).unwrap();
    let again = init_ca(&ca).unwrap_err().to_string();
    assert!(again.contains("refusing to replace a cluster CA"), "{again}");
    let out = d.path().join("x");
    assert!(issue_node(&ca, 0, "127.0.0.1:1", &out).unwrap_err().to_string().contains("positive integer"));
    assert!(issue_node(&ca, 1, "no-port", &out).unwrap_err().to_string().contains("HOST:PORT"));
    assert!(issue_client(&ca, "a/b", None, &out).unwrap_err().to_string().contains("invalid client name"));
    assert!(issue_node(&d.path().join("none"), 1, "h:1", &out).unwrap_err().to_string().contains("ca.pem"));
    assert_eq!(Role::parse("root"), Err("unknown role \"root\": expected viewer, operator or admin".into()));
    // A certificate without a blixard:// identity.
    let plain = rcgen::generate_simple_self_signed(vec!["example.com".into()]).unwrap();
    assert!(of_der(plain.cert.der()).unwrap_err().contains("names no blixard://"));
    assert!(of_der(b"junk").is_err());
}

#[test]
fn a_reissued_certificate_is_picked_up_by_reload() {
    let d = tempfile::tempdir().unwrap();
    let ca = d.path().join("ca");
    init_ca(&ca).unwrap();
    let n = d.path().join("n1");
    issue_node(&ca, 1, "localhost:7001", &n).unwrap();
    let tls = NodeTls::open(&n, 1).unwrap();
    assert!(!tls.reload(false).unwrap(), "nothing changed");
    let before = load_certs(&n.join(NODE_CERT)).unwrap();
    issue_node(&ca, 1, "localhost:7001", &n).unwrap();
    assert_ne!(before, load_certs(&n.join(NODE_CERT)).unwrap());
    assert!(tls.reload(true).unwrap());
    // A broken file keeps the loaded configuration in use.
    std::fs::write(n.join(NODE_KEY), "junk").unwrap();
    assert!(tls.reload(true).is_err());
    let _still = tls.get();
}

#[test]
fn a_ca_file_with_two_cas_trusts_both() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    init_ca(&a).unwrap();
    init_ca(&b).unwrap();
    let both = d.path().join("both");
    std::fs::create_dir(&both).unwrap();
    let bundle = [std::fs::read(a.join(CA_CERT)).unwrap(), std::fs::read(b.join(CA_CERT)).unwrap()].concat();
    std::fs::write(both.join(CA_CERT), bundle).unwrap();
    let from_a = issue_client(&a, "x", None, &d.path().join("x")).unwrap();
    let from_b = issue_client(&b, "y", None, &d.path().join("y")).unwrap();
    assert!(verifies(&both, &from_a));
    assert!(verifies(&both, &from_b));
}
