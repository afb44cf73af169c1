use blixard_proto::v1::cluster_service_client::ClusterServiceClient;
use blixard_proto::v1::{ClusterStatusRequest, JoinRequest, LeaveRequest, TransferLeaderRequest};
use serde::Serialize;

use crate::client::connect;
use crate::output::{emit, Table};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Show the cluster: every member with its address, role, term, indexes, reachability.
    Status,
    /// Add a node (as a learner; it becomes a voter once caught up). The node itself is then
    /// started with `blixard node --id N --join ...`.
    Join {
        #[arg(long)]
        node_id: u64,
        /// The address the new node serves on.
        #[arg(long)]
        node_addr: String,
    },
    /// Remove a node from the cluster.
    Leave {
        #[arg(long)]
        node_id: u64,
    },
    /// Hand leadership to another voter and wait until it has moved (at most ~10 s); prints the
    /// new leader. Any node forwards the request to the leader.
    TransferLeader {
        /// The voter to lead next; without it, the most caught-up voter other than the leader.
        #[arg(long)]
        to: Option<u64>,
    },
}

/// The JSON shape of `cluster transfer-leader`.
#[derive(Serialize)]
struct TransferOut {
    previous_leader_id: u64,
    leader_id: u64,
    leader_addr: String,
    term: u64,
}

/// The JSON shape of `cluster join` and `cluster leave`.
#[derive(Serialize)]
struct MembershipOut {
    node_id: u64,
    /// Raft index of the membership change.
    index: u64,
}

#[derive(Serialize)]
struct MemberOut {
    id: u64,
    addr: String,
    membership: String,
    reachable: bool,
    role: Option<String>,
    term: Option<u64>,
    commit_index: Option<u64>,
    applied_index: Option<u64>,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
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

/// A client that agrees with the node on the largest message.
fn client(ch: tonic::transport::Channel) -> ClusterServiceClient<tonic::transport::Channel> {
    ClusterServiceClient::new(ch)
        .max_decoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
}

pub async fn run(addr: &str, fmt: Format, c: ClusterCmd) -> anyhow::Result<()> {
    let mut conn = connect(addr).await?;
    match c {
        ClusterCmd::Status => {
            let r = conn.read(ClusterStatusRequest {}, |ch, r| async move { client(ch).status(r).await }).await?;
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
                    .map(|m| MemberOut {
                        id: m.id,
                        addr: m.addr,
                        membership: m.membership,
                        reachable: m.reachable,
                        role: m.reachable.then_some(m.role),
                        term: m.reachable.then_some(m.term),
                        commit_index: m.reachable.then_some(m.commit_index),
                        applied_index: m.reachable.then_some(m.applied_index),
                        vcpus: m.vcpus,
                        memory_mib: m.memory_mib,
                    })
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
                let mut t = Table::new(vec![
                    "ID",
                    "ADDR",
                    "MEMBERSHIP",
                    "ROLE",
                    "TERM",
                    "COMMIT",
                    "APPLIED",
                    "REACHABLE",
                    "VCPUS",
                    "MEMORY",
                ]);
                let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
                for m in &out.members {
                    t = t.row(vec![
                        m.id.to_string(),
                        m.addr.clone(),
                        m.membership.clone(),
                        m.role.clone().unwrap_or_else(|| "-".into()),
                        opt(m.term),
                        opt(m.commit_index),
                        opt(m.applied_index),
                        if m.reachable { "yes".into() } else { "no".into() },
                        m.vcpus.map_or("-".into(), |v| v.to_string()),
                        m.memory_mib.map_or("-".into(), |v| format!("{v} MiB")),
                    ]);
                }
                s.push_str(&t.render());
                s
            });
        }
        ClusterCmd::Join { node_id, node_addr } => {
            let req = JoinRequest { node_id, addr: node_addr };
            let r = conn.write(req, |ch, r| async move { client(ch).join(r).await }).await?;
            let out = MembershipOut { node_id, index: r.index };
            emit(fmt, &out, || format!("node {node_id} added as a learner\n"));
        }
        ClusterCmd::Leave { node_id } => {
            let req = LeaveRequest { node_id };
            let r = conn.write(req, |ch, r| async move { client(ch).leave(r).await }).await?;
            let out = MembershipOut { node_id, index: r.index };
            emit(fmt, &out, || format!("node {node_id} removed\n"));
        }
        ClusterCmd::TransferLeader { to } => {
            if to == Some(0) {
                anyhow::bail!("--to: node ids start at 1 (got 0); leave --to out to pick any voter");
            }
            let req = TransferLeaderRequest { to: to.unwrap_or(0) };
            // Not a write (nothing goes through the log): a repeat after a lost answer is
            // harmless, at worst leadership moves once more, to a caught-up voter.
            let r = conn.read(req, |ch, r| async move { client(ch).transfer_leader(r).await }).await?;
            let out = TransferOut {
                previous_leader_id: r.previous_leader_id,
                leader_id: r.leader_id,
                leader_addr: r.leader_addr,
                term: r.term,
            };
            emit(fmt, &out, || {
                if out.previous_leader_id == out.leader_id {
                    format!("node {} at {} already leads (term {})\n", out.leader_id, out.leader_addr, out.term)
                } else {
                    format!(
                        "leadership moved from node {} to node {} at {} (term {})\n",
                        out.previous_leader_id, out.leader_id, out.leader_addr, out.term
                    )
                }
            });
        }
    }
    Ok(())
}
