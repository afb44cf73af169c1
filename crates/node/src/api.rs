//! gRPC handlers: parse the request into a core command or query, run it, map the result. No
//! business logic lives here.

use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::sm::ReadView;
use blixard_consensus::Handle;
use blixard_core::spec::{validate_key, validate_name, validate_value};
use blixard_core::state::Member;
use blixard_core::{Command, PageLimit, Query, QueryResult, Response, Session, VmSpec};
use blixard_proto::rpc;
use blixard_proto::v1;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::pool::ChannelPool;
use crate::status;

/// Set on a request a follower forwarded to the leader, so it is never forwarded twice.
pub(crate) const FORWARDED: &str = "x-blixard-forwarded";

/// How long a write may wait to be applied before its outcome is answered "unknown" (the client
/// may then retry it with the same session).
const WRITE_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a linearizable read may wait for Raft.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The driver answers every request by its own deadline; this only bounds a stuck driver.
const DRIVER_GRACE: Duration = Duration::from_secs(2);
const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = blixard_proto::MAX_LIST_LIMIT as usize;

#[derive(Clone)]
pub struct Api {
    raft: Handle,
    pool: Arc<ChannelPool>,
    /// This node's VM driver, once its backend is open.
    driver: Arc<std::sync::OnceLock<Arc<dyn blixard_vmm::VmDriver>>>,
}

type LogStream = std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<v1::VmLogChunk, Status>> + Send>>;

/// Console bytes per streamed chunk.
const LOG_CHUNK: usize = 64 * 1024;
/// Console history shown when a console session opens.
const CONSOLE_HISTORY: u64 = 4096;
/// How often a followed console is polled for new output.
const LOG_POLL: Duration = Duration::from_millis(100);

type Result<T> = std::result::Result<tonic::Response<T>, Status>;

fn invalid(e: blixard_core::ValidationError) -> Status {
    status::invalid(e)
}

impl Api {
    pub fn new(
        raft: Handle,
        pool: Arc<ChannelPool>,
        driver: Arc<std::sync::OnceLock<Arc<dyn blixard_vmm::VmDriver>>>,
    ) -> Self {
        Api { raft, pool, driver }
    }

    /// The node a VM is placed on (from local state).
    async fn vm_node(&self, name: &str) -> std::result::Result<u64, Status> {
        match self.read(Some(v1::ReadOptions { stale: true }), Query::VmGet { name: name.to_string() }).await? {
            QueryResult::Vm(Some(rec)) => {
                rec.node.ok_or_else(|| Status::unavailable(format!("vm {name:?} is pending: no node holds it yet")))
            }
            QueryResult::Vm(None) => Err(Status::not_found(format!("vm {name:?} not found"))),
            other => Err(unexpected(other)),
        }
    }

    /// Streams the console of a VM hosted here.
    fn local_logs(&self, name: String, follow: bool, mut offset: u64) -> std::result::Result<LogStream, Status> {
        let driver =
            self.driver.get().cloned().ok_or_else(|| Status::unavailable("this node's VM backend is not ready"))?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let chunk = match driver.read_console(&name, offset, LOG_CHUNK).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(Status::not_found(format!("console of vm {name:?}: {e}")))).await;
                        return;
                    }
                };
                offset = chunk.next_offset;
                if chunk.data.is_empty() {
                    if !follow {
                        return;
                    }
                    tokio::time::sleep(LOG_POLL).await;
                    if tx.is_closed() {
                        return;
                    }
                    continue;
                }
                if tx.send(Ok(v1::VmLogChunk { data: chunk.data, next_offset: offset })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    /// `None` when this node leads; else a channel to the leader for forwarding. A request that
    /// was already forwarded once is not forwarded again (the client retries instead).
    fn leader_channel<T>(&self, req: &Request<T>) -> std::result::Result<Option<Channel>, Status> {
        let s = self.raft.status();
        if s.role == blixard_consensus::Role::Leader {
            return Ok(None);
        }
        let not_leader = blixard_consensus::ProposeError::Unavailable { leader_id: s.leader_id };
        if req.metadata().contains_key(FORWARDED) {
            return Err(self.propose_error(not_leader));
        }
        let Some(addr) = s.leader_id.and_then(|l| self.addr_of(l)) else {
            return Err(self.propose_error(not_leader));
        };
        self.pool.get(&addr).map(Some)
    }

    fn members(&self) -> std::result::Result<Vec<Member>, Status> {
        let view = ReadView::begin(self.raft.db()).map_err(status::store)?;
        blixard_core::state::members(&view).map_err(status::store)
    }

    fn addr_of(&self, id: u64) -> Option<String> {
        self.members().ok()?.into_iter().find(|m| m.id == id).map(|m| m.addr)
    }

    /// The leader and its address, when known.
    fn leader(&self) -> Option<(u64, String)> {
        let id = self.raft.status().leader_id?;
        Some((id, self.addr_of(id).unwrap_or_default()))
    }

    fn propose_error(&self, e: blixard_consensus::ProposeError) -> Status {
        status::propose(e, self.leader())
    }

    /// Proposes and waits for the command's own result (or, for a repeated request, the one its
    /// first copy produced). A request without a session is proposed in this node's own: the
    /// node's re-proposals stay exactly-once, the client's own retries are not.
    async fn write(&self, session: Option<Session>, cmd: Command) -> std::result::Result<(u64, Response), Status> {
        let proposed = async {
            match session {
                Some(s) => self.raft.propose(s, cmd, WRITE_TIMEOUT).await,
                None => self.raft.propose_own(cmd, WRITE_TIMEOUT).await,
            }
        };
        let applied = tokio::time::timeout(WRITE_TIMEOUT + DRIVER_GRACE, proposed)
            .await
            .map_err(|_| status::write_timeout())?
            .map_err(|e| self.propose_error(e))?;
        let resp = applied.outcome.map_err(status::command)?;
        Ok((applied.index, resp))
    }

    /// A write whose answer is the VM record.
    async fn vm_write(&self, session: Option<Session>, cmd: Command) -> Result<v1::GetVmResponse> {
        match self.write(session, cmd).await? {
            (_, Response::Vm(rec)) => {
                Ok(tonic::Response::new(v1::GetVmResponse { vm: Some((*rec).into()), ..Default::default() }))
            }
            other => Err(unexpected(other)),
        }
    }

    /// A write of another service's command, with its answer.
    pub async fn write_response(
        &self,
        session: Option<Session>,
        cmd: Command,
    ) -> std::result::Result<(u64, Response), Status> {
        self.write(session, cmd).await
    }

    /// The address of member `id` and a channel to it (for relaying to the node that hosts
    /// something).
    pub fn channel_to(&self, id: u64) -> std::result::Result<Channel, Status> {
        let addr = self.addr_of(id).ok_or_else(|| Status::unavailable(format!("no address for node {id}")))?;
        self.pool.get(&addr)
    }

    pub fn node_id(&self) -> u64 {
        self.raft.status().id
    }

    /// A write of another service's command (its answer's index).
    pub async fn write_command(&self, session: Option<Session>, cmd: Command) -> std::result::Result<u64, Status> {
        self.write(session, cmd).await.map(|(i, _)| i)
    }

    /// A query for another service (see [`Api::read`]).
    pub async fn query(&self, opts: Option<v1::ReadOptions>, q: Query) -> std::result::Result<QueryResult, Status> {
        self.read(opts, q).await
    }

    /// Changes whenever applied state other than key/value pairs became visible to readers (a
    /// task's record among it): what a waiting request re-reads on.
    pub fn watch_state_version(&self) -> tokio::sync::watch::Receiver<u64> {
        self.raft.watch_state_version()
    }

    /// A query of what this node has applied and made visible, without a barrier (for a request
    /// that already passed one and re-reads after [`Api::watch_state_version`] changed).
    pub fn query_applied(&self, q: &Query) -> std::result::Result<QueryResult, Status> {
        let view = ReadView::begin(self.raft.db()).map_err(status::store)?;
        blixard_core::state::query(&view, q).map_err(status::store)
    }

    /// Serves a query after a ReadIndex round, or from local state when `stale`.
    async fn read(&self, opts: Option<v1::ReadOptions>, q: Query) -> std::result::Result<QueryResult, Status> {
        if !opts.is_some_and(|o| o.stale) {
            tokio::time::timeout(READ_TIMEOUT + DRIVER_GRACE, self.raft.read_index(READ_TIMEOUT))
                .await
                .map_err(|_| status::read_timeout())?
                .map_err(|e| self.propose_error(e))?;
        } else {
            // What this node applied, including writes it acknowledged a moment ago.
            self.raft.local_read().await.map_err(|e| self.propose_error(e))?;
        }
        let view = ReadView::begin(self.raft.db()).map_err(status::store)?;
        blixard_core::state::query(&view, &q).map_err(status::store)
    }
}

/// The request re-wrapped for the leader, marked as forwarded; it keeps its session.
pub(crate) fn forwarded<T>(req: Request<T>) -> Request<T> {
    let session = req.metadata().get(rpc::SESSION_HEADER).cloned();
    let auth = req.metadata().get(AUTHORIZATION).cloned();
    let mut r = Request::new(req.into_inner());
    r.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    if let Some(s) = session {
        r.metadata_mut().insert(rpc::SESSION_HEADER, s);
    }
    with_auth(r, auth)
}

/// The caller's token goes along with a request relayed to another node (which checks it
/// again; with mTLS the relaying node's certificate is enough).
pub(crate) const AUTHORIZATION: &str = "authorization";

pub(crate) fn with_auth<T>(
    mut r: Request<T>,
    auth: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> Request<T> {
    if let Some(a) = auth {
        r.metadata_mut().insert(AUTHORIZATION, a);
    }
    r
}

/// The leader's answer to a forwarded request; a failure of the forwarding itself (no typed
/// reason: the connection) leaves the outcome unknown.
fn forward_failed(s: Status) -> Status {
    if rpc::reason(&s).is_some() || s.code() != tonic::Code::Unavailable {
        return s;
    }
    rpc::status(
        tonic::Code::Unavailable,
        format!("forwarding to the leader failed: {}; the outcome is unknown", s.message()),
        v1::error_detail::Reason::OutcomeUnknown,
        None,
    )
}

/// Forwards `$req` with `$method` of `$client` to the leader when this node is not it.
macro_rules! forward {
    ($self:ident, $req:ident, $client:ty, $method:ident) => {
        if let Some(ch) = $self.leader_channel(&$req)? {
            return <$client>::new(ch)
                .max_decoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(blixard_proto::MAX_MESSAGE_BYTES)
                .$method(forwarded($req))
                .await
                .map_err(forward_failed);
        }
    };
}

// After `forward!`, which it uses.
mod transfer;

/// A list request's page: `limit` pairs (0: the default) and `bytes` of them.
fn page_limit(limit: u32, bytes: usize) -> std::result::Result<PageLimit, Status> {
    let count = match limit as usize {
        0 => DEFAULT_LIST_LIMIT,
        n if n > MAX_LIST_LIMIT => {
            let rule = format!("must be at most {MAX_LIST_LIMIT} (got {n})");
            return Err(invalid(blixard_core::ValidationError::new("limit", rule)));
        }
        n => n,
    };
    Ok(PageLimit { count, bytes })
}

fn unexpected(r: impl std::fmt::Debug) -> Status {
    Status::internal(format!("unexpected result {r:?}"))
}

fn local_status(s: &blixard_consensus::NodeStatus) -> v1::LocalStatus {
    v1::LocalStatus {
        node_id: s.id,
        role: s.role.as_str().into(),
        term: s.term,
        leader_id: s.leader_id.unwrap_or(0),
        commit_index: s.commit,
        applied_index: s.applied,
        last_index: s.last_index,
    }
}

/// How long `cluster status` waits for each member's own answer.
const MEMBER_STATUS_TIMEOUT: Duration = Duration::from_millis(500);

impl Api {
    async fn member_status(&self, addr: &str) -> Option<v1::LocalStatus> {
        let ch = self.pool.get(addr).ok()?;
        let mut c = v1::cluster_service_client::ClusterServiceClient::new(ch);
        let r = tokio::time::timeout(MEMBER_STATUS_TIMEOUT, c.local(v1::LocalStatusRequest {})).await.ok()?.ok()?;
        Some(r.into_inner())
    }
}

#[tonic::async_trait]
impl v1::cluster_service_server::ClusterService for Api {
    async fn status(&self, _req: Request<v1::ClusterStatusRequest>) -> Result<v1::ClusterStatusResponse> {
        let s = self.raft.status();
        let members = self.members()?;
        let capacity = {
            let view = ReadView::begin(self.raft.db()).map_err(status::store)?;
            blixard_core::state::nodes(&view).map_err(status::store)?
        };
        let addr = |id: u64| members.iter().find(|m| m.id == id).map(|m| m.addr.clone()).unwrap_or_default();
        let ids: Vec<(u64, &str)> =
            s.voters.iter().map(|&id| (id, "voter")).chain(s.learners.iter().map(|&id| (id, "learner"))).collect();
        let answers = futures::future::join_all(ids.iter().map(|(id, _)| {
            let a = addr(*id);
            let me = *id == s.id;
            async move {
                if me {
                    Some(local_status(&self.raft.status()))
                } else {
                    self.member_status(&a).await
                }
            }
        }))
        .await;
        let mut out: Vec<v1::Member> = ids
            .iter()
            .zip(answers)
            .map(|((id, m), st)| {
                let st = st.filter(|st| st.node_id == *id);
                let cap = capacity.iter().find(|c| c.id == *id);
                v1::Member {
                    vcpus: cap.map(|c| c.vcpus),
                    memory_mib: cap.map(|c| c.memory_mib),
                    accel: cap.map(|c| c.accel.clone()).unwrap_or_default(),
                    id: *id,
                    addr: addr(*id),
                    membership: (*m).into(),
                    reachable: st.is_some(),
                    role: st.as_ref().map(|s| s.role.clone()).unwrap_or_default(),
                    term: st.as_ref().map_or(0, |s| s.term),
                    commit_index: st.as_ref().map_or(0, |s| s.commit_index),
                    applied_index: st.as_ref().map_or(0, |s| s.applied_index),
                }
            })
            .collect();
        out.sort_by_key(|m| m.id);
        Ok(tonic::Response::new(v1::ClusterStatusResponse {
            node_id: s.id,
            role: s.role.as_str().into(),
            term: s.term,
            leader_id: s.leader_id.unwrap_or(0),
            leader_addr: s.leader_id.map(addr).unwrap_or_default(),
            commit_index: s.commit,
            applied_index: s.applied,
            last_index: s.last_index,
            members: out,
        }))
    }

    async fn join(&self, req: Request<v1::JoinRequest>) -> Result<v1::JoinResponse> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        let to_wire = |ms: Vec<Member>| {
            ms.into_iter().map(|m| v1::Member { id: m.id, addr: m.addr, ..Default::default() }).collect()
        };
        // The same node asking again (it restarted mid-join): already done. Only a fast path:
        // the membership rules themselves are applied with the change, in the log's order.
        let members = self.members()?;
        if members.iter().any(|m| m.id == r.node_id && m.addr == r.addr) {
            return Ok(tonic::Response::new(v1::JoinResponse { index: 0, members: to_wire(members) }));
        }
        let (index, _) = self.write(session, Command::AddLearner { id: r.node_id, addr: r.addr }).await?;
        Ok(tonic::Response::new(v1::JoinResponse { index, members: to_wire(self.members()?) }))
    }

    async fn leave(&self, req: Request<v1::LeaveRequest>) -> Result<v1::LeaveResponse> {
        // A node that removes itself may never learn that its removal committed (the leader
        // stops talking to it): the leader runs it.
        forward!(self, req, v1::cluster_service_client::ClusterServiceClient<Channel>, leave);
        let id = req.get_ref().node_id;
        let s = self.raft.status();
        if id == s.id && s.voters.len() > 1 {
            // The leader leaves by handing leadership over first, then asking the new leader.
            let Some(&next) = s.voters.iter().find(|&&v| v != id) else {
                return Err(Status::failed_precondition("no other voter to hand leadership to"));
            };
            self.raft.transfer_leader(next);
            let mut w = self.raft.watch_status();
            let moved =
                tokio::time::timeout(Duration::from_secs(5), w.wait_for(|st| st.leader_id.is_some_and(|l| l != id)));
            if !matches!(moved.await, Ok(Ok(_))) {
                return Err(self.propose_error(blixard_consensus::ProposeError::Unavailable { leader_id: Some(id) }));
            }
            forward!(self, req, v1::cluster_service_client::ClusterServiceClient<Channel>, leave);
        }
        let session = rpc::session_of(req.metadata())?;
        let (index, _) = self.write(session, Command::RemoveMember { id }).await?;
        Ok(tonic::Response::new(v1::LeaveResponse { index }))
    }

    async fn local(&self, _req: Request<v1::LocalStatusRequest>) -> Result<v1::LocalStatus> {
        Ok(tonic::Response::new(local_status(&self.raft.status())))
    }

    async fn transfer_leader(&self, req: Request<v1::TransferLeaderRequest>) -> Result<v1::TransferLeaderResponse> {
        self.transfer(req).await
    }
}

#[tonic::async_trait]
impl v1::kv_service_server::KvService for Api {
    async fn put(&self, req: Request<v1::PutRequest>) -> Result<v1::PutResponse> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        validate_key(&r.key).map_err(invalid)?;
        validate_value(&r.value).map_err(invalid)?;
        let (index, _) = self.write(session, Command::KvPut { key: r.key, value: r.value }).await?;
        Ok(tonic::Response::new(v1::PutResponse { index }))
    }

    async fn get(&self, req: Request<v1::GetRequest>) -> Result<v1::GetResponse> {
        let r = req.into_inner();
        validate_key(&r.key).map_err(invalid)?;
        match self.read(r.read, Query::KvGet { key: r.key }).await? {
            QueryResult::Value(v) => {
                Ok(tonic::Response::new(v1::GetResponse { found: v.is_some(), value: v.unwrap_or_default() }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete(&self, req: Request<v1::DeleteRequest>) -> Result<v1::DeleteResponse> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        validate_key(&r.key).map_err(invalid)?;
        match self.write(session, Command::KvDelete { key: r.key }).await? {
            (index, Response::Deleted { existed }) => Ok(tonic::Response::new(v1::DeleteResponse { index, existed })),
            other => Err(unexpected(other)),
        }
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<v1::ListResponse> {
        let r = req.into_inner();
        let limit = page_limit(r.limit, blixard_proto::KV_PAGE_BYTES)?;
        let start_after = match r.start_after {
            a if a.is_empty() => None,
            a if a.len() > blixard_core::MAX_KEY_LEN => {
                let rule = format!("must be at most {} bytes (got {})", blixard_core::MAX_KEY_LEN, a.len());
                return Err(invalid(blixard_core::ValidationError::new("start_after", rule)));
            }
            a => Some(a),
        };
        match self.read(r.read, Query::KvList { prefix: r.prefix, start_after, limit }).await? {
            QueryResult::Pairs { pairs, more } => {
                let next = if more { pairs.last().map(|(k, _)| k.clone()).unwrap_or_default() } else { Vec::new() };
                Ok(tonic::Response::new(v1::ListResponse {
                    pairs: pairs.into_iter().map(|(key, value)| v1::KeyValue { key, value }).collect(),
                    more,
                    next,
                }))
            }
            other => Err(unexpected(other)),
        }
    }
}

#[tonic::async_trait]
impl v1::vm_service_server::VmService for Api {
    async fn create_vm(&self, req: Request<v1::CreateVmRequest>) -> Result<v1::CreateVmResponse> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        let wire = r.spec.ok_or_else(|| Status::invalid_argument("invalid spec: must be set"))?;
        let spec = VmSpec::try_from(wire).map_err(invalid)?;
        spec.validate().map_err(invalid)?;
        if r.dry_run {
            let q = Query::Explain { spec: Box::new(spec), pinned: r.node };
            return match self.read(None, q).await? {
                QueryResult::Plan(p) => {
                    Ok(tonic::Response::new(v1::CreateVmResponse { vm: None, index: 0, plan: Some(p.into()) }))
                }
                other => Err(unexpected(other)),
            };
        }
        let cmd = Command::VmCreate { spec, node: r.node, start: r.start, queue: !r.no_queue };
        match self.write(session, cmd).await? {
            (index, Response::Vm(rec)) => {
                Ok(tonic::Response::new(v1::CreateVmResponse { vm: Some((*rec).into()), index, plan: None }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn explain(&self, req: Request<v1::ExplainRequest>) -> Result<v1::Plan> {
        let name = req.into_inner().name;
        validate_name(&name).map_err(invalid)?;
        let rec = match self.read(None, Query::VmGet { name: name.clone() }).await? {
            QueryResult::Vm(Some(rec)) => rec,
            QueryResult::Vm(None) => return Err(Status::not_found(format!("vm {name:?} not found"))),
            other => return Err(unexpected(other)),
        };
        // A placed VM is explained as if it were placed again (its own reservation aside).
        let q = Query::Explain { spec: Box::new(rec.spec), pinned: None };
        match self.read(Some(v1::ReadOptions { stale: true }), q).await? {
            QueryResult::Plan(p) => Ok(tonic::Response::new(p.into())),
            other => Err(unexpected(other)),
        }
    }

    async fn get_vm(&self, req: Request<v1::GetVmRequest>) -> Result<v1::GetVmResponse> {
        let auth = req.metadata().get(AUTHORIZATION).cloned();
        let r = req.into_inner();
        validate_name(&r.name).map_err(invalid)?;
        match self.read(r.read, Query::VmGet { name: r.name.clone() }).await? {
            QueryResult::Vm(Some(rec)) => {
                // A VM that runs: its usage, measured on its node.
                let (mut usage, mut unavailable) = (None, String::new());
                if let Some(node) = rec.node.filter(|n| crate::metrics::usage::process_of(*n, &rec).is_some()) {
                    match crate::nodes_api::usage_on(self, &self.raft, node, Some(&r.name), auth).await {
                        Ok(vms) => {
                            usage = vms.into_iter().find(|u| u.incarnation == rec.placed_index);
                            if usage.is_none() {
                                unavailable = format!("its process was not found on node {node}");
                            }
                        }
                        Err(why) => unavailable = why,
                    }
                }
                let vm = Some((*rec).into());
                Ok(tonic::Response::new(v1::GetVmResponse { vm, usage, usage_unavailable: unavailable }))
            }
            QueryResult::Vm(None) => Err(Status::not_found(format!("vm {:?} not found", r.name))),
            other => Err(unexpected(other)),
        }
    }

    async fn list_vms(&self, req: Request<v1::ListVmsRequest>) -> Result<v1::ListVmsResponse> {
        let r = req.into_inner();
        let limit = page_limit(r.limit, blixard_proto::VM_PAGE_BYTES)?;
        let start_after = match r.start_after {
            a if a.is_empty() => None,
            a => {
                validate_name(&a).map_err(|e| invalid(blixard_core::ValidationError::new("start_after", e.rule)))?;
                Some(a)
            }
        };
        match self.read(r.read, Query::VmList { start_after, limit }).await? {
            QueryResult::Vms { vms, more } => {
                let next =
                    if more { vms.last().map(|v| v.spec.name.clone()).unwrap_or_default() } else { String::new() };
                let vms = vms.into_iter().map(Into::into).collect();
                Ok(tonic::Response::new(v1::ListVmsResponse { vms, more, next }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn start_vm(&self, req: Request<v1::VmNameRequest>) -> Result<v1::GetVmResponse> {
        let session = rpc::session_of(req.metadata())?;
        let name = req.into_inner().name;
        validate_name(&name).map_err(invalid)?;
        self.vm_write(session, Command::VmSetDesired { name, desired: blixard_core::PowerState::Running }).await
    }

    async fn stop_vm(&self, req: Request<v1::VmNameRequest>) -> Result<v1::GetVmResponse> {
        let session = rpc::session_of(req.metadata())?;
        let name = req.into_inner().name;
        validate_name(&name).map_err(invalid)?;
        self.vm_write(session, Command::VmSetDesired { name, desired: blixard_core::PowerState::Stopped }).await
    }

    async fn restart_vm(&self, req: Request<v1::VmNameRequest>) -> Result<v1::GetVmResponse> {
        let session = rpc::session_of(req.metadata())?;
        let name = req.into_inner().name;
        validate_name(&name).map_err(invalid)?;
        self.vm_write(session, Command::VmRestart { name }).await
    }

    type VmLogsStream = LogStream;
    type VmConsoleStream = LogStream;

    async fn vm_console(&self, req: Request<tonic::Streaming<v1::ConsoleInput>>) -> Result<LogStream> {
        let was_forwarded = req.metadata().contains_key(FORWARDED);
        let auth = req.metadata().get(AUTHORIZATION).cloned();
        let mut input = req.into_inner();
        let first = input.message().await?.ok_or_else(|| Status::invalid_argument("empty console stream"))?;
        let name = first.name.clone();
        validate_name(&name).map_err(invalid)?;
        let node = self.vm_node(&name).await?;
        if node != self.raft.status().id {
            if was_forwarded {
                return Err(Status::unavailable(format!("vm {name:?} is not hosted here")));
            }
            let addr = self.addr_of(node).ok_or_else(|| Status::unavailable(format!("no address for node {node}")))?;
            let rest = futures::StreamExt::filter_map(input, |m| std::future::ready(m.ok()));
            let upstream = futures::StreamExt::chain(futures::stream::once(std::future::ready(first)), rest);
            let mut c = v1::vm_service_client::VmServiceClient::new(self.pool.get(&addr)?);
            let out = c.vm_console(forwarded(with_auth(Request::new(upstream), auth))).await?.into_inner();
            return Ok(tonic::Response::new(Box::pin(out)));
        }
        let driver =
            self.driver.get().cloned().ok_or_else(|| Status::unavailable("this node's VM backend is not ready"))?;
        // Start with the last few KiB of history, then follow.
        let mut end = 0;
        loop {
            let c = driver.read_console(&name, end, 1 << 20).await.map_err(|e| Status::not_found(e.to_string()))?;
            if c.data.is_empty() {
                break;
            }
            end = c.next_offset;
        }
        let out = self.local_logs(name.clone(), true, end.saturating_sub(CONSOLE_HISTORY))?;
        tokio::spawn(async move {
            if !first.data.is_empty() {
                let _ = driver.console_input(&name, &first.data).await;
            }
            while let Ok(Some(m)) = input.message().await {
                if let Err(e) = driver.console_input(&name, &m.data).await {
                    tracing::debug!(vm = %name, "console input dropped: {e}");
                    break;
                }
            }
        });
        Ok(tonic::Response::new(out))
    }

    async fn vm_logs(&self, req: Request<v1::VmLogsRequest>) -> Result<LogStream> {
        let was_forwarded = req.metadata().contains_key(FORWARDED);
        let auth = req.metadata().get(AUTHORIZATION).cloned();
        let r = req.into_inner();
        validate_name(&r.name).map_err(invalid)?;
        let node = self.vm_node(&r.name).await?;
        if node == self.raft.status().id {
            return Ok(tonic::Response::new(self.local_logs(r.name, r.follow, r.offset)?));
        }
        if was_forwarded {
            return Err(Status::unavailable(format!("vm {:?} is not hosted here", r.name)));
        }
        // Hosted elsewhere: relay the hosting node's stream.
        let addr = self.addr_of(node).ok_or_else(|| Status::unavailable(format!("no address for node {}", node)))?;
        let mut c = v1::vm_service_client::VmServiceClient::new(self.pool.get(&addr)?);
        let stream = c.vm_logs(forwarded(with_auth(Request::new(r), auth))).await?.into_inner();
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn delete_vm(&self, req: Request<v1::DeleteVmRequest>) -> Result<v1::DeleteVmResponse> {
        let session = rpc::session_of(req.metadata())?;
        let r = req.into_inner();
        validate_name(&r.name).map_err(invalid)?;
        let (index, _) = self.write(session, Command::VmDelete { name: r.name }).await?;
        Ok(tonic::Response::new(v1::DeleteVmResponse { index }))
    }
}
