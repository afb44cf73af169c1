//! Input and output at the edges: answers bigger than one gRPC message, values bigger than a
//! command line, hostile strings, and flags that are wrong before anything starts.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LEADER_WITHIN: Duration = Duration::from_secs(180);
const MIB: usize = 1 << 20;

/// A gRPC channel to `addr` for the test's own raw requests.
async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// `blixard ARGS` with `input` on stdin.
fn cli_stdin(addr: &str, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("--addr")
        .arg(addr)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run blixard");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait for blixard");
    writer.join().unwrap();
    out
}

fn keys(v: &serde_json::Value) -> Vec<String> {
    v["pairs"].as_array().unwrap().iter().map(|p| p["key"].as_str().unwrap().to_string()).collect()
}

#[test]
fn kv_list_of_12_mib_of_values_pages_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    let value = |i: usize| vec![b'a' + i as u8; MIB];
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut kv = blixard_proto::v1::kv_service_client::KvServiceClient::new(channel(&n.addr).await);
        for i in 0..12 {
            let req = blixard_proto::v1::PutRequest { key: format!("big/{i:02}").into_bytes(), value: value(i) };
            kv.put(req).await.expect("put 1 MiB");
        }
    });
    let all = cli_json(&n.addr, &["kv", "list", "big/"]);
    let pairs = all["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 12);
    for (i, p) in pairs.iter().enumerate() {
        assert_eq!(p["key"], format!("big/{i:02}"));
        assert!(p["value"].as_str().unwrap().as_bytes() == value(i), "value of big/{i:02}");
    }
    assert_eq!((&all["more"], &all["next"]), (&serde_json::json!(false), &serde_json::Value::Null));

    // A limit stops mid-way and says where to go on; the continuation picks up right after it.
    let first = cli_json(&n.addr, &["kv", "list", "big/", "--limit", "5"]);
    assert_eq!(keys(&first), (0..5).map(|i| format!("big/{i:02}")).collect::<Vec<_>>());
    assert_eq!((&first["more"], &first["next"]), (&serde_json::json!(true), &serde_json::json!("big/04")));
    let rest = cli_json(&n.addr, &["kv", "list", "big/", "--start-after", "big/04"]);
    assert_eq!(keys(&rest), (5..12).map(|i| format!("big/{i:02}")).collect::<Vec<_>>());
    assert_eq!(rest["more"], false);

    // The table form prints every row too.
    let o = cli(&n.addr, &["kv", "list", "big/"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<String> =
        stdout(&o).lines().skip(1).map(|l| l.split_whitespace().next().unwrap_or("").to_string()).collect();
    assert_eq!(rows, (0..12).map(|i| format!("big/{i:02}")).collect::<Vec<_>>());
}

#[test]
fn vm_list_is_paged_by_count_and_name() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    for name in ["e", "a", "d", "c", "b"] {
        cli_json(&n.addr, &["vm", "create", name, "--memory", "64"]);
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["vms"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap().to_string()).collect()
    };
    let two = cli_json(&n.addr, &["vm", "list", "--limit", "2"]);
    assert_eq!(names(&two), ["a", "b"]);
    assert_eq!((&two["more"], &two["next"]), (&serde_json::json!(true), &serde_json::json!("b")));
    let rest = cli_json(&n.addr, &["vm", "list", "--start-after", "b"]);
    assert_eq!(names(&rest), ["c", "d", "e"]);
    assert_eq!((&rest["more"], &rest["next"]), (&serde_json::json!(false), &serde_json::Value::Null));
}

#[test]
fn a_1_mib_value_round_trips_through_the_cli_from_a_file_and_from_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    // Not UTF-8, every byte value present.
    let value: Vec<u8> = (0..MIB).map(|i| (i * 7 + i / 256) as u8).collect();
    let file = tmp.path().join("value.bin");
    std::fs::write(&file, &value).unwrap();
    let put = cli_json(&n.addr, &["kv", "put", "blob", "--file", file.to_str().unwrap()]);
    assert_eq!(put["key"], "blob");
    let out = tmp.path().join("out.bin");
    let o = cli(&n.addr, &["kv", "get", "blob", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read(&out).unwrap() == value, "byte-exact");
    assert_eq!(stdout(&o), "", "the value goes to the file only");
    let j = cli_json(&n.addr, &["kv", "get", "blob", "--out", out.to_str().unwrap()]);
    assert_eq!(j, serde_json::json!({"key": "blob", "out": out.to_str().unwrap(), "bytes": MIB}));

    let text = "x".repeat(MIB);
    let o = cli_stdin(&n.addr, &["kv", "put", "text", "-"], text.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(cli_json(&n.addr, &["kv", "get", "text"])["value"].as_str() == Some(text.as_str()));

    // Exactly one source of the value.
    for args in [&["kv", "put", "k"][..], &["kv", "put", "k", "v", "--file", file.to_str().unwrap()]] {
        let o = cli(&n.addr, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let o = cli(&n.addr, &["kv", "put", "k", "--file", "/nonexistent/value"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: cannot read --file /nonexistent/value"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1);
    std::fs::write(&file, vec![0u8; MIB + 1]).unwrap();
    let o = cli(&n.addr, &["kv", "put", "k", "--file", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: invalid value: must be at most 1048576 bytes"), "{}", stderr(&o));
    let o = cli_stdin(&n.addr, &["kv", "put", "k", "-"], &vec![b'y'; MIB + 1]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: invalid value: must be at most 1048576 bytes"), "{}", stderr(&o));
    assert_eq!(keys(&cli_json(&n.addr, &["kv", "list"])), ["blob", "text"]);
}

#[test]
fn a_100_kb_vm_name_is_refused_naming_the_field_and_rule() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    let name = "a".repeat(100_000);
    let o = cli(&n.addr, &["vm", "create", &name]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.starts_with("error: invalid name: must be 1 to 63 characters (got \"aaaa"), "{e}");
    assert!(e.ends_with("(100000 bytes))\n"), "{e}");
    assert!(e.len() < 200, "the name is not echoed whole: {} bytes", e.len());
    let long = "x".repeat(100_000);
    let label = format!("{long}=v");
    let path = format!("80/{long}");
    for (args, field) in [
        (&["vm", "create", "web", "--label", &label][..], "labels"),
        (&["vm", "create", "web", "--restart", &long], "restart_policy"),
        (&["vm", "create", "web", "--port", "8080:80", "--health-http", &path], "health"),
        (&["vm", "create", "web", "--kernel", &long], "kernel"),
        (&["vm", "create", "web", "--cmdline", &long], "cmdline"),
    ] {
        let o = cli(&n.addr, args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{field}: {e}");
        assert!(e.starts_with(&format!("error: invalid {field}: ")) && e.lines().count() == 1, "{e}");
        assert!(e.len() < 300, "{field}: {} bytes", e.len());
    }
    // Reads quote the name too.
    let o = cli(&n.addr, &["vm", "get", &name]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).starts_with("error: invalid name:") && stderr(&o).len() < 200, "{}", stderr(&o));
    assert_eq!(cli_json(&n.addr, &["vm", "list"])["vms"], serde_json::json!([]));
}

/// A `GetVmRequest` whose `name` (field 1, a string) is sent as arbitrary bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawGetVm {
    #[prost(bytes = "vec", tag = "1")]
    name: Vec<u8>,
}

#[test]
fn invalid_utf8_in_a_request_is_invalid_argument() {
    let tmp = tempfile::tempdir().unwrap();
    let n = TestNode::start(1, &tmp.path().join("n1"));
    n.wait_leader(LEADER_WITHIN);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async {
        let mut grpc = tonic::client::Grpc::new(channel(&n.addr).await);
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<RawGetVm, blixard_proto::v1::GetVmResponse>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static("/blixard.v1.VmService/GetVm");
        grpc.unary(tonic::Request::new(RawGetVm { name: vec![b'w', 0xff, 0xfe] }), path, codec)
            .await
            .expect_err("must be refused")
    });
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("GetVmRequest.name"), "{}", status.message());
    assert!(status.message().contains("UTF-8"), "{}", status.message());
}

#[test]
fn bad_addr_values_are_usage_errors() {
    for addr in ["127.0.0.1:99999", ":0", "127.0.0.1:0", "", "127.0.0.1", ":7001", "127.0.0.1:7001,", "a:1,b:x"] {
        let o = cli(addr, &["kv", "get", "x"]);
        assert_eq!(o.status.code(), Some(2), "--addr {addr:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--addr"), "--addr {addr:?}: {}", stderr(&o));
    }
    // Lists of endpoints parse (and then nothing answers at these).
    let (a, b) = (free_port(), free_port());
    let o = cli(&format!("127.0.0.1:{a},localhost:{b}"), &["kv", "get", "x"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
}

#[test]
fn node_flags_are_checked_before_it_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("n1");
    // A node that accepts the flag would run until stopped: it is given 20 s to refuse, then killed.
    let node = |extra: &[&str]| {
        let mut child = Command::new(BIN)
            .args(["node", "--id", "1", "--bind", "127.0.0.1:0", "--data-dir"])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run blixard node");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20)); // a poll interval
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    };
    for (args, flag, rule) in [
        (&["--advertise", "garbage"][..], "--advertise", "HOST:PORT"),
        (&["--advertise", "10.0.0.1:0"], "--advertise", "1 to 65535"),
        (&["--join", "nowhere"], "--join", "HOST:PORT"),
        (&["--memory-mib", "0"], "--memory-mib", "1.."),
    ] {
        let o = node(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains(flag) && e.contains(rule), "{args:?}: {e}");
    }
    assert!(!dir.exists(), "nothing was created");
}
