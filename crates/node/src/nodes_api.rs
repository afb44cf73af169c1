//! `NodeService`: the nodes as the cluster knows them, drains and eligibility, and the
//! liveness heartbeat the leader answers (see [`crate::liveness`]).

use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::Handle;
use blixard_core::{Command, DrainSpec, NodeId, NodeState, Query, QueryResult};
use blixard_proto::rpc;
use blixard_proto::v1::{self, error_detail::Reason};
use tonic::{Code, Request, Response, Status};

use crate::api::Api;
use crate::liveness::monitor::Monitor;

/// Drains take this long unless told otherwise.
const DEFAULT_DRAIN: Duration = Duration::from_secs(300);
/// How long `vm get` and `node get` wait for the usage of VMs on another node.
const USAGE_TIMEOUT: Duration = Duration::from_secs(1);

fn usage_to_wire(u: crate::metrics::usage::VmUsage) -> v1::VmUsage {
    v1::VmUsage {
        vm: u.name,
        incarnation: u.incarnation,
        pid: u.pid,
        cpu_seconds: u.cpu_seconds,
        memory_rss_bytes: u.resident_bytes,
    }
}

/// The usage of the VMs node `node` runs (only `vm` when given), measured now on that node:
/// here, or asked of it with the caller's token (`auth`). `Err` says why it is unknown.
pub async fn usage_on(
    api: &Api,
    raft: &Handle,
    node: NodeId,
    vm: Option<&str>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> std::result::Result<Vec<v1::VmUsage>, String> {
    if node == raft.status().id {
        let local = crate::metrics::usage::local(node, raft, vm).map_err(|e| e.to_string())?;
        return Ok(local.into_iter().map(usage_to_wire).collect());
    }
    let ch = api.channel_to(node).map_err(|s| s.message().to_string())?;
    let req = crate::api::with_auth(Request::new(v1::UsageRequest { vm: vm.unwrap_or_default().into() }), auth);
    match tokio::time::timeout(USAGE_TIMEOUT, v1::node_service_client::NodeServiceClient::new(ch).usage(req)).await {
        Ok(Ok(r)) => Ok(r.into_inner().vms),
        Ok(Err(s)) => Err(format!("node {node} did not answer: {}", s.message())),
        Err(_) => Err(format!("node {node} did not answer within {USAGE_TIMEOUT:?}")),
    }
}

/// The sum of `vms`' usage.
pub fn node_usage(vms: &[v1::VmUsage]) -> v1::NodeUsage {
    v1::NodeUsage {
        vms: vms.len() as u32,
        cpu_seconds: vms.iter().map(|u| u.cpu_seconds).sum(),
        memory_rss_bytes: vms.iter().map(|u| u.memory_rss_bytes).fold(0, u64::saturating_add),
    }
}

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
        let auth = req.metadata().get(crate::api::AUTHORIZATION).cloned();
        let r = req.into_inner();
        let mut info = self.one(r.id, r.read).await?;
        if info.status == NodeState::Down.as_str() {
            info.usage_unavailable = format!("node {} is down", r.id);
        } else {
            match usage_on(&self.api, &self.raft, r.id, None, auth).await {
                Ok(vms) => info.usage = Some(node_usage(&vms)),
                Err(why) => info.usage_unavailable = why,
            }
        }
        Ok(Response::new(info))
    }

    async fn usage(&self, req: Request<v1::UsageRequest>) -> Result<v1::UsageResponse> {
        let vm = req.into_inner().vm;
        if !vm.is_empty() {
            blixard_core::spec::validate_name(&vm).map_err(crate::status::invalid)?;
        }
        let node = self.raft.status().id;
        let vms = crate::metrics::usage::local(node, &self.raft, Some(vm.as_str()).filter(|v| !v.is_empty()))
            .map_err(crate::status::store)?;
        Ok(Response::new(v1::UsageResponse { node, vms: vms.into_iter().map(usage_to_wire).collect() }))
    }

    async fn register_simulated_nodes(
        &self,
        req: Request<v1::RegisterSimulatedNodesRequest>,
    ) -> Result<v1::RegisterSimulatedNodesResponse> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        let first_id = blixard_core::state::SIMULATED_NODE_IDS
            .checked_add(r.first)
            .filter(|f| f.checked_add(u64::from(r.count)).is_some())
            .ok_or_else(|| Status::invalid_argument("first: the ids must stay below 2^64"))?;
        if r.count == 0 || r.count as usize > blixard_core::state::MAX_SIMULATED_PER_COMMAND {
            return Err(Status::invalid_argument(format!(
                "count: must be 1 to {} (got {})",
                blixard_core::state::MAX_SIMULATED_PER_COMMAND,
                r.count
            )));
        }
        let labels: std::collections::BTreeMap<String, String> = r.labels.into_iter().collect();
        let nodes = (0..u64::from(r.count))
            .map(|i| blixard_core::Registration {
                id: first_id + i,
                vcpus: r.vcpus,
                memory_mib: r.memory_mib,
                disk_gib: r.disk_gib,
                accel: "none".into(),
                backend: "simulated".into(),
                labels: labels.clone(),
                agent_version: "simulated".into(),
            })
            .collect();
        self.api.write_command(session, Command::NodeRegisterSimulated { nodes }).await?;
        Ok(Response::new(v1::RegisterSimulatedNodesResponse { first_id, count: r.count }))
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
        let identity = peer_identity(&req);
        Ok(Response::new(self.answer(req.get_ref(), identity.as_ref())?))
    }

    type HeartbeatsStream = HeartbeatStream;

    async fn heartbeats(&self, req: Request<tonic::Streaming<v1::HeartbeatRequest>>) -> Result<HeartbeatStream> {
        // One stream per node for as long as it follows this leader: each heartbeat costs a
        // message on an open HTTP/2 stream, not a request through every layer (the unary call
        // cost the leader ~90 µs of CPU each). The checks and the answer are the same.
        let identity = peer_identity(&req);
        let input = req.into_inner();
        let out = futures::stream::unfold(Some((input, self.clone(), identity)), |state| async move {
            let (mut input, this, identity) = state?;
            let answer = match input.message().await {
                Ok(Some(r)) => this.answer(&r, identity.as_ref()),
                Ok(None) => return None,
                Err(s) => Err(s),
            };
            // A refusal ends the stream (the node opens a new one at its next heartbeat).
            let next = answer.is_ok().then_some((input, this, identity));
            Some((answer, next))
        });
        Ok(Response::new(Box::pin(out)))
    }
}

type HeartbeatStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<v1::HeartbeatResponse, Status>> + Send>>;

/// The node a TLS client certificate names (`None` on a plain port, or under simulation).
#[cfg(not(madsim))]
fn peer_identity<T>(req: &Request<T>) -> Option<blixard_tls::Identity> {
    req.extensions().get::<crate::tls::PeerInfo>().and_then(|p| p.identity.clone())
}

#[cfg(madsim)]
fn peer_identity<T>(_: &Request<T>) -> Option<()> {
    None
}

impl Nodes {
    /// The leader's answer to one heartbeat, or why it refuses it.
    #[cfg(not(madsim))]
    fn answer(
        &self,
        r: &v1::HeartbeatRequest,
        identity: Option<&blixard_tls::Identity>,
    ) -> std::result::Result<v1::HeartbeatResponse, Status> {
        // On a TLS port a node heartbeats only for itself: its certificate names it.
        if let Some(id) = identity {
            if *id != blixard_tls::Identity::Node(r.node_id) {
                return Err(Status::permission_denied(format!(
                    "a heartbeat for node {} from {id}: a node heartbeats for itself",
                    r.node_id
                )));
            }
        }
        self.answer_checked(r)
    }

    #[cfg(madsim)]
    fn answer(&self, r: &v1::HeartbeatRequest, _: Option<&()>) -> std::result::Result<v1::HeartbeatResponse, Status> {
        self.answer_checked(r)
    }

    fn answer_checked(&self, r: &v1::HeartbeatRequest) -> std::result::Result<v1::HeartbeatResponse, Status> {
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
        Ok(v1::HeartbeatResponse { seq: r.seq, term: st.term, commit_index: st.commit })
    }
}
