//! The Ready loop: the one task that owns the raft-rs `RawNode` and the redb write side.
//!
//! Each turn: take everything queued (group commit: many proposals, one Ready), then handle the
//! Ready in the order raft-rs requires — send the leader's messages (replication runs in
//! parallel with the leader's own write), install a snapshot, apply the entries already
//! committed, append new entries and hard state to the write-ahead log with one write and one
//! `fdatasync`, then send the messages that depended on that write, then advance. A client is
//! answered after its entry is committed and applied, with the command's own result.
//!
//! Applying commits the state machine to redb without an fsync; every `compact_entries` entries
//! (or `compact_bytes`) the apply is made durable instead (a checkpoint) and only then is the
//! log compacted up to it, so the log always holds what a crash may have taken from redb.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use blixard_core::{Command, Envelope, Outcome};
use raft::eraftpb::{ConfChangeV2, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, StateRole};
use rand::{Rng, SeedableRng};
use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::StorageError;
use crate::sm::TxnStore;
use crate::storage::DiskStorage;
use crate::transport::Transport;

/// Timing and batching knobs of one node.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub id: u64,
    pub tick: Duration,
    /// Election timeout, in ticks (randomized by raft-rs in [n, 2n)).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Most requests taken from the queue before one Ready is handled.
    pub max_batch: usize,
    /// Compact the log once it holds more than this many applied entries...
    pub compact_entries: u64,
    /// ...or once this many bytes were appended since the last compaction.
    pub compact_bytes: u64,
    /// Applied entries kept after a compaction, so a briefly lagging follower catches up from
    /// the log instead of a snapshot.
    pub keep_entries: u64,
    /// After a turn that handled a request or a message, how long the loop keeps polling for
    /// the next one before it sleeps (0: never). Costs at most this much CPU per busy turn;
    /// saves a thread wake-up whenever the next one comes within it.
    pub idle_spin: Duration,
    /// How long a caller waiting alone for its answer (one request in flight on this node)
    /// polls for it before its task sleeps (0: never). The same trade as `idle_spin`, on the
    /// API side: it saves the wake-up of a sleeping runtime worker when the answer comes.
    pub reply_spin: Duration,
}

impl RaftConfig {
    pub fn new(id: u64) -> Self {
        RaftConfig {
            id,
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_batch: 4096,
            compact_entries: 1_000_000,
            compact_bytes: 64 * 1024 * 1024,
            keep_entries: 1_000,
            idle_spin: Duration::from_micros(300),
            reply_spin: Duration::from_micros(500),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    fn of(r: StateRole) -> Self {
        match r {
            StateRole::Follower => Role::Follower,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Candidate => Role::Candidate,
            StateRole::Leader => Role::Leader,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// What a node knows about itself, published after every Ready.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub role: Role,
    pub term: u64,
    /// `None` when no leader is known.
    pub leader_id: Option<u64>,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("this node is not the leader")]
    NotLeader { leader_id: Option<u64> },
    /// Another entry took this proposal's place in the log: it was not applied and may be retried.
    #[error("proposal dropped by a leader change; it was not applied")]
    Dropped,
    #[error("the node is shutting down")]
    Stopped,
    /// Raft refused the proposal as it stands (e.g. another membership change is in progress).
    #[error("{0}")]
    Busy(String),
    /// A proposal forwarded to the leader was not seen applied in time. It may still be.
    #[error(
        "the write was forwarded to the leader but not confirmed within {0:?}; it may or may not have been applied"
    )]
    Unconfirmed(Duration),
}

/// How long a follower waits to see a proposal it forwarded applied.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(8);

/// A command's result with the index of the entry that carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub index: u64,
    pub outcome: Outcome,
}

type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

enum Request {
    Propose {
        command: Command,
        reply: Reply<Applied>,
    },
    /// A membership change; `command` is applied to the state with it (it records addresses).
    ConfChange {
        cc: ConfChangeV2,
        command: Command,
        reply: Reply<Applied>,
    },
    TransferLeader(u64),
    Unreachable(u64),
    SnapshotDone {
        to: u64,
        ok: bool,
    },
    ReadIndex {
        reply: Reply<u64>,
    },
    /// A read of this node's own applied state: answered once that state is visible.
    LocalRead {
        reply: oneshot::Sender<u64>,
    },
    Step(Box<Message>),
    Shutdown,
}

/// A cheap, cloneable handle to a running driver.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<NodeStatus>,
    /// The index of the last applied entry that changed anything but the key/value table (VMs,
    /// nodes, members), published once that change is visible to readers.
    state_version: watch::Receiver<u64>,
    db: Arc<Database>,
    reply_spin: Duration,
    /// Callers waiting for an answer on this node right now.
    waiting: Arc<AtomicUsize>,
}

/// Counts a waiting caller for as long as it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    /// Enters and tells whether the caller is the only one waiting.
    fn enter(n: &'a AtomicUsize) -> (Self, bool) {
        let before = n.fetch_add(1, Ordering::Relaxed);
        (Waiting(n), before == 0)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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

    /// Proposes a command and waits until it is applied (or known not to be).
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::Propose { command, reply }).await.map_err(|_| ProposeError::Stopped)?;
        self.answer(rx).await?
    }

    /// A linearizable read barrier (ReadIndex): resolves once this node has applied everything
    /// committed before the call. Read the state after it returns.
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::ReadIndex { reply }).await.map_err(|_| ProposeError::Stopped)?;
        self.answer(rx).await?
    }

    /// A barrier for reads of this node's own state (stale reads): resolves once everything this
    /// node has applied is visible to readers, so a client reads its own acknowledged writes
    /// on the node that acknowledged them. Returns the applied index.
    pub async fn local_read(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::LocalRead { reply }).await.map_err(|_| ProposeError::Stopped)?;
        self.answer(rx).await
    }

    /// Proposes a membership change and waits until it is applied.
    pub async fn conf_change(&self, cc: ConfChangeV2, command: Command) -> Result<Applied, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Request::ConfChange { cc, command, reply }).await.map_err(|_| ProposeError::Stopped)?;
        self.answer(rx).await?
    }

    /// Asks the leader to hand leadership to `to` (best effort; watch the status).
    pub fn transfer_leader(&self, to: u64) {
        let _ = self.tx.try_send(Request::TransferLeader(to));
    }

    /// Tells Raft a peer could not be reached (it stops pipelining to it).
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.tx.try_send(Request::Unreachable(id));
    }

    /// Tells Raft whether a snapshot reached `to`.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.tx.try_send(Request::SnapshotDone { to, ok });
    }

    /// Hands a message from a peer to Raft. Never waits: a full queue drops it (Raft retries).
    pub fn step(&self, msg: Message) {
        let _ = self.tx.try_send(Request::Step(Box::new(msg)));
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
        let _ = self.tx.send(Request::Shutdown).await;
    }
}

struct Pending {
    id: u64,
    reply: Reply<Applied>,
}

/// A proposal made on a follower: raft-rs forwards it to the leader (with other Raft traffic,
/// over the peer stream), which picks its index, so it is recognised by its id and bytes.
struct Forwarded {
    data: Vec<u8>,
    reply: Reply<Applied>,
    deadline: tokio::time::Instant,
}

/// Applied entries accumulate in one redb write transaction across Readies, committed (without
/// an fsync) when a read (linearizable or local), a snapshot or a checkpoint needs the state,
/// or after [`MAX_OPEN_ENTRIES`] or [`MAX_OPEN_TIME`]: a busy node commits the state machine
/// about once a second instead of once per Ready. A transaction copies each B-tree page it
/// touches once, however often it touches it: with random keys over a table of a few thousand
/// leaves, a transaction of 1,000 puts copied (and checksummed at commit) a leaf for nearly
/// every put, one of ~20,000 puts (a second's worth) a leaf per several; that was ~15 % more
/// throughput at 64 clients. Dirty pages are held in memory either way until the next
/// checkpoint (redb writes non-durable commits out only then), so a longer transaction costs no
/// more memory. Clients of key/value writes are answered before that commit: their entries are
/// durable in the log on a majority, and every read through the API waits for the commit.
/// Any other change (VMs, nodes, members) is committed before its client is answered, so the
/// reconciler and the transport, which read the tables directly, never see it late.
struct OpenTxn {
    txn: WriteTransaction,
    entries: usize,
    since: tokio::time::Instant,
    /// The index of the last entry applied in it that changed more than the key/value table.
    version: Option<u64>,
}

/// Most entries applied in one open transaction before it is committed.
const MAX_OPEN_ENTRIES: usize = 100_000;
/// Longest a transaction stays open.
const MAX_OPEN_TIME: Duration = Duration::from_secs(1);

pub struct Driver<T: Transport> {
    cfg: RaftConfig,
    raw: RawNode<DiskStorage>,
    transport: Arc<T>,
    rx: mpsc::Receiver<Request>,
    status_tx: watch::Sender<NodeStatus>,
    /// Proposals by the log index they were appended at.
    proposals: BTreeMap<u64, Pending>,
    /// Proposals forwarded to the leader, by envelope id.
    forwarded: HashMap<u64, Forwarded>,
    /// Plain proposals taken from the queue this turn, proposed together as one Raft message
    /// (so the leader appends them at once and replicates them in one message per follower).
    batch: Vec<(Command, Reply<Applied>)>,
    /// Read requests waiting for their ReadIndex, by request context.
    reads_inflight: HashMap<u64, Reply<u64>>,
    /// Read requests that know their read index and wait for it to be applied.
    reads_ready: Vec<(u64, Reply<u64>)>,
    /// Local (stale) reads taken this turn.
    local_reads: Vec<oneshot::Sender<u64>>,
    applied: u64,
    next_id: u64,
    db: Arc<Database>,
    /// Bytes appended since the last compaction.
    appended_bytes: u64,
    /// The state machine's open write transaction (see [`OpenTxn`]).
    open: Option<OpenTxn>,
    state_version_tx: watch::Sender<u64>,
    /// The driver's own randomness (election jitter, request ids), so a simulation run is a
    /// function of its seed: raft-rs's `thread_rng` is seeded by a raw syscall MadSim cannot see.
    rng: rand::rngs::StdRng,
}

/// Entropy for the driver's generator: the OS in production; under MadSim the simulated clock,
/// which the seed determines.
fn rng_seed(id: u64) -> u64 {
    #[cfg(not(madsim))]
    let base = rand::random::<u64>();
    #[cfg(madsim)]
    let base = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    base ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl<T: Transport> Driver<T> {
    /// Builds the driver over an opened store. Returns it with the handle clients use.
    pub fn new(cfg: RaftConfig, storage: DiskStorage, transport: Arc<T>) -> Result<(Self, Handle), StorageError> {
        let (applied, _) = storage.applied()?;
        let db = storage.db().clone();
        let rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let raw = RawNode::new(&rc, storage, &crate::logger::raft_logger())
            .map_err(|e| StorageError::Corrupt(format!("cannot start raft: {e}")))?;
        let (tx, rx) = mpsc::channel(8192);
        let cfg_id = cfg.id;
        let cfg_reply_spin = cfg.reply_spin;
        let (state_version_tx, state_version) = watch::channel(applied);
        let mut d = Driver {
            cfg,
            raw,
            transport,
            rx,
            status_tx: watch::channel(NodeStatus {
                id: 0,
                role: Role::Follower,
                term: 0,
                leader_id: None,
                commit: 0,
                applied,
                last_index: 0,
                voters: vec![],
                learners: vec![],
            })
            .0,
            proposals: BTreeMap::new(),
            forwarded: HashMap::new(),
            batch: Vec::new(),
            reads_inflight: HashMap::new(),
            reads_ready: Vec::new(),
            local_reads: Vec::new(),
            applied,
            next_id: 0,
            db: db.clone(),
            appended_bytes: 0,
            open: None,
            state_version_tx,
            rng: rand::rngs::StdRng::seed_from_u64(rng_seed(cfg_id)),
        };
        d.next_id = d.rng.gen::<u64>() >> 1;
        d.publish();
        let handle = Handle {
            tx,
            status: d.status_tx.subscribe(),
            state_version,
            db,
            reply_spin: cfg_reply_spin,
            waiting: Arc::default(),
        };
        Ok((d, handle))
    }

    /// Runs until shut down or until the store fails (which is returned: the node must stop).
    pub async fn run(mut self) -> Result<(), StorageError> {
        // A lone voter need not wait out an election timeout after a restart.
        let cs = self.raw.store().conf_state().clone();
        if cs.voters == [self.cfg.id] && cs.learners.is_empty() {
            let _ = self.raw.campaign();
        }
        self.rejitter();
        let mut ticker = tokio::time::interval(self.cfg.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut worked = false;
        loop {
            // Right after a turn with work, the next request usually follows within tens of
            // µs: poll for it a moment before sleeping (see `RaftConfig::idle_spin`).
            let spun = if worked { self.spin() } else { None };
            let req = match spun {
                Some(req) => {
                    // A tick that fell due meanwhile is not skipped.
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    if ticker.poll_tick(&mut cx).is_ready() {
                        self.tick();
                    }
                    Some(req)
                }
                None => {
                    // Going idle: the log claims its last sync (cheap, no fsync; see the WAL).
                    self.raw.mut_store().seal()?;
                    tokio::select! {
                        _ = ticker.tick() => {
                            self.tick();
                            None
                        }
                        req = self.rx.recv() => match req {
                            Some(req) => Some(req),
                            None => break,
                        },
                    }
                }
            };
            worked = req.is_some();
            if let Some(req) = req {
                if !self.handle(req) {
                    break;
                }
                let mut n = 1;
                while n < self.cfg.max_batch {
                    match self.rx.try_recv() {
                        Ok(req) => {
                            if !self.handle(req) {
                                return self.finish();
                            }
                            n += 1;
                        }
                        Err(_) => break,
                    }
                }
                self.propose_batch();
            }
            self.on_ready()?;
            if !self.local_reads.is_empty() {
                self.commit_state(false)?;
                for r in self.local_reads.drain(..) {
                    let _ = r.send(self.applied);
                }
            }
            if self.open.as_ref().is_some_and(|o| o.since.elapsed() >= MAX_OPEN_TIME) {
                self.commit_state(false)?;
            }
        }
        self.finish()
    }

    fn tick(&mut self) {
        self.raw.tick();
        self.rejitter();
        self.promote_learners();
        self.expire_forwarded();
    }

    /// Polls the queue for up to `idle_spin`, letting other threads have the CPU between polls;
    /// `None` if nothing came. Waking a sleeping thread costs far more than a poll on virtual
    /// machines (~20 µs per cross-CPU wake-up measured on the benchmark machine), and the next
    /// message of a busy exchange usually arrives within it. Never under simulation (its clock
    /// stands still while a task runs). Only for a loop on a thread of its own: it blocks that
    /// thread's other tasks while it polls.
    fn spin(&mut self) -> Option<Request> {
        #[cfg(madsim)]
        return None;
        #[cfg(not(madsim))]
        {
            if self.cfg.idle_spin.is_zero() {
                return None;
            }
            let until = std::time::Instant::now() + self.cfg.idle_spin;
            loop {
                match self.rx.try_recv() {
                    Ok(req) => return Some(req),
                    Err(mpsc::error::TryRecvError::Disconnected) => return None,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                if std::time::Instant::now() >= until {
                    return None;
                }
                std::thread::yield_now();
            }
        }
    }

    fn finish(mut self) -> Result<(), StorageError> {
        for (_, p) in std::mem::take(&mut self.proposals) {
            let _ = p.reply.send(Err(ProposeError::Stopped));
        }
        for (_, f) in std::mem::take(&mut self.forwarded) {
            let _ = f.reply.send(Err(ProposeError::Stopped));
        }
        for (_, reply) in std::mem::take(&mut self.batch) {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
        self.local_reads.clear();
        // A clean stop leaves nothing to replay: checkpoint the state machine and the log.
        self.raw.mut_store().sync(true)?;
        if self.open.is_none() {
            self.open = Some(OpenTxn::begin(&self.db)?);
        }
        self.commit_state(true)
    }

    /// Commits the open state transaction (durably for a checkpoint, which the caller then may
    /// compact the log up to), and tells watchers of the state version what became visible.
    fn commit_state(&mut self, durable: bool) -> Result<(), StorageError> {
        let Some(mut o) = self.open.take() else { return Ok(()) };
        let d = if durable { Durability::Immediate } else { Durability::None };
        o.txn.set_durability(d).map_err(StorageError::db)?;
        o.txn.commit().map_err(StorageError::db)?;
        if let Some(v) = o.version {
            self.state_version_tx.send_replace(v);
        }
        Ok(())
    }

    /// At the start of every election period, draws its timeout from our own generator in
    /// [election_ticks, 2 * election_ticks), replacing raft-rs's draw.
    fn rejitter(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let e = self.cfg.election_ticks;
            let t = self.rng.gen_range(e..2 * e);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    fn leader_id(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|&l| l != raft::INVALID_ID)
    }

    /// Proposes this turn's plain commands as one Raft message. On the leader each is tracked by
    /// its log index and id until it is applied or known to be lost; on a follower raft-rs
    /// forwards the message to the leader and each is tracked by its id (and bytes) instead.
    fn propose_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let leader = self.raw.raft.state == StateRole::Leader;
        if !leader && (self.raw.raft.state != StateRole::Follower || self.leader_id().is_none()) {
            for (_, reply) in batch {
                let _ = reply.send(Err(ProposeError::NotLeader { leader_id: self.leader_id() }));
            }
            return;
        }
        let mut msg = Message::default();
        msg.set_msg_type(raft::eraftpb::MessageType::MsgPropose);
        msg.from = self.cfg.id;
        let mut waiting = Vec::with_capacity(batch.len());
        let now = now_ms();
        for (command, reply) in batch {
            self.next_id += 1;
            let data = Envelope { id: self.next_id, now_ms: now, command }.encode();
            let mut e = Entry::default();
            e.data = data.clone().into();
            msg.mut_entries().push(e);
            waiting.push((self.next_id, data, reply));
        }
        let n = waiting.len() as u64;
        let before = self.raw.raft.raft_log.last_index();
        let stepped = self.raw.raft.step(msg);
        let after = self.raw.raft.raft_log.last_index();
        if leader && stepped.is_ok() && after == before + n {
            for (i, (id, _, reply)) in (before + 1..).zip(waiting) {
                self.proposals.insert(i, Pending { id, reply });
            }
        } else if !leader && stepped.is_ok() {
            let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
            for (id, data, reply) in waiting {
                self.forwarded.insert(id, Forwarded { data, reply, deadline });
            }
        } else {
            // raft-rs refused them (e.g. a leadership transfer is under way): none was appended.
            let err = if stepped.is_err() {
                ProposeError::NotLeader { leader_id: self.leader_id() }
            } else {
                ProposeError::Dropped
            };
            for (_, _, reply) in waiting {
                let _ = reply.send(Err(err.clone()));
            }
        }
    }

    /// Proposes a membership change (carrying `command`) and tracks it by its log index and id
    /// until it is applied or known to be lost.
    fn track(&mut self, command: Command, reply: Reply<Applied>, cc: ConfChangeV2) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ProposeError::NotLeader { leader_id: self.leader_id() }));
            return;
        }
        self.next_id += 1;
        let env = Envelope { id: self.next_id, now_ms: now_ms(), command };
        let before = self.raw.raft.raft_log.last_index();
        let proposed = self.raw.propose_conf_change(env.encode(), cc).map_err(|e| ProposeError::Busy(e.to_string()));
        let index = self.raw.raft.raft_log.last_index();
        match proposed {
            // raft-rs may drop a proposal without an error (e.g. during a leadership transfer).
            Ok(()) if index > before => {
                self.proposals.insert(index, Pending { id: env.id, reply });
            }
            Ok(()) => {
                let _ = reply.send(Err(ProposeError::Dropped));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Forwarded proposals not seen applied in time get a truthful "unconfirmed".
    fn expire_forwarded(&mut self) {
        if self.forwarded.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        let expired: Vec<u64> = self.forwarded.iter().filter(|(_, f)| f.deadline <= now).map(|(id, _)| *id).collect();
        for id in expired {
            if let Some(f) = self.forwarded.remove(&id) {
                let _ = f.reply.send(Err(ProposeError::Unconfirmed(FORWARD_TIMEOUT)));
            }
        }
    }

    /// Returns false to stop.
    fn handle(&mut self, req: Request) -> bool {
        match req {
            Request::Propose { command, reply } => self.batch.push((command, reply)),
            Request::ConfChange { cc, command, reply } => self.track(command, reply, cc),
            Request::ReadIndex { reply } => {
                if self.leader_id().is_none() {
                    let _ = reply.send(Err(ProposeError::NotLeader { leader_id: None }));
                    return true;
                }
                self.next_id += 1;
                self.reads_inflight.insert(self.next_id, reply);
                self.raw.read_index(self.next_id.to_be_bytes().to_vec());
            }
            Request::LocalRead { reply } => self.local_reads.push(reply),
            Request::TransferLeader(to) => self.raw.transfer_leader(to),
            Request::Unreachable(id) => self.raw.report_unreachable(id),
            Request::SnapshotDone { to, ok } => {
                let st = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                self.raw.report_snapshot(to, st);
            }
            Request::Step(m) => {
                // Once we belong to a cluster, traffic from outside it (a removed node, or a
                // stranger) is dropped, so it cannot disrupt elections.
                let cs = self.raw.store().conf_state();
                let member =
                    |id| cs.voters.contains(&id) || cs.learners.contains(&id) || cs.voters_outgoing.contains(&id);
                if !cs.voters.is_empty() && !member(m.from) {
                    tracing::debug!(from = m.from, "dropping message from a non-member");
                    return true;
                }
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!("dropping raft message: {e}");
                }
                self.rejitter();
            }
            Request::Shutdown => return false,
        }
        true
    }

    fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        if rd.ss().is_some() {
            // Leadership changed: pending ReadIndex requests will never be answered.
            for (_, r) in self.reads_inflight.drain() {
                let _ = r.send(Err(ProposeError::NotLeader { leader_id: None }));
            }
        }
        // Entries committed here are already durable (on a majority, ours included), so their
        // order against the rest of the Ready is free. The leader applies them before it waits
        // for the fsync of new entries, so their clients do not wait for it either; with no new
        // entries to replicate, even before sending its messages (then only commit-index updates
        // and heartbeats, which no client waits for). A follower persists and acknowledges new
        // entries first: the leader's next commit, and so every client, waits on that
        // acknowledgement; its own apply does not.
        let leader = self.raw.raft.state == StateRole::Leader;
        let mut committed = rd.take_committed_entries();
        if leader && rd.entries().is_empty() && rd.snapshot().is_empty() {
            self.apply_committed(std::mem::take(&mut committed), None)?;
        }
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        for rs in rd.take_read_states() {
            let ctx = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or_default());
            if let Some(r) = self.reads_inflight.remove(&ctx) {
                self.reads_ready.push((rs.index, r));
            }
        }

        if !rd.snapshot().is_empty() {
            // The state first, durably; then the log restarts at it (see `DiskStorage::open`
            // for a crash in between).
            self.commit_state(false)?;
            let txn = self.db.begin_write().map_err(StorageError::db)?;
            self.install_snapshot(&txn, rd.snapshot())?;
            txn.commit().map_err(StorageError::db)?;
            self.raw.mut_store().reset_log(rd.snapshot().get_metadata())?;
            self.state_version_tx.send_replace(self.applied);
        }
        if leader {
            self.apply_committed(std::mem::take(&mut committed), None)?;
        }

        if !rd.entries().is_empty() || rd.hs().is_some() {
            self.appended_bytes += rd.entries().iter().map(|e| e.data.len() as u64).sum::<u64>();
            let store = self.raw.mut_store();
            store.stage_append(rd.entries())?;
            if let Some(hs) = rd.hs() {
                store.stage_hard_state(hs);
            }
            // raft-rs says when durability is required (new entries, term or vote); a commit
            // index alone can be relearned after a crash, so it is written without an fsync.
            store.sync(rd.must_sync())?;
        }
        self.transport.send(rd.take_persisted_messages());
        self.apply_committed(committed, None)?;

        let mut light = self.raw.advance(rd);
        self.transport.send(light.take_messages());
        self.apply_committed(light.take_committed_entries(), light.commit_index())?;
        self.raw.advance_apply();
        self.answer_reads()?;
        self.publish();
        Ok(())
    }

    /// Applies committed entries in the open state transaction and answers their clients (see
    /// [`OpenTxn`] for when it is committed); `commit` records a commit index learned from a
    /// light ready.
    fn apply_committed(&mut self, entries: Vec<Entry>, commit: Option<u64>) -> Result<(), StorageError> {
        if let Some(c) = commit {
            self.raw.mut_store().set_commit(c);
        }
        if entries.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        let mut open = match self.open.take() {
            Some(o) => o,
            None => OpenTxn::begin(&self.db)?,
        };
        open.entries += entries.len();
        let touched = self.apply_entries(&open.txn, entries, &mut replies);
        let full = open.entries >= MAX_OPEN_ENTRIES;
        open.version = touched.as_ref().ok().copied().flatten().or(open.version);
        self.open = Some(open);
        let touched = touched?;
        if let Some(to) = self.compaction_due() {
            // A durable commit (a checkpoint) makes the log before `to` redundant.
            let started = std::time::Instant::now();
            self.commit_state(true)?;
            let took_ms = started.elapsed().as_secs_f64() * 1e3;
            tracing::debug!(to, applied = self.applied, took_ms, "checkpointed; compacting the log");
            self.raw.mut_store().compact_log(to)?;
            self.appended_bytes = 0;
        } else if touched.is_some() || full {
            self.commit_state(false)?;
        }
        Self::deliver(replies);
        Ok(())
    }

    fn install_snapshot(&mut self, txn: &WriteTransaction, snap: &Snapshot) -> Result<(), StorageError> {
        let meta = snap.get_metadata();
        tracing::info!(index = meta.index, term = meta.term, "installing snapshot");
        blixard_core::state::import(&mut TxnStore::new(txn), &snap.data)?;
        self.raw.mut_store().stage_conf_state(txn, meta.get_conf_state())?;
        DiskStorage::stage_applied(txn, meta.index, meta.term)?;
        self.applied = meta.index;
        let later = self.proposals.split_off(&(meta.index + 1));
        for (_, p) in std::mem::replace(&mut self.proposals, later) {
            let _ = p.reply.send(Err(ProposeError::Dropped));
        }
        Ok(())
    }

    /// Applies entries in `txn`; returns the index of the last one that changed more than the
    /// key/value table.
    fn apply_entries(
        &mut self,
        txn: &WriteTransaction,
        entries: Vec<Entry>,
        replies: &mut Vec<(Reply<Applied>, Result<Applied, ProposeError>)>,
    ) -> Result<Option<u64>, StorageError> {
        let Some(last) = entries.last() else { return Ok(None) };
        let mut touched = None;
        let (last_index, last_term) = (last.index, last.term);
        let mut state = TxnStore::new(txn);
        for e in entries {
            if e.index <= self.applied {
                continue;
            }
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    let pending = self.proposals.remove(&e.index);
                    if e.data.is_empty() {
                        // A new leader's empty entry.
                        if let Some(p) = pending {
                            replies.push((p.reply, Err(ProposeError::Dropped)));
                        }
                    } else {
                        let (id, outcome) = match Envelope::decode(&e.data) {
                            Ok(env) => {
                                if !matches!(
                                    env.command,
                                    Command::Noop | Command::KvPut { .. } | Command::KvDelete { .. }
                                ) {
                                    touched = Some(e.index);
                                }
                                (env.id, blixard_core::state::apply(&mut state, e.index, &env)?)
                            }
                            // Every node decodes the same bytes the same way, so this stays deterministic.
                            Err(err) => (
                                0,
                                Err(blixard_core::CommandError::FailedPrecondition(format!(
                                    "undecodable entry: {err}"
                                ))),
                            ),
                        };
                        if let Some(p) = pending {
                            let r = if p.id == id {
                                Ok(Applied { index: e.index, outcome })
                            } else {
                                Err(ProposeError::Dropped)
                            };
                            replies.push((p.reply, r));
                        } else if self.forwarded.get(&id).is_some_and(|f| f.data[..] == e.data[..]) {
                            if let Some(f) = self.forwarded.remove(&id) {
                                replies.push((f.reply, Ok(Applied { index: e.index, outcome })));
                            }
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    touched = Some(e.index);
                    let pending = self.proposals.remove(&e.index);
                    let cc = decode_conf_change(&e)?;
                    let env = Envelope::decode(&e.context).ok();
                    // A change raft-rs refuses is refused the same way on every node.
                    let outcome = match self.raw.apply_conf_change(&cc) {
                        Ok(cs) => {
                            self.raw.mut_store().stage_conf_state(txn, &cs)?;
                            if !cs.voters.contains(&self.cfg.id) && !cs.learners.contains(&self.cfg.id) {
                                tracing::warn!(id = self.cfg.id, "this node was removed from the cluster");
                            }
                            match &env {
                                Some(env) => blixard_core::state::apply(&mut state, e.index, env)?,
                                None => Ok(blixard_core::Response::Done),
                            }
                        }
                        Err(err) => Err(blixard_core::CommandError::FailedPrecondition(format!(
                            "membership change refused: {err}"
                        ))),
                    };
                    if let Some(p) = pending {
                        let ok = env.as_ref().is_some_and(|env| env.id == p.id);
                        let r = if ok { Ok(Applied { index: e.index, outcome }) } else { Err(ProposeError::Dropped) };
                        replies.push((p.reply, r));
                    }
                }
            }
            self.applied = e.index;
        }
        // Keep "commit >= applied" true even for commits learned from a light ready.
        self.raw.mut_store().set_commit(last_index);
        DiskStorage::stage_applied(txn, last_index, last_term)?;
        Ok(touched)
    }

    /// Where to compact the log to, once past the configured thresholds. The state itself is
    /// the snapshot: a follower that needs compacted entries gets the applied state instead.
    fn compaction_due(&mut self) -> Option<u64> {
        let first = self.raw.store().first_index_cached();
        let in_log = self.applied.saturating_sub(first) + 1;
        if in_log <= self.cfg.compact_entries && self.appended_bytes <= self.cfg.compact_bytes {
            return None;
        }
        let to = self.applied.saturating_sub(self.cfg.keep_entries) + 1;
        if to > first {
            Some(to)
        } else {
            self.appended_bytes = 0;
            None
        }
    }

    /// On the leader: a learner whose log has caught up becomes a voter, one change at a time.
    fn promote_learners(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.raw.raft.has_pending_conf() {
            return;
        }
        // Caught up: it acknowledged entries past our first index (so it holds the snapshot or
        // the whole log) and is within a few entries of our last one.
        let last = self.raw.raft.raft_log.last_index();
        let first = self.raw.store().first_index_cached();
        let learners = self.raw.store().conf_state().learners.clone();
        let Some(id) = learners
            .into_iter()
            .find(|id| self.raw.raft.prs().get(*id).is_some_and(|pr| pr.matched >= first && pr.matched + 16 >= last))
        else {
            return;
        };
        let mut cc = ConfChangeV2::default();
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(raft::prelude::ConfChangeType::AddNode);
        single.node_id = id;
        cc.mut_changes().push(single);
        self.next_id += 1;
        let env = Envelope { id: self.next_id, now_ms: now_ms(), command: Command::Noop };
        match self.raw.propose_conf_change(env.encode(), cc) {
            Ok(()) => tracing::info!(id, "promoting caught-up learner to voter"),
            Err(e) => tracing::debug!(id, "cannot promote learner yet: {e}"),
        }
    }

    fn deliver(replies: Vec<(Reply<Applied>, Result<Applied, ProposeError>)>) {
        for (reply, r) in replies {
            let _ = reply.send(r);
        }
    }

    /// Answers the reads whose index is applied, once the state they read is committed.
    fn answer_reads(&mut self) -> Result<(), StorageError> {
        let applied = self.applied;
        if !self.reads_ready.iter().any(|(i, _)| *i <= applied) {
            return Ok(());
        }
        self.commit_state(false)?;
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.reads_ready).into_iter().partition(|(i, _)| *i <= applied);
        self.reads_ready = waiting;
        for (i, r) in done {
            let _ = r.send(Ok(i));
        }
        Ok(())
    }

    fn publish(&mut self) {
        let r = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let s = NodeStatus {
            id: self.cfg.id,
            role: Role::of(r.state),
            term: r.term,
            leader_id: self.leader_id(),
            commit: r.raft_log.committed,
            applied: self.applied,
            last_index: r.raft_log.last_index(),
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
        };
        self.status_tx.send_if_modified(|old| {
            if *old != s {
                *old = s;
                true
            } else {
                false
            }
        });
    }
}

impl OpenTxn {
    fn begin(db: &Database) -> Result<Self, StorageError> {
        Ok(OpenTxn {
            txn: db.begin_write().map_err(StorageError::db)?,
            entries: 0,
            since: tokio::time::Instant::now(),
            version: None,
        })
    }
}

fn decode_conf_change(e: &Entry) -> Result<ConfChangeV2, StorageError> {
    use protobuf::Message as _;
    use raft::prelude::ConfChange;
    use raft_proto::ConfChangeI;
    if e.get_entry_type() == EntryType::EntryConfChange {
        let cc = ConfChange::parse_from_bytes(&e.data)
            .map_err(|err| StorageError::Corrupt(format!("conf change: {err}")))?;
        Ok(cc.into_v2())
    } else {
        ConfChangeV2::parse_from_bytes(&e.data).map_err(|err| StorageError::Corrupt(format!("conf change: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
