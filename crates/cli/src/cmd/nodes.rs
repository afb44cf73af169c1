//! `blixard node list|get|drain|eligibility`: the nodes as the cluster knows them. (`blixard node`
//! with daemon flags and no subcommand runs a node: see [`super::node`].)

use blixard_proto::v1::node_service_client::NodeServiceClient;
use blixard_proto::v1::{self, DrainRequest, EligibilityRequest, GetNodeRequest, ListNodesRequest, ReadOptions};
use serde::Serialize;

use crate::client::connect;
use crate::output::{emit, Table};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum NodeCmd {
    /// Every registered node: status, heartbeat age (as the leader sees it), capacity, usage.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// One node.
    Get {
        id: u64,
        #[arg(long)]
        stale: bool,
    },
    /// Make a node ineligible for new work and move its VMs elsewhere.
    Drain {
        id: u64,
        /// Move every remaining VM at once after this long, e.g. 5m, 90s.
        #[arg(long, default_value = "5m", value_parser = super::vm::parse_duration)]
        deadline: std::time::Duration,
        /// VMs on the move at once (each started elsewhere before the next moves).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        parallel: u32,
        /// Stop draining.
        #[arg(long)]
        cancel: bool,
    },
    /// Whether new work may go to a node.
    Eligibility {
        id: u64,
        #[arg(value_enum)]
        state: Switch,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Switch {
    Enable,
    Disable,
}

/// The JSON shape of a node (documented in README).
#[derive(Serialize)]
struct NodeOut {
    id: u64,
    addr: String,
    status: String,
    status_since_ms: u64,
    heartbeat_age_ms: Option<u64>,
    eligible: bool,
    draining: bool,
    drain_deadline_ms: Option<u64>,
    vcpus: u32,
    memory_mib: u64,
    disk_gib: u64,
    used_vcpus: u32,
    used_memory_mib: u64,
    used_disk_gib: u64,
    vms: u32,
    accel: String,
    backend: String,
    labels: std::collections::BTreeMap<String, String>,
    agent_version: String,
    /// `node get` only: the usage of the VMs it runs, measured there now.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<super::vm_out::UsageOut>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage_unavailable: Option<Option<String>>,
}

fn out(n: v1::NodeInfo) -> NodeOut {
    NodeOut {
        id: n.id,
        addr: n.addr,
        status: n.status,
        status_since_ms: n.status_since_ms,
        heartbeat_age_ms: n.heartbeat_age_ms,
        eligible: n.eligible,
        draining: n.draining,
        drain_deadline_ms: n.draining.then_some(n.drain_deadline_ms),
        vcpus: n.vcpus,
        memory_mib: n.memory_mib,
        disk_gib: n.disk_gib,
        used_vcpus: n.used_vcpus,
        used_memory_mib: n.used_memory_mib,
        used_disk_gib: n.used_disk_gib,
        vms: n.vms,
        accel: n.accel,
        backend: n.backend,
        labels: n.labels.into_iter().collect(),
        agent_version: n.agent_version,
        usage: None,
        usage_unavailable: None,
    }
}

/// `node get`'s shape: with the usage of its VMs.
fn get_out(mut n: v1::NodeInfo) -> NodeOut {
    let usage = n.usage.take().map(|u| super::vm_out::UsageOut {
        vms: Some(u.vms),
        cpu_seconds: u.cpu_seconds,
        memory_rss_bytes: u.memory_rss_bytes,
    });
    let unavailable = Some(std::mem::take(&mut n.usage_unavailable)).filter(|s| !s.is_empty());
    NodeOut { usage: Some(usage), usage_unavailable: Some(unavailable), ..out(n) }
}

/// `node get`'s table: the node's row with the usage of its VMs.
fn get_table(n: &NodeOut) -> Table {
    let mut t = table(std::slice::from_ref(n));
    t.header.extend(["VM CPU", "VM RSS"]);
    let (usage, why) =
        (n.usage.as_ref().and_then(Option::as_ref), n.usage_unavailable.as_ref().and_then(Option::as_ref));
    if let Some(r) = t.rows.first_mut() {
        r.extend(super::vm_out::usage_cells(usage, why));
    }
    if let Some(why) = why {
        let mut note = vec![String::new(); t.header.len()];
        note[0] = format!("(usage unknown: {why})");
        t.rows.push(note);
    }
    t
}

fn table(ns: &[NodeOut]) -> Table {
    let mut t = Table::new(vec!["ID", "ADDR", "STATUS", "HEARTBEAT", "ELIGIBLE", "VMS", "VCPUS", "MEMORY", "LABELS"]);
    for n in ns {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        t = t.row(vec![
            n.id.to_string(),
            n.addr.clone(),
            if n.draining { format!("{} (draining)", n.status) } else { n.status.clone() },
            n.heartbeat_age_ms.map_or("-".into(), |a| format!("{a} ms ago")),
            n.eligible.to_string(),
            n.vms.to_string(),
            format!("{}/{}", n.used_vcpus, n.vcpus),
            format!("{}/{} MiB", n.used_memory_mib, n.memory_mib),
            labels.join(","),
        ]);
    }
    t
}

pub async fn run(addr: &str, fmt: Format, c: NodeCmd) -> anyhow::Result<()> {
    let mut conn = connect(addr).await?;
    let client = NodeServiceClient::new;
    let one = match c {
        NodeCmd::List { stale } => {
            let req = ListNodesRequest { read: Some(ReadOptions { stale }) };
            let r = conn.read(req, |ch, r| async move { client(ch).list_nodes(r).await }).await?;
            #[derive(Serialize)]
            struct Out {
                nodes: Vec<NodeOut>,
            }
            let o = Out { nodes: r.nodes.into_iter().map(out).collect() };
            emit(fmt, &o, || table(&o.nodes));
            return Ok(());
        }
        NodeCmd::Get { id, stale } => {
            let req = GetNodeRequest { id, read: Some(ReadOptions { stale }) };
            let n = conn.read(req, |ch, r| async move { client(ch).get_node(r).await }).await?;
            let o = get_out(n);
            emit(fmt, &o, || get_table(&o));
            return Ok(());
        }
        NodeCmd::Drain { id, deadline, parallel, cancel } => {
            let req = DrainRequest { id, deadline_ms: deadline.as_millis() as u64, parallel, cancel };
            conn.write(req, |ch, r| async move { client(ch).drain(r).await }).await?
        }
        NodeCmd::Eligibility { id, state } => {
            let req = EligibilityRequest { id, eligible: matches!(state, Switch::Enable) };
            conn.write(req, |ch, r| async move { client(ch).set_eligibility(r).await }).await?
        }
    };
    let o = out(one);
    emit(fmt, &o, || table(std::slice::from_ref(&o)));
    Ok(())
}
