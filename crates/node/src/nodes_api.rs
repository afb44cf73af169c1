//! `NodeService`: the nodes as the cluster knows them, drains and eligibility, and the
//! liveness heartbeat the leader answers (see [`crate::liveness`]).

use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::Handle;
use blixard_core::{Command, DrainSpec, NodeId, Query, QueryResult};
use blixard_proto::rpc;
use blixard_proto::v1::{self, error_detail::Reason};
use tonic::{Code, Request, Response, Status};

use crate::api::Api;
use crate::liveness::monitor::Monitor;

/// Drains take this long unless told otherwise.
const DEFAULT_DRAIN: Duration = Duration::from_secs(300);

#[derive(Clone)]
pub struct Nodes {
    pub api: Api,
    pub raft: Handle,
    pub monitor: Arc<Monitor>,
}

type Result<T> = std::result::Result<Response<T>, Status>;

impl Nodes {
    fn info(&self, n: blixard_core::NodeRecord) -> v1::NodeInfo {
        let addr = crate::members_addr(&self.raft, n.id).unwrap_or_default();
        let age = self.monitor.age(n.id).map(|d| d.as_millis() as u64);
        blixard_proto::orchestration::node_to_wire(n, addr, age)
    }

    async fn one(&self, id: NodeId, read: Option<v1::ReadOptions>) -> std::result::Result<v1::NodeInfo, Status> {
        match self.api.query(read, Query::Node { id }).await? {
            QueryResult::Node(Some(n)) => Ok(self.info(*n)),
            QueryResult::Node(None) => Err(Status::not_found(format!("node {id} is not a registered node"))),
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl v1::node_service_server::NodeService for Nodes {
    async fn list_nodes(&self, req: Request<v1::ListNodesRequest>) -> Result<v1::ListNodesResponse> {
        match self.api.query(req.into_inner().read, Query::Nodes).await? {
            QueryResult::Nodes(ns) => {
                Ok(Response::new(v1::ListNodesResponse { nodes: ns.into_iter().map(|n| self.info(n)).collect() }))
            }
            other => Err(Status::internal(format!("unexpected result {other:?}"))),
        }
    }

    async fn get_node(&self, req: Request<v1::GetNodeRequest>) -> Result<v1::NodeInfo> {
        let r = req.into_inner();
        Ok(Response::new(self.one(r.id, r.read).await?))
    }

    async fn drain(&self, req: Request<v1::DrainRequest>) -> Result<v1::NodeInfo> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        let drain = (!r.cancel).then(|| DrainSpec {
            deadline_ms: if r.deadline_ms == 0 { DEFAULT_DRAIN.as_millis() as u64 } else { r.deadline_ms },
            parallel: r.parallel.max(1),
        });
        self.api.write_command(session, Command::NodeDrain { id: r.id, drain }).await?;
        Ok(Response::new(self.one(r.id, None).await?))
    }

    async fn set_eligibility(&self, req: Request<v1::EligibilityRequest>) -> Result<v1::NodeInfo> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        self.api.write_command(session, Command::NodeEligibility { id: r.id, eligible: r.eligible }).await?;
        Ok(Response::new(self.one(r.id, None).await?))
    }

    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Result<v1::HeartbeatResponse> {
        // On a TLS port a node heartbeats only for itself: its certificate names it.
        #[cfg(not(madsim))]
        if let Some(id) = req.extensions().get::<crate::tls::PeerInfo>().and_then(|p| p.identity.clone()) {
            if id != blixard_tls::Identity::Node(req.get_ref().node_id) {
                return Err(Status::permission_denied(format!(
                    "a heartbeat for node {} from {id}: a node heartbeats for itself",
                    req.get_ref().node_id
                )));
            }
        }
        let r = req.into_inner();
        // Only registered nodes are remembered (the leader's table stays as large as the cluster).
        let view =
            blixard_consensus::sm::ReadView::begin(self.raft.db()).map_err(|e| Status::internal(e.to_string()))?;
        if !blixard_core::state::node_exists(&view, r.node_id).map_err(|e| Status::internal(e.to_string()))? {
            return Err(Status::not_found(format!("node {} is not a registered node", r.node_id)));
        }
        let st = self.raft.status();
        if !self.monitor.heard(r.node_id, st.role, st.term) {
            return Err(rpc::status(Code::Unavailable, "not the leader", Reason::NotApplied, None));
        }
        Ok(Response::new(v1::HeartbeatResponse { seq: r.seq, term: st.term, commit_index: st.commit }))
    }
}
