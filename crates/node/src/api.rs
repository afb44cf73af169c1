//! gRPC handlers: parse the request into a core command or query, run it, map the result. No
//! business logic lives here.

use std::time::Duration;

use blixard_consensus::sm::ReadView;
use blixard_consensus::Handle;
use blixard_core::spec::{validate_key, validate_name, validate_value};
use blixard_core::state::Member;
use blixard_core::{Command, Query, QueryResult, Response, VmSpec};
use blixard_proto::v1;
use tonic::{Request, Status};

use crate::status;

/// How long a write or linearizable read may wait for Raft.
const RAFT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LIST_LIMIT: usize = 1000;
const MAX_LIST_LIMIT: usize = 10_000;

#[derive(Clone)]
pub struct Api {
    raft: Handle,
}

type Result<T> = std::result::Result<tonic::Response<T>, Status>;

fn invalid(e: blixard_core::ValidationError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl Api {
    pub fn new(raft: Handle) -> Self {
        Api { raft }
    }

    fn members(&self) -> std::result::Result<Vec<Member>, Status> {
        let view = ReadView::begin(self.raft.db()).map_err(status::store)?;
        blixard_core::state::members(&view).map_err(status::store)
    }

    fn addr_of(&self, id: u64) -> Option<String> {
        self.members().ok()?.into_iter().find(|m| m.id == id).map(|m| m.addr)
    }

    fn propose_error(&self, e: blixard_consensus::ProposeError) -> Status {
        let addr = match &e {
            blixard_consensus::ProposeError::NotLeader { leader_id: Some(id) } => self.addr_of(*id),
            _ => None,
        };
        status::propose(e, addr)
    }

    /// Proposes and waits for the command's own result.
    async fn write(&self, cmd: Command) -> std::result::Result<(u64, Response), Status> {
        let applied = tokio::time::timeout(RAFT_TIMEOUT, self.raft.propose(cmd))
            .await
            .map_err(|_| status::timeout("the write"))?
            .map_err(|e| self.propose_error(e))?;
        let resp = applied.outcome.map_err(status::command)?;
        Ok((applied.index, resp))
    }

    /// Serves a query after a ReadIndex round, or from local state when `stale`.
    async fn read(&self, opts: Option<v1::ReadOptions>, q: Query) -> std::result::Result<QueryResult, Status> {
        if !opts.is_some_and(|o| o.stale) {
            tokio::time::timeout(RAFT_TIMEOUT, self.raft.read_index())
                .await
                .map_err(|_| status::timeout("the read"))?
                .map_err(|e| self.propose_error(e))?;
        }
        let view = ReadView::begin(self.raft.db()).map_err(status::store)?;
        blixard_core::state::query(&view, &q).map_err(status::store)
    }
}

fn unexpected(r: impl std::fmt::Debug) -> Status {
    Status::internal(format!("unexpected result {r:?}"))
}

#[tonic::async_trait]
impl v1::cluster_service_server::ClusterService for Api {
    async fn status(&self, _req: Request<v1::ClusterStatusRequest>) -> Result<v1::ClusterStatusResponse> {
        let s = self.raft.status();
        let members = self.members()?;
        let addr = |id: u64| members.iter().find(|m| m.id == id).map(|m| m.addr.clone()).unwrap_or_default();
        let mut out: Vec<v1::Member> = s
            .voters
            .iter()
            .map(|&id| (id, "voter"))
            .chain(s.learners.iter().map(|&id| (id, "learner")))
            .map(|(id, m)| v1::Member { id, addr: addr(id), membership: m.into() })
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
}

#[tonic::async_trait]
impl v1::kv_service_server::KvService for Api {
    async fn put(&self, req: Request<v1::PutRequest>) -> Result<v1::PutResponse> {
        let r = req.into_inner();
        validate_key(&r.key).map_err(invalid)?;
        validate_value(&r.value).map_err(invalid)?;
        let (index, _) = self.write(Command::KvPut { key: r.key, value: r.value }).await?;
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
        let r = req.into_inner();
        validate_key(&r.key).map_err(invalid)?;
        match self.write(Command::KvDelete { key: r.key }).await? {
            (index, Response::Deleted { existed }) => Ok(tonic::Response::new(v1::DeleteResponse { index, existed })),
            other => Err(unexpected(other)),
        }
    }

    async fn list(&self, req: Request<v1::ListRequest>) -> Result<v1::ListResponse> {
        let r = req.into_inner();
        let limit = match r.limit as usize {
            0 => DEFAULT_LIST_LIMIT,
            n if n > MAX_LIST_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "invalid limit: must be at most {MAX_LIST_LIMIT} (got {n})"
                )))
            }
            n => n,
        };
        match self.read(r.read, Query::KvList { prefix: r.prefix, limit }).await? {
            QueryResult::Pairs { pairs, more } => Ok(tonic::Response::new(v1::ListResponse {
                pairs: pairs.into_iter().map(|(key, value)| v1::KeyValue { key, value }).collect(),
                more,
            })),
            other => Err(unexpected(other)),
        }
    }
}

#[tonic::async_trait]
impl v1::vm_service_server::VmService for Api {
    async fn create_vm(&self, req: Request<v1::CreateVmRequest>) -> Result<v1::CreateVmResponse> {
        let wire = req.into_inner().spec.ok_or_else(|| Status::invalid_argument("invalid spec: must be set"))?;
        let spec = VmSpec::try_from(wire).map_err(invalid)?;
        spec.validate().map_err(invalid)?;
        match self.write(Command::VmCreate { spec }).await? {
            (index, Response::Vm(rec)) => {
                Ok(tonic::Response::new(v1::CreateVmResponse { vm: Some((*rec).into()), index }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn get_vm(&self, req: Request<v1::GetVmRequest>) -> Result<v1::GetVmResponse> {
        let r = req.into_inner();
        validate_name(&r.name).map_err(invalid)?;
        match self.read(r.read, Query::VmGet { name: r.name.clone() }).await? {
            QueryResult::Vm(Some(rec)) => Ok(tonic::Response::new(v1::GetVmResponse { vm: Some(rec.into()) })),
            QueryResult::Vm(None) => Err(Status::not_found(format!("vm {:?} not found", r.name))),
            other => Err(unexpected(other)),
        }
    }

    async fn list_vms(&self, req: Request<v1::ListVmsRequest>) -> Result<v1::ListVmsResponse> {
        match self.read(req.into_inner().read, Query::VmList).await? {
            QueryResult::Vms(vms) => {
                Ok(tonic::Response::new(v1::ListVmsResponse { vms: vms.into_iter().map(Into::into).collect() }))
            }
            other => Err(unexpected(other)),
        }
    }

    async fn delete_vm(&self, req: Request<v1::DeleteVmRequest>) -> Result<v1::DeleteVmResponse> {
        let r = req.into_inner();
        validate_name(&r.name).map_err(invalid)?;
        let (index, _) = self.write(Command::VmDelete { name: r.name }).await?;
        Ok(tonic::Response::new(v1::DeleteVmResponse { index }))
    }
}
