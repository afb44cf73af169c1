//! `TaskService`: batch tasks (submit, get, list, cancel, prune) and an attempt's output, read
//! from the node that ran it (relayed by whichever node the client asked).

use std::path::PathBuf;

use blixard_core::task::{parse_id, TaskRecord, TaskSpec, TaskState};
use blixard_core::{Command, Query, QueryResult, Response};
use blixard_proto::rpc;
use blixard_proto::v1;
use tonic::{Request, Status};

use crate::api::{forwarded, Api, FORWARDED};

type Result<T> = std::result::Result<tonic::Response<T>, Status>;
type LogStream = std::pin::Pin<Box<dyn futures::Stream<Item = std::result::Result<v1::VmLogChunk, Status>> + Send>>;

const DEFAULT_LIMIT: usize = 1000;
/// `WaitTask`'s wait when the request names none, and the longest it waits.
const WAIT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(60);
const WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(600);
const CHUNK: usize = 64 * 1024;

#[derive(Clone)]
pub struct Tasks {
    pub api: Api,
    /// This node's `<data dir>/tasks`.
    pub dir: PathBuf,
}

fn invalid(e: blixard_core::ValidationError) -> Status {
    crate::status::invalid(e)
}

fn unexpected<T: std::fmt::Debug>(x: T) -> Status {
    Status::internal(format!("unexpected result {x:?}"))
}

fn task_answer(r: Response) -> Result<v1::Task> {
    match r {
        Response::Task(t) => Ok(tonic::Response::new((*t).into())),
        other => Err(unexpected(other)),
    }
}

impl Tasks {
    async fn get(&self, id: &str, read: Option<v1::ReadOptions>) -> std::result::Result<TaskRecord, Status> {
        let n = parse_id(id).map_err(invalid)?;
        match self.api.query(read, Query::TaskGet { id: n }).await? {
            QueryResult::Task(Some(t)) => Ok(*t),
            QueryResult::Task(None) => Err(Status::not_found(format!("task {id} not found"))),
            other => Err(unexpected(other)),
        }
    }
}

/// How long a `WaitTask` request waits: `timeout_ms` (0: the default), at most [`WAIT_MAX`].
fn wait_for(timeout_ms: u64) -> std::time::Duration {
    match timeout_ms {
        0 => WAIT_DEFAULT,
        n => std::time::Duration::from_millis(n).min(WAIT_MAX),
    }
}

/// Streams `file` from `offset` to its end.
fn stream_file(file: PathBuf, mut offset: u64) -> LogStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut f = match tokio::fs::File::open(&file).await {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.send(Err(Status::not_found(format!("no output file on this node: {e}")))).await;
                return;
            }
        };
        if f.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            match f.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    offset += n as u64;
                    if tx.send(Ok(v1::VmLogChunk { data: buf[..n].to_vec(), next_offset: offset })).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl v1::task_service_server::TaskService for Tasks {
    async fn submit_task(&self, req: Request<v1::TaskSpec>) -> Result<v1::Task> {
        let session = rpc::session_of(req.metadata())?;
        let spec = TaskSpec::try_from(req.into_inner()).map_err(invalid)?;
        let (_, r) = self.api.write_response(session, Command::TaskSubmit { spec: Box::new(spec) }).await?;
        task_answer(r)
    }

    async fn get_task(&self, req: Request<v1::TaskIdRequest>) -> Result<v1::Task> {
        let r = req.into_inner();
        Ok(tonic::Response::new(self.get(&r.id, r.read).await?.into()))
    }

    async fn list_tasks(&self, req: Request<v1::ListTasksRequest>) -> Result<v1::ListTasksResponse> {
        let r = req.into_inner();
        let state =
            Some(r.state.as_str()).filter(|s| !s.is_empty()).map(TaskState::parse).transpose().map_err(invalid)?;
        let start_after =
            Some(r.start_after.as_str()).filter(|s| !s.is_empty()).map(parse_id).transpose().map_err(invalid)?;
        let limit = match r.limit {
            0 => DEFAULT_LIMIT,
            n => (n as usize).min(blixard_proto::MAX_LIST_LIMIT as usize),
        };
        match self.api.query(r.read, Query::TaskList { state, start_after, limit }).await? {
            QueryResult::Tasks { tasks, more } => Ok(tonic::Response::new(v1::ListTasksResponse {
                tasks: tasks.into_iter().map(Into::into).collect(),
                more,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn cancel_task(&self, req: Request<v1::TaskIdRequest>) -> Result<v1::Task> {
        let session = rpc::session_of(req.metadata())?;
        let id = parse_id(&req.into_inner().id).map_err(invalid)?;
        let (_, r) = self.api.write_response(session, Command::TaskCancel { id }).await?;
        task_answer(r)
    }

    async fn prune_tasks(&self, req: Request<v1::PruneTasksRequest>) -> Result<v1::PruneTasksResponse> {
        let session = rpc::session_of(req.metadata())?;
        let keep = req.into_inner().keep;
        match self.api.write_response(session, Command::TaskPrune { keep }).await? {
            (_, Response::Pruned { count }) => Ok(tonic::Response::new(v1::PruneTasksResponse { pruned: count })),
            (_, other) => Err(unexpected(other)),
        }
    }

    async fn wait_task(&self, req: Request<v1::WaitTaskRequest>) -> Result<v1::Task> {
        let r = req.into_inner();
        let id = parse_id(&r.id).map_err(invalid)?;
        let deadline = tokio::time::Instant::now() + wait_for(r.timeout_ms);
        // Watched from before the first read, so an end applied between that read and the
        // wait still wakes it.
        let mut version = self.api.watch_state_version();
        version.borrow_and_update();
        let mut t = self.get(&r.id, r.read).await?;
        let q = Query::TaskGet { id };
        // Each wake-up is one read of the task from this node's applied state: what is applied
        // here is committed, so an end seen here is final, and nothing is asked of Raft again.
        while !t.state.is_finished() {
            tokio::select! {
                changed = version.changed() => {
                    changed.map_err(|_| Status::unavailable("this node is shutting down"))?;
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
            t = match self.api.query_applied(&q)? {
                QueryResult::Task(Some(t)) => *t,
                QueryResult::Task(None) => return Err(Status::not_found(format!("task {} not found", r.id))),
                other => return Err(unexpected(other)),
            };
        }
        Ok(tonic::Response::new(t.into()))
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(&self, req: Request<v1::TaskLogsRequest>) -> Result<LogStream> {
        let was_forwarded = req.metadata().contains_key(FORWARDED);
        let auth = req.metadata().get(crate::api::AUTHORIZATION).cloned();
        let r = req.into_inner();
        let t = self.get(&r.id, Some(v1::ReadOptions { stale: true })).await?;
        let a = match r.attempt {
            0 => t.attempts.last(),
            n => t.attempts.iter().find(|a| a.number == n),
        }
        .ok_or_else(|| Status::not_found(format!("task {} has no attempt {}", r.id, r.attempt)))?;
        if a.node == self.api.node_id() {
            let dir = crate::tasks::attempt_dir(&self.dir, t.submit_index, a.id);
            let file = dir.join(if r.stderr { "stderr" } else { "stdout" });
            return Ok(tonic::Response::new(stream_file(file, r.offset)));
        }
        if was_forwarded {
            return Err(Status::unavailable(format!("task {} attempt {} did not run here", r.id, a.number)));
        }
        let mut c = v1::task_service_client::TaskServiceClient::new(self.api.channel_to(a.node)?);
        let stream = c.task_logs(forwarded(crate::api::with_auth(Request::new(r), auth))).await?.into_inner();
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}
