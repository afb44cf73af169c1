//! The handle clients of the driver hold: proposals, reads and peer traffic go in through two
//! queues — one for clients (bounded, and a full one makes callers wait: back-pressure) and one
//! for Raft's own traffic, which the Ready loop always serves first, so client load never
//! starves heartbeats or delays elections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blixard_core::{Applied, ClientSession, Command, Envelope, Session};
use raft::eraftpb::Message;
use redb::Database;
use tokio::sync::{mpsc, oneshot, watch};

use crate::types::{NodeStatus, ProposeError};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

pub(crate) enum ClientRequest {
    /// A client command (a membership command travels in a configuration change).
    Write {
        env: Box<Envelope>,
        reply: Reply<Applied>,
        deadline: tokio::time::Instant,
    },
    /// A linearizable read barrier (ReadIndex).
    Read {
        reply: Reply<u64>,
        deadline: tokio::time::Instant,
    },
    /// A read of this node's own applied state: answered once that state is visible.
    LocalRead {
        reply: oneshot::Sender<u64>,
    },
    Shutdown,
}

pub(crate) enum PeerRequest {
    Step(Box<Message>),
    Unreachable(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    TransferLeader(u64),
    /// How far each peer's log is known to match the leader's (empty unless leading).
    Progress(oneshot::Sender<Vec<(u64, u64)>>),
}

/// Queue lengths: a full client queue makes callers wait; a full peer queue makes the
/// connection it came from wait (TCP back-pressure to the sending peer), never drops a message.
pub(crate) const CLIENT_QUEUE: usize = 8192;
pub(crate) const PEER_QUEUE: usize = 8192;

/// A cheap, cloneable handle to a running driver.
#[derive(Clone)]
pub struct Handle {
    pub(crate) clients: mpsc::Sender<ClientRequest>,
    pub(crate) peers: mpsc::Sender<PeerRequest>,
    pub(crate) status: watch::Receiver<NodeStatus>,
    /// The index of the last applied entry that changed anything but the key/value table (VMs,
    /// nodes, members), published once that change is visible to readers.
    pub(crate) state_version: watch::Receiver<u64>,
    pub(crate) db: Arc<Database>,
    pub(crate) reply_spin: Duration,
    /// Callers waiting for an answer on this node right now.
    pub(crate) waiting: Arc<AtomicUsize>,
    /// The session of the commands this node makes on its own behalf.
    pub(crate) own: Arc<Mutex<ClientSession>>,
    /// Peer messages dropped because they broke a rule of [`crate::validate`].
    pub(crate) refused: Arc<std::sync::atomic::AtomicU64>,
    /// Committed entries skipped because they do not decode.
    pub(crate) undecodable: Arc<std::sync::atomic::AtomicU64>,
    /// The observer (metrics) and the count of proposals waiting for answers.
    pub(crate) observed: crate::observe::Observed,
}

/// Counts a waiting caller for as long as it lives.
pub(crate) struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Enters and tells whether the caller is the only one waiting.
    pub(crate) fn enter(n: &'a AtomicUsize) -> (Self, bool) {
        let before = n.fetch_add(1, Ordering::Relaxed);
        (Waiting(n), before == 0)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Handle {
    /// Waits for the driver's answer. A caller that is alone polls for it up to `reply_spin`
    /// first (yielding to the runtime and to other threads between polls), then sleeps.
    async fn answer<T>(&self, mut rx: oneshot::Receiver<T>) -> Result<T, ProposeError> {
        let (_waiting, alone) = Waiting::enter(&self.waiting);
        // Under simulation time does not pass while a task polls: never spin there.
        if alone && !self.reply_spin.is_zero() && !cfg!(madsim) {
            let until = std::time::Instant::now() + self.reply_spin;
            loop {
                match rx.try_recv() {
                    Ok(v) => return Ok(v),
                    Err(oneshot::error::TryRecvError::Closed) => return Err(ProposeError::Stopped),
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
                if std::time::Instant::now() >= until || self.waiting.load(Ordering::Relaxed) > 1 {
                    break;
                }
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
        }
        rx.await.map_err(|_| ProposeError::Stopped)
    }

    /// Proposes a client command and waits until it is applied, or its outcome is known to be
    /// unknown (`timeout` passed after it was proposed), or it is known not to be applied.
    /// Retrying a command with the same `session` is always safe.
    pub async fn propose(
        &self,
        session: Session,
        command: Command,
        timeout: Duration,
    ) -> Result<Applied, ProposeError> {
        let env = Box::new(Envelope { session: Some(session), now_ms: now_ms(), command });
        let (reply, rx) = oneshot::channel();
        let _in_flight = crate::observe::InFlight::enter(&self.observed.in_flight);
        let start = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        self.clients.send(ClientRequest::Write { env, reply, deadline }).await.map_err(|_| ProposeError::Stopped)?;
        let r = self.answer(rx).await.and_then(|r| r);
        self.observed.with(|o| o.proposal(start.elapsed(), r.is_ok()));
        r
    }

    /// Sets the observer the driver and every handle report to (once; `false` if one was set).
    pub fn observe(&self, observer: Arc<dyn crate::Observer>) -> bool {
        self.observed.observer.set(observer).is_ok()
    }

    /// Client proposals on this node waiting for their answers right now.
    pub fn proposals_in_flight(&self) -> usize {
        self.observed.in_flight.load(Ordering::Relaxed)
    }

    /// Proposes a command this node makes on its own behalf (in its own session).
    pub async fn propose_own(&self, command: Command, timeout: Duration) -> Result<Applied, ProposeError> {
        let session = self.own.lock().unwrap_or_else(|e| e.into_inner()).begin();
        let r = self.propose(session, command, timeout).await;
        self.own.lock().unwrap_or_else(|e| e.into_inner()).end(session.seq);
        r
    }

    /// A linearizable read barrier (ReadIndex): resolves once this node has applied everything
    /// committed before the call. Read the state after it returns.
    pub async fn read_index(&self, timeout: Duration) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        let deadline = tokio::time::Instant::now() + timeout;
        self.clients.send(ClientRequest::Read { reply, deadline }).await.map_err(|_| ProposeError::Stopped)?;
        self.answer(rx).await?
    }

    /// A barrier for reads of this node's own state (stale reads): resolves once everything this
    /// node has applied is visible to readers, so a client reads its own acknowledged writes
    /// on the node that acknowledged them. Returns the applied index.
    pub async fn local_read(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.clients.send(ClientRequest::LocalRead { reply }).await.map_err(|_| ProposeError::Stopped)?;
        self.answer(rx).await
    }

    /// Asks the leader to hand leadership to `to` (best effort; watch the status).
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.peers.try_send(PeerRequest::TransferLeader(to));
    }

    /// On the leader: each member's id and the index up to which its log is known to match the
    /// leader's (the leader itself included); empty on a follower.
    pub async fn progress(&self) -> Result<Vec<(u64, u64)>, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.peers.send(PeerRequest::Progress(reply)).await.map_err(|_| ProposeError::Stopped)?;
        rx.await.map_err(|_| ProposeError::Stopped)
    }

    /// Tells Raft a peer could not be reached (it stops pipelining to it).
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.peers.try_send(PeerRequest::Unreachable(id));
    }

    /// Tells Raft whether a snapshot reached `to`.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.peers.try_send(PeerRequest::SnapshotDone { to, ok });
    }

    /// Hands a message from a peer to Raft; waits while the Raft queue is full (the caller, a
    /// peer connection, then stops reading: back-pressure instead of loss).
    /// How many peer messages were dropped as impossible (see [`crate::validate`]).
    pub fn refused_messages(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How many committed entries this node skipped because they do not decode (each node
    /// skips the same ones).
    pub fn undecodable_entries(&self) -> u64 {
        self.undecodable.load(Ordering::Relaxed)
    }

    pub async fn step(&self, msg: Message) {
        let _ = self.peers.send(PeerRequest::Step(Box::new(msg))).await;
    }

    pub fn status(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    pub fn watch_status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Changes whenever an applied entry touched anything but the key/value table (a VM, a
    /// node's capacity, a member) and that change became visible to readers. Key/value writes
    /// never wake its watchers, so a busy store does not cost the reconciler anything.
    pub fn watch_state_version(&self) -> watch::Receiver<u64> {
        self.state_version.clone()
    }

    pub fn db(&self) -> &Arc<Database> {
        &self.db
    }

    /// Asks the loop to stop after the current turn.
    pub async fn shutdown(&self) {
        let _ = self.clients.send(ClientRequest::Shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defect 8 of issue 11: Raft messages and client requests shared one bounded queue and a
    /// full one dropped peer messages, so client load could starve heartbeats.
    #[test]
    fn a_full_client_queue_leaves_room_for_raft_traffic() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let db = Arc::new(redb::Database::create(dir.path().join("db.redb")).unwrap());
            let mut storage = crate::DiskStorage::open(db, &dir.path().join("log")).unwrap();
            storage.bootstrap(&crate::Bootstrap { id: 1, addr: "127.0.0.1:1".into() }).unwrap();
            // The driver is not running: nothing drains the queues.
            let (_driver, h) =
                crate::driver::Driver::new(crate::RaftConfig::new(1), storage, Arc::new(crate::transport::Loopback))
                    .unwrap();
            let mut queued = 0;
            loop {
                let (reply, _rx) = oneshot::channel();
                match h.clients.try_send(ClientRequest::LocalRead { reply }) {
                    Ok(()) => queued += 1,
                    Err(_) => break,
                }
            }
            assert_eq!(queued, CLIENT_QUEUE);
            let room = h.peers.capacity();
            tokio::time::timeout(Duration::from_secs(1), h.step(Message::default()))
                .await
                .expect("a peer message is taken while clients fill their queue");
            assert_eq!(h.peers.capacity(), room - 1, "queued, not dropped");
        });
    }

    #[test]
    fn only_the_first_waiting_caller_is_alone_and_leaving_counts_down() {
        let n = AtomicUsize::new(0);
        let (a, alone_a) = Waiting::enter(&n);
        let (b, alone_b) = Waiting::enter(&n);
        assert!(alone_a);
        assert!(!alone_b);
        assert_eq!(n.load(Ordering::Relaxed), 2);
        drop(a);
        let (c, alone_c) = Waiting::enter(&n);
        assert!(!alone_c, "b is still waiting");
        drop(b);
        drop(c);
        assert_eq!(n.load(Ordering::Relaxed), 0);
        let (_d, alone_d) = Waiting::enter(&n);
        assert!(alone_d);
    }
}
