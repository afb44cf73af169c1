//! Roles and tokens on real processes: a node started with `--auth` writes its first admin
//! token to `<data-dir>/admin.token`; every request needs a token of a sufficient role; a
//! revocation is refused by every node once applied; expired tokens and missing tokens are
//! refused; rate limits answer `ResourceExhausted`; the audit log names the token.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A node's log without terminal colours.
fn plain_log(n: &TestNode) -> String {
    let mut out = String::new();
    let log = n.log();
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The node's audit log (`<data-dir>/audit.log`), one JSON object per line; every line must
/// parse and carry every field.
fn audit_log(n: &TestNode) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(n.dir.join("audit.log")).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}"));
            for f in ["ts", "who", "method", "name", "code", "request_id"] {
                assert!(v[f].is_string(), "audit line without {f}: {l}");
            }
            v
        })
        .collect()
}

/// Whether audit event `e` is of `method` (its last path element), by `who`, answered `code`.
fn is(e: &serde_json::Value, method: &str, who: &str, code: &str) -> bool {
    e["method"].as_str().is_some_and(|m| m.ends_with(&format!("/{method}"))) && e["who"] == who && e["code"] == code
}

/// The CLI with a token (or none).
fn as_(addr: &str, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut a: Vec<&str> = Vec::new();
    if let Some(t) = token {
        a.extend(["--token", t]);
    }
    a.extend_from_slice(args);
    cli(addr, &a)
}

fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}", stderr(o));
    stdout(o)
}

fn refused(o: &std::process::Output, what: &str, needle: &str) {
    assert!(!o.status.success(), "{what} succeeded but must be refused");
    let e = stderr(o);
    assert!(e.contains(needle), "{what}: expected {needle:?} in {e:?}");
}

/// The admin token a new `--auth` node writes, once it is there.
fn admin_token(dir: &Path) -> String {
    let path = dir.join("admin.token");
    let t = wait_until("the first admin token", Duration::from_secs(60), || {
        std::fs::read_to_string(&path).ok().filter(|s| s.ends_with('\n'))
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "admin.token must be readable by its owner only");
    t.trim().to_string()
}

fn create(addr: &str, admin: &str, role: &str, name: &str, extra: &[&str]) -> String {
    let mut a = vec!["token", "create", "--role", role, "--name", name];
    a.extend_from_slice(extra);
    let secret = ok(&as_(addr, Some(admin), &a), "token create").trim().to_string();
    assert!(secret.starts_with("blx_") && secret.len() == 68, "{secret:?}");
    secret
}

/// Starts an `--auth` node; returns it and the admin token.
fn auth_node(dir: &Path, extra: &[&str]) -> (TestNode, String) {
    let mut args = vec!["--auth"];
    args.extend_from_slice(extra);
    let n = TestNode::start_with(1, dir, &args);
    let admin = admin_token(dir);
    (n, admin)
}

#[test]
fn roles_decide_who_may_do_what_and_the_audit_log_names_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, admin) = auth_node(&tmp.path().join("n1"), &[]);
    let a = n.addr.as_str();

    // No token at all, or a made-up one: Unauthenticated, with the way out in the message.
    refused(&as_(a, None, &["kv", "get", "k"]), "a read without a token", "needs a token");
    refused(&as_(a, None, &["cluster", "status"]), "status without a token", "needs a token");
    refused(&as_(a, Some("blx_forged"), &["kv", "get", "k"]), "a forged token", "unknown or revoked token");

    let viewer = create(a, &admin, "viewer", "ro", &[]);
    let operator = create(a, &admin, "operator", "ops", &[]);

    // A viewer reads and cannot write.
    ok(&as_(a, Some(&operator), &["kv", "put", "k", "v1"]), "an operator's put");
    assert_eq!(ok(&as_(a, Some(&viewer), &["kv", "get", "k"]), "a viewer's get").trim(), "v1");
    refused(&as_(a, Some(&viewer), &["kv", "put", "k", "v2"]), "a viewer's put", "needs role operator");
    refused(&as_(a, Some(&viewer), &["kv", "delete", "k"]), "a viewer's delete", "token:ro has role viewer");

    // An operator cannot change membership or manage tokens.
    refused(
        &as_(a, Some(&operator), &["cluster", "leave", "--node-id", "1"]),
        "an operator's leave",
        "needs role admin",
    );
    refused(
        &as_(a, Some(&operator), &["token", "create", "--role", "admin"]),
        "an operator minting an admin token",
        "needs role admin",
    );
    refused(&as_(a, Some(&viewer), &["token", "list"]), "a viewer listing tokens", "needs role admin");

    // An admin lists (no secrets) and revokes; the revoked token is refused at once.
    let list = ok(&as_(a, Some(&admin), &["token", "list", "-o", "json"]), "token list");
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = v.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 3, "{list}");
    for want in ["admin", "ro", "ops"] {
        assert!(names.contains(&want), "{want} missing from {list}");
    }
    assert!(!list.contains(&viewer) && !list.contains("secret"), "a listing shows no secret: {list}");
    ok(&as_(a, Some(&admin), &["token", "revoke", "ops"]), "revoke");
    refused(&as_(a, Some(&operator), &["kv", "put", "k", "v3"]), "a revoked token", "unknown or revoked token");
    refused(&as_(a, Some(&admin), &["token", "revoke", "ops"]), "revoking twice", "not found");

    // The audit log says who did what to which key, and who was refused.
    let audit = wait_until("audit lines", Duration::from_secs(10), || {
        let a = audit_log(&n);
        // The second revocation is the last audited request: once it is written, so is all before it.
        let revokes = a.iter().filter(|e| e["method"].as_str().is_some_and(|m| m.ends_with("/RevokeToken"))).count();
        (revokes >= 2).then_some(a)
    });
    let put = audit.iter().find(|e| is(e, "Put", "token:ops", "OK"));
    assert!(put.is_some_and(|e| e["name"] == "k"), "the operator's put is audited with its key: {audit:#?}");
    assert!(put.is_some_and(|e| e["request_id"].as_str().is_some_and(|r| !r.is_empty())), "{audit:#?}");
    assert!(
        audit.iter().any(|e| is(e, "Put", "token:ro", "PERMISSION_DENIED")),
        "the viewer's refused put is audited: {audit:#?}"
    );
    assert!(
        audit.iter().any(|e| is(e, "RevokeToken", "token:admin", "OK") && e["name"] == "ops"),
        "the revocation is audited: {audit:#?}"
    );
    assert!(!audit.iter().any(|e| e["method"].as_str().is_some_and(|m| m.ends_with("/Get"))), "reads are not audited");
    let log = plain_log(&n) + &std::fs::read_to_string(n.dir.join("audit.log")).unwrap();
    assert!(!log.contains(&admin[4..]) && !log.contains(&viewer[4..]), "no secret reaches the logs");
}

#[test]
fn an_expired_token_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, admin) = auth_node(&tmp.path().join("n1"), &[]);
    let short = create(&n.addr, &admin, "viewer", "short", &["--ttl", "2s"]);
    ok(&as_(&n.addr, Some(&short), &["kv", "list"]), "a fresh token");
    wait_until("the token to expire", Duration::from_secs(20), || {
        let o = as_(&n.addr, Some(&short), &["kv", "list"]);
        (!o.status.success()).then_some(())
    });
    refused(&as_(&n.addr, Some(&short), &["kv", "list"]), "an expired token", "expired");
    refused(&as_(&n.addr, Some(&admin), &["token", "create", "--role", "viewer", "--ttl", "0s"]), "a zero ttl", "ttl");
}

#[test]
fn rate_limits_answer_resource_exhausted_with_a_retry_hint() {
    let tmp = tempfile::tempdir().unwrap();
    let (n, admin) = auth_node(&tmp.path().join("n1"), &["--rate-requests", "5"]);
    // Each CLI run makes one or two requests: a few dozen in a row exceed 5 per second.
    let hit = (0..40).find_map(|_| {
        let o = as_(&n.addr, Some(&admin), &["kv", "get", "x"]);
        let e = stderr(&o);
        (!o.status.success() && e.contains("rate limit")).then_some(e)
    });
    let e = hit.expect("the rate limit was never hit");
    assert!(e.contains("requests per second") && e.contains("token:admin") && e.contains("retry in"), "{e}");
    // The limit is per caller: anonymous requests from the same address have their own bucket
    // (and are refused for want of a token, not for the rate).
    refused(&as_(&n.addr, None, &["kv", "get", "x"]), "no token", "needs a token");

    // Written bytes: a 16 KiB value against 1 KiB per second is admitted once (15 s of debt), then
    // the next write of that caller waits.
    let tmp2 = tempfile::tempdir().unwrap();
    let (m, admin2) = auth_node(&tmp2.path().join("n1"), &["--rate-write-bytes", "1024"]);
    let big = "v".repeat(16 * 1024);
    ok(&as_(&m.addr, Some(&admin2), &["kv", "put", "big", &big]), "the first big write");
    let o = as_(&m.addr, Some(&admin2), &["kv", "put", "big2", &big]);
    refused(&o, "a write while in debt", "written bytes per second");
}

#[test]
fn a_revoked_token_is_refused_by_every_node_of_a_three_node_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let d1 = tmp.path().join("n1");
    let (n1, admin) = auth_node(&d1, &[]);
    // Joining nodes present the admin token (plaintext: no node certificate to go by).
    let mut nodes = vec![n1];
    for id in 2..=3u64 {
        let seed = nodes[0].addr.clone();
        let n = TestNode::start_with(
            id,
            &tmp.path().join(format!("n{id}")),
            &["--auth", "--join", &seed, "--token", &admin],
        );
        nodes.push(n);
    }
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    wait_until("3 voters", Duration::from_secs(120), || {
        let o = as_(&addrs[0], Some(&admin), &["cluster", "status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let voters = v["members"].as_array()?.iter().filter(|m| m["membership"] == "voter").count();
        (voters == 3).then_some(())
    });
    for n in &nodes[1..] {
        assert!(!n.dir.join("admin.token").exists(), "only a new cluster's first node writes an admin token");
    }
    let op = create(&addrs[0], &admin, "operator", "everywhere", &[]);
    for a in &addrs {
        // The create is applied on every node in a moment.
        wait_until("the token on every node", Duration::from_secs(20), || {
            as_(a, Some(&op), &["kv", "list", "--stale"]).status.success().then_some(())
        });
    }
    ok(&as_(&addrs[2], Some(&op), &["kv", "put", "x", "1"]), "a put through a follower");
    ok(&as_(&addrs[1], Some(&admin), &["token", "revoke", "everywhere"]), "revoke through a follower");
    for a in &addrs {
        wait_until("the revocation on every node", Duration::from_secs(20), || {
            let o = as_(a, Some(&op), &["kv", "list", "--stale"]);
            (!o.status.success() && stderr(&o).contains("unknown or revoked token")).then_some(())
        });
        refused(&as_(a, Some(&op), &["kv", "put", "x", "2"]), "a revoked token's write", "unknown or revoked token");
    }
}

#[test]
fn without_auth_nothing_changes_but_writes_are_still_audited() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start_with(1, &tmp.path().join("n1"), &[]);
    n.wait_leader(Duration::from_secs(60));
    assert!(!n.dir.join("admin.token").exists(), "no admin token without --auth");
    ok(&as_(&n.addr, None, &["kv", "put", "open", "1"]), "a put without a token");
    wait_until("an audit line", Duration::from_secs(10), || {
        audit_log(&n).iter().any(|e| is(e, "Put", "anonymous@127.0.0.1", "OK") && e["name"] == "open").then_some(())
    });
}

#[test]
fn with_mutual_tls_a_client_certificate_carries_the_role_and_nodes_go_by_theirs() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = tmp.path().join("ca");
    let cas = ca.to_str().unwrap();
    let run = |args: &[&str]| ok(&std::process::Command::new(BIN).args(args).output().unwrap(), "blixard cert");
    run(&["cert", "init", "--dir", cas]);
    run(&["cert", "client", "--dir", cas, "--name", "alice", "--role", "admin"]);
    run(&["cert", "client", "--dir", cas, "--name", "vera", "--role", "viewer"]);
    run(&["cert", "client", "--dir", cas, "--name", "nora"]);
    let addrs: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    for (i, a) in addrs.iter().enumerate() {
        run(&["cert", "node", "--dir", cas, "--id", &(i + 1).to_string(), "--addr", a]);
    }
    let tls = |who: &str| ca.join(who).to_str().unwrap().to_string();
    let with = |who: &str, token: Option<&str>, args: &[&str]| {
        let mut a = vec!["--tls-dir".to_string(), tls(who)];
        if let Some(t) = token {
            a.extend(["--token".to_string(), t.to_string()]);
        }
        a.extend(args.iter().map(|s| s.to_string()));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        cli(&addrs[0], &a)
    };
    let mut n1 = TestNode::with_addr(1, &tmp.path().join("n1"), &addrs[0]);
    n1.spawn(&["--auth", "--tls-dir", &tls("node-1")]);
    let admin = admin_token(&n1.dir);
    // The second node joins by its node certificate alone (no token).
    let mut n2 = TestNode::with_addr(2, &tmp.path().join("n2"), &addrs[1]);
    n2.spawn(&["--auth", "--tls-dir", &tls("node-2"), "--join", &addrs[0]]);
    // Both reachable: the status asks each member for its own (a peer-only method, served to
    // the node's certificate).
    wait_until("2 voters, both reachable", Duration::from_secs(120), || {
        let o = with("client-alice", None, &["cluster", "status", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let ms = v["members"].as_array()?;
        (ms.iter().filter(|m| m["membership"] == "voter" && m["reachable"] == true).count() == 2).then_some(())
    });
    ok(&with("client-alice", None, &["kv", "put", "k", "1"]), "an admin certificate's put");
    assert_eq!(ok(&with("client-vera", None, &["kv", "get", "k"]), "a viewer certificate's get").trim(), "1");
    refused(
        &with("client-vera", None, &["kv", "put", "k", "2"]),
        "a viewer certificate's put",
        "cert:vera has role viewer",
    );
    // The certificate's role counts instead of a token: a viewer certificate with an admin token stays a viewer.
    refused(
        &with("client-vera", Some(&admin), &["kv", "put", "k", "2"]),
        "viewer cert + admin token",
        "needs role operator",
    );
    // A certificate without a role needs a token.
    refused(&with("client-nora", None, &["kv", "get", "k"]), "a role-less certificate", "needs a token");
    ok(&with("client-nora", Some(&admin), &["kv", "put", "k", "3"]), "a role-less certificate with a token");
    // Audit lines reach the file in batches: wait for the refused put itself (a deadline, not
    // the first line that happens to be written).
    let audit = wait_until("the viewer certificate's refused put in the audit log", Duration::from_secs(10), || {
        let a: Vec<_> = audit_log(&n1).into_iter().chain(audit_log(&n2)).collect();
        a.iter().any(|e| is(e, "Put", "cert:vera", "PERMISSION_DENIED")).then_some(a)
    });
    assert!(audit.iter().any(|e| is(e, "Put", "cert:alice", "OK")), "{audit:#?}");
}
