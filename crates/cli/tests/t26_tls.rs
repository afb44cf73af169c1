//! Mutual TLS on the node's one port (`blixard node --tls-dir`): a cluster of real processes
//! with certificates from `blixard cert`, and what an attacker on the network can and cannot do
//! against it: connect without a certificate, with one from another CA, or with a real node
//! certificate that claims to be another node.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use blixard_tls::rustls::{self, pki_types::ServerName};
use common::*;

/// Runs `blixard ARGS` (no --addr added).
fn blixard(args: &[&str]) -> Output {
    Command::new(BIN).args(args).env_remove("BLIXARD_TLS_DIR").output().expect("run blixard")
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    stdout(&o)
}

/// The CLI against `addr` with the client certificates in `tls`.
fn tls_cli(addr: &str, tls: &Path, args: &[&str]) -> Output {
    let mut a = vec!["--addr", addr, "--tls-dir", tls.to_str().unwrap()];
    a.extend_from_slice(args);
    blixard(&a)
}

fn status(addr: &str, tls: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&tls_cli(addr, tls, &["cluster", "status", "-o", "json"]).stdout).ok()
}

struct TlsCluster {
    nodes: Vec<TestNode>,
    ca: PathBuf,
    /// An admin client's certificates.
    client: PathBuf,
    tmp: tempfile::TempDir,
}

impl TlsCluster {
    fn node_dir(&self, id: u64) -> PathBuf {
        self.ca.join(format!("node-{id}"))
    }

    fn addr(&self, id: u64) -> String {
        self.nodes[id as usize - 1].addr.clone()
    }

    /// A 3-node TLS cluster: node 1 bootstraps, 2 and 3 join through it. With `compacted`, node
    /// 1 compacts its log before they join, so they catch up by snapshot (over TLS).
    fn start(compacted: bool) -> TlsCluster {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca");
        ok(blixard(&["cert", "init", "--dir", ca.to_str().unwrap()]));
        let client = ca.join("client-alice");
        ok(blixard(&["cert", "client", "--dir", ca.to_str().unwrap(), "--name", "alice", "--role", "admin"]));
        let mut c = TlsCluster { nodes: Vec::new(), ca, client, tmp };
        for id in 1..=3u64 {
            let addr = format!("127.0.0.1:{}", free_port());
            let ca = c.ca.to_str().unwrap().to_string();
            ok(blixard(&["cert", "node", "--dir", &ca, "--id", &id.to_string(), "--addr", &addr]));
            let mut n = TestNode::with_addr(id, &c.tmp.path().join(format!("n{id}")), &addr);
            let tls = c.node_dir(id);
            let mut extra = vec!["--tls-dir", tls.to_str().unwrap()];
            if compacted {
                extra.extend(["--snapshot-entries", "10", "--keep-entries", "2"]);
            }
            let seed = c.nodes.first().map(|n: &TestNode| n.addr.clone());
            if let Some(s) = &seed {
                extra.extend(["--join", s.as_str()]);
            }
            n.spawn(&extra);
            c.nodes.push(n);
            if id == 1 {
                let (addr, client) = (c.addr(1), c.client.clone());
                wait_until("node 1 to lead", Duration::from_secs(180), || {
                    let v = status(&addr, &client)?;
                    (v["role"] == "leader" && v["members"][0]["memory_mib"].is_u64()).then_some(())
                });
                for i in 0..(if compacted { 25 } else { 0 }) {
                    ok(tls_cli(&addr, &client, &["kv", "put", &format!("early{i}"), "x"]));
                }
            }
        }
        c.wait_voters();
        c
    }

    /// Waits until 3 voters are reachable with a leader; returns the leader's id.
    fn wait_voters(&self) -> u64 {
        wait_until("3 reachable voters with a leader", Duration::from_secs(120), || {
            self.nodes.iter().filter(|n| n.running()).find_map(|n| {
                let st = status(&n.addr, &self.client)?;
                let ms = st["members"].as_array()?;
                let voters = ms
                    .iter()
                    .filter(|m| m["membership"] == "voter" && m["reachable"] == true && m["memory_mib"].is_u64())
                    .count();
                (voters == 3).then(|| st["leader_id"].as_u64()).flatten()
            })
        })
    }
}

/// A TLS client configuration trusting `ca_pem`, presenting `auth` (certificate and key files).
fn client_config(ca_pem: &Path, auth: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    Arc::new(blixard_tls::config::client_config(ca_pem, auth).unwrap())
}

/// Opens a TLS connection to `addr` and writes `bytes`; returns the stream.
fn tls_send(
    addr: &str,
    cfg: Arc<rustls::ClientConfig>,
    bytes: &[u8],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // With TLS 1.3 the client finishes its handshake first: a refusal shows on the next read.
    let _ = s.write_all(bytes);
    let _ = s.flush();
    s
}

/// What the node does with a connection: answers (some bytes), or closes or refuses it.
fn answered(mut s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> Result<usize, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 1024];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Err("closed".into()),
            Ok(n) => return Ok(n),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("silent".into())
}

/// Whether the node closes the connection (EOF, reset or a TLS alert) within 5 s.
fn closed_within(mut s: rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 256];
    while std::time::Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The peer preamble of crates/node/src/transport/wire.rs.
fn preamble(from: u64, addr: &str) -> Vec<u8> {
    let mut b = b"BLXRAFT1".to_vec();
    b.extend_from_slice(&from.to_le_bytes());
    b.extend_from_slice(&(addr.len() as u16).to_le_bytes());
    b.extend_from_slice(addr.as_bytes());
    b
}

fn frame(msgs: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    for m in msgs {
        body.extend_from_slice(&(m.len() as u32).to_le_bytes());
        body.extend_from_slice(m);
    }
    let mut f = (body.len() as u32).to_le_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// A raft-rs heartbeat (msg_type 8) at `term` from `from` to `to` (protobuf varint fields).
fn heartbeat(from: u8, to: u8, term: u8) -> Vec<u8> {
    vec![0x08, 8, 0x10, to, 0x18, from, 0x20, term]
}

#[test]
fn a_tls_cluster_serves_certified_clients_and_refuses_everyone_else() {
    let c = TlsCluster::start(true);
    let leader = c.wait_voters();
    // Nodes 2 and 3 caught up by snapshot, sent over TLS by node 1.
    for id in [2, 3] {
        assert!(c.nodes[id - 1].log().contains("received snapshot"), "node {id} got no snapshot");
        let got = ok(tls_cli(&c.addr(id as u64), &c.client, &["kv", "get", "early24"]));
        assert_eq!(got.trim(), "x");
    }

    // Writes through every node (followers forward to the leader over TLS), reads back anywhere.
    for id in 1..=3u64 {
        ok(tls_cli(&c.addr(id), &c.client, &["kv", "put", &format!("k{id}"), &format!("v{id}")]));
    }
    for id in 1..=3u64 {
        let got = ok(tls_cli(&c.addr(4 - id), &c.client, &["kv", "get", &format!("k{id}")]));
        assert_eq!(got.trim(), format!("v{id}"));
    }
    // Every client command speaks TLS, the later ones too (tasks, tokens).
    ok(tls_cli(&c.addr(1), &c.client, &["task", "list"]));
    ok(tls_cli(&c.addr(2), &c.client, &["token", "list"]));

    // The CLI without certificates: a clear error, at once.
    let started = std::time::Instant::now();
    let o = blixard(&["--addr", &c.addr(1), "kv", "get", "k1"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("requires mutual TLS: give --tls-dir"), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());

    let ca_pem = c.ca.join("ca.pem");
    let target = c.addr(leader);
    // A certified client's connection is answered (an HTTP/2 SETTINGS frame)...
    let alice = client_config(&ca_pem, Some((&c.client.join("client.pem"), &c.client.join("client-key.pem"))));
    assert!(answered(tls_send(&target, alice.clone(), H2_PREFACE)).is_ok());
    // ...one without a certificate is refused...
    let r = answered(tls_send(&target, client_config(&ca_pem, None), H2_PREFACE));
    assert!(r.is_err(), "a client without a certificate was answered");
    // ...and so is one whose certificate another CA signed.
    let other = c.tmp.path().join("other-ca");
    ok(blixard(&["cert", "init", "--dir", other.to_str().unwrap()]));
    ok(blixard(&["cert", "client", "--dir", other.to_str().unwrap(), "--name", "alice", "--role", "admin"]));
    let (oc, ok_) = (other.join("client-alice/client.pem"), other.join("client-alice/client-key.pem"));
    let r = answered(tls_send(&target, client_config(&ca_pem, Some((&oc, &ok_))), H2_PREFACE));
    assert!(r.is_err(), "a certificate from another CA was answered");
    // A foreign node certificate cannot speak the peer protocol either.
    ok(blixard(&["cert", "node", "--dir", other.to_str().unwrap(), "--id", "1", "--addr", &target]));
    let (nc, nk) = (other.join("node-1/node.pem"), other.join("node-1/node-key.pem"));
    let mut forged = preamble(1, "127.0.0.1:9");
    forged.extend_from_slice(&frame(&[&heartbeat(1, leader as u8, 100)]));
    assert!(closed_within(tls_send(&target, client_config(&ca_pem, Some((&nc, &nk))), &forged)));
    // A client certificate of this CA may not speak the peer protocol.
    assert!(closed_within(tls_send(&target, alice, &forged)));
    // Plaintext peer traffic gets a TLS alert at most, and the connection closed.
    let mut plain = TcpStream::connect(&target).unwrap();
    plain.write_all(&forged).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(got.is_empty() || got[0] == 0x15, "plaintext peer traffic answered with {got:?}");

    let st = status(&target, &c.client).unwrap();
    assert_eq!(st["leader_id"].as_u64(), Some(leader));
    assert!(st["term"].as_u64().unwrap() < 100);
}

#[test]
fn a_node_certificate_cannot_speak_for_another_node_and_rotated_certificates_are_used() {
    let c = TlsCluster::start(false);
    let leader = c.wait_voters();
    let ca_pem = c.ca.join("ca.pem");
    // Node 3's real certificate, used to send heartbeats that claim to come from node 1 at a
    // far higher term, to node 2.
    let before = status(&c.addr(2), &c.client).unwrap();
    let n3 = c.node_dir(3);
    let node3 = client_config(&ca_pem, Some((&n3.join("node.pem"), &n3.join("node-key.pem"))));
    let m = heartbeat(1, 2, 100);
    let mut honest_preamble = preamble(3, &c.addr(3));
    honest_preamble.extend_from_slice(&frame(&[&m, &m]));
    let s1 = tls_send(&c.addr(2), node3.clone(), &honest_preamble);
    let mut lying_preamble = preamble(1, "127.0.0.1:9");
    lying_preamble.extend_from_slice(&frame(&[&m]));
    let s2 = tls_send(&c.addr(2), node3, &lying_preamble);
    wait_until("node 2 to count the forged messages", Duration::from_secs(10), || {
        let log = c.nodes[1].log();
        log.contains("dropped raft messages whose from is not the node its certificate names").then_some(())
    });
    // Writes still commit and neither the term nor the leader moved.
    ok(tls_cli(&c.addr(2), &c.client, &["kv", "put", "after", "forgery"]));
    let after = status(&c.addr(2), &c.client).unwrap();
    assert_eq!(after["term"], before["term"], "a forged heartbeat changed the term");
    assert_eq!(after["leader_id"].as_u64(), Some(leader));
    assert!(c.nodes[1].log().contains("a peer connection's preamble claims another node"));
    drop((s1, s2));

    // Rotation: node 1's certificate is issued again; after SIGHUP new connections get it.
    let n1 = c.node_dir(1);
    let old = std::fs::read(n1.join("node.pem")).unwrap();
    ok(blixard(&["cert", "node", "--dir", c.ca.to_str().unwrap(), "--id", "1", "--addr", &c.addr(1)]));
    let new = blixard_tls::config::load_certs(&n1.join("node.pem")).unwrap().remove(0);
    assert_ne!(old, std::fs::read(n1.join("node.pem")).unwrap());
    let pid = c.nodes[0].pid().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    let alice = client_config(&ca_pem, Some((&c.client.join("client.pem"), &c.client.join("client-key.pem"))));
    wait_until("node 1 to present its new certificate", Duration::from_secs(10), || {
        let mut s = tls_send(&c.addr(1), alice.clone(), H2_PREFACE);
        read_once(&mut s);
        let presented = s.conn.peer_certificates()?.first()?.clone();
        (presented == new).then_some(())
    });
    // Node 2 too, without a signal: the changed files are noticed.
    let n2 = c.node_dir(2);
    ok(blixard(&["cert", "node", "--dir", c.ca.to_str().unwrap(), "--id", "2", "--addr", &c.addr(2)]));
    let new2 = blixard_tls::config::load_certs(&n2.join("node.pem")).unwrap().remove(0);
    wait_until("node 2 to present its new certificate", Duration::from_secs(10), || {
        let mut s = tls_send(&c.addr(2), alice.clone(), H2_PREFACE);
        read_once(&mut s);
        let presented = s.conn.peer_certificates()?.first()?.clone();
        (presented == new2).then_some(())
    });
    // Peers reconnecting to the restarted node 1 check its new certificate: the cluster carries on.
    let mut c = c;
    c.nodes[0].kill9();
    c.nodes[0].spawn(&["--tls-dir", n1.to_str().unwrap()]);
    c.wait_voters();
    for id in 1..=3u64 {
        ok(tls_cli(&c.addr(id), &c.client, &["kv", "put", &format!("rotated{id}"), "yes"]));
    }
}

/// Reads once, to finish the handshake.
fn read_once(s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>) {
    let mut buf = [0u8; 256];
    let _ = s.read(&mut buf);
}

#[test]
fn the_cli_with_certificates_against_a_plaintext_node_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    ok(blixard(&["cert", "init", "--dir", ca.to_str().unwrap()]));
    ok(blixard(&["cert", "client", "--dir", ca.to_str().unwrap(), "--name", "bob"]));
    let n = TestNode::start(1, &tmp.path().join("n1"));
    wait_until("the plaintext node to answer", Duration::from_secs(60), || {
        blixard(&["--addr", &n.addr, "cluster", "status"]).status.success().then_some(())
    });
    assert!(n.log().contains("serving plaintext on loopback"), "{}", n.log());
    let o = tls_cli(&n.addr, &ca.join("client-bob"), &["kv", "get", "x"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("the node does not speak TLS"), "{}", stderr(&o));

    // A node given another node's certificate refuses to start, before touching its data dir.
    ok(blixard(&["cert", "node", "--dir", ca.to_str().unwrap(), "--id", "2", "--addr", "127.0.0.1:1"]));
    let dir = tmp.path().join("n9");
    let o = blixard(&[
        "node",
        "--id",
        "9",
        "--bind",
        &format!("127.0.0.1:{}", free_port()),
        "--data-dir",
        dir.to_str().unwrap(),
        "--tls-dir",
        ca.join("node-2").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("names node 2, but this is node 9"), "{}", stderr(&o));
    assert!(!dir.exists(), "the data dir was created");

    // Plaintext on an address other than loopback must be asked for.
    let bind = format!("0.0.0.0:{}", free_port());
    let o = blixard(&["node", "--id", "9", "--bind", &bind, "--data-dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("refusing to serve plaintext on 0.0.0.0"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--insecure"), "{}", stderr(&o));
    assert!(!dir.exists(), "the data dir was created");
}
