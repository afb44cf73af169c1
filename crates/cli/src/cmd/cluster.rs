use blixard_proto::v1::cluster_service_client::ClusterServiceClient;
use blixard_proto::v1::ClusterStatusRequest;
use serde::Serialize;

use crate::client::{call, connect};
use crate::output::{emit, Table};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Show the answering node's view of the cluster.
    Status,
}

#[derive(Serialize)]
struct MemberOut {
    id: u64,
    addr: String,
    membership: String,
}

#[derive(Serialize)]
struct StatusOut {
    node_id: u64,
    role: String,
    term: u64,
    leader_id: Option<u64>,
    leader_addr: Option<String>,
    commit_index: u64,
    applied_index: u64,
    last_index: u64,
    members: Vec<MemberOut>,
}

pub async fn run(addr: &str, fmt: Format, c: ClusterCmd) -> anyhow::Result<()> {
    let ch = connect(addr).await?;
    match c {
        ClusterCmd::Status => {
            let r = call(addr, || {
                let mut c = ClusterServiceClient::new(ch.clone());
                async move { c.status(ClusterStatusRequest {}).await }
            })
            .await?;
            let out = StatusOut {
                node_id: r.node_id,
                role: r.role,
                term: r.term,
                leader_id: Some(r.leader_id).filter(|l| *l != 0),
                leader_addr: Some(r.leader_addr).filter(|a| !a.is_empty()),
                commit_index: r.commit_index,
                applied_index: r.applied_index,
                last_index: r.last_index,
                members: r
                    .members
                    .into_iter()
                    .map(|m| MemberOut { id: m.id, addr: m.addr, membership: m.membership })
                    .collect(),
            };
            emit(fmt, &out, || {
                let mut s = format!(
                    "node {} is {} in term {}; leader: {}; commit {}, applied {}\n\n",
                    out.node_id,
                    out.role,
                    out.term,
                    match (out.leader_id, &out.leader_addr) {
                        (Some(id), Some(a)) => format!("node {id} at {a}"),
                        (Some(id), None) => format!("node {id}"),
                        _ => "none".to_string(),
                    },
                    out.commit_index,
                    out.applied_index
                );
                let mut t = Table::new(vec!["ID", "ADDR", "MEMBERSHIP", "LEADER"]);
                for m in &out.members {
                    let leader = if Some(m.id) == out.leader_id { "*" } else { "" };
                    t = t.row(vec![m.id.to_string(), m.addr.clone(), m.membership.clone(), leader.into()]);
                }
                s.push_str(&t.render());
                s
            });
        }
    }
    Ok(())
}
