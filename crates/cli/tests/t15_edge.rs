//! Input and output at the edges: answers bigger than one gRPC message, values bigger than a
//! command line, hostile strings, and flags that are wrong before anything starts.

mod common;

use std::time::Duration;

use common::*;

const LEADER_WITHIN: Duration = Duration::from_secs(180);
const MIB: usize = 1 << 20;

/// A gRPC channel to `addr` for the test's own raw requests.
async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
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
