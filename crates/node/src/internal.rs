//! Commands a node proposes on its own behalf (capacity registration, observed VM state),
//! routed to the leader from whichever node it runs on.

use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::{Handle, ProposeError, Role};
use blixard_core::{Command, Outcome};
use blixard_proto::v1::internal_client::InternalClient;
use blixard_proto::v1::internal_server::Internal;
use blixard_proto::v1::{ProposeRequest, ProposeResponse};
use tonic::{Request, Response, Status};

use crate::pool::ChannelPool;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Proposes `cmd` through the leader: locally when this node leads, else via the leader's
/// `Internal.Propose`. Returns the entry index and the command's own outcome.
pub async fn propose(raft: &Handle, pool: &ChannelPool, cmd: Command) -> Result<(u64, Outcome), Status> {
    let s = raft.status();
    if s.role == Role::Leader {
        let a = tokio::time::timeout(TIMEOUT, raft.propose(cmd))
            .await
            .map_err(|_| Status::deadline_exceeded("proposal timed out"))?
            .map_err(|e| crate::status::propose(e, None))?;
        return Ok((a.index, a.outcome));
    }
    let leader =
        s.leader_id.ok_or_else(|| crate::status::propose(ProposeError::NotLeader { leader_id: None }, None))?;
    let addr = {
        let view = blixard_consensus::sm::ReadView::begin(raft.db()).map_err(crate::status::store)?;
        blixard_core::state::members(&view)
            .map_err(crate::status::store)?
            .into_iter()
            .find(|m| m.id == leader)
            .map(|m| m.addr)
            .ok_or_else(|| Status::unavailable(format!("no address known for leader {leader}")))?
    };
    let bytes = postcard::to_stdvec(&cmd).map_err(|e| Status::internal(e.to_string()))?;
    let r = InternalClient::new(pool.get(&addr)?).propose(ProposeRequest { command: bytes }).await?.into_inner();
    let outcome: Outcome =
        postcard::from_bytes(&r.outcome).map_err(|e| Status::internal(format!("undecodable outcome: {e}")))?;
    Ok((r.index, outcome))
}

pub struct InternalService {
    pub raft: Handle,
    pub pool: Arc<ChannelPool>,
}

#[tonic::async_trait]
impl Internal for InternalService {
    async fn propose(&self, req: Request<ProposeRequest>) -> Result<Response<ProposeResponse>, Status> {
        let cmd: Command = postcard::from_bytes(&req.into_inner().command)
            .map_err(|e| Status::invalid_argument(format!("invalid command: {e}")))?;
        if self.raft.status().role != Role::Leader {
            // One hop only: a follower asked by a follower says so rather than forwarding again.
            return Err(crate::status::propose(
                ProposeError::NotLeader { leader_id: self.raft.status().leader_id },
                None,
            ));
        }
        let (index, outcome) = propose(&self.raft, &self.pool, cmd).await?;
        let outcome = postcard::to_stdvec(&outcome).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(ProposeResponse { index, outcome }))
    }
}

/// This host's schedulable capacity.
pub fn host_capacity(overcommit: u32, reserve_mib: u64, memory_override: Option<u64>) -> (u32, u64) {
    let cores = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let total_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024);
    let mem = memory_override.unwrap_or_else(|| total_mib.saturating_sub(reserve_mib));
    (cores * overcommit.max(1), mem)
}
