//! The Ready loop's shell: the one task that owns the raft-rs `RawNode` and the redb write side,
//! and carries out what the pure [`Engine`] decides.
//!
//! Each turn: take Raft's own traffic first, then what clients queued (group commit: many
//! proposals, one Ready); the engine proposes the turn's writes as one message and asks one read
//! index for its reads; then the Ready is handled in the order raft-rs requires (see
//! [`crate::ready`]). A client is answered after its entry is committed and applied, with the
//! command's own result (or a duplicate's recorded one).
//!
//! Applying commits the state machine to redb without an fsync; every `compact_entries` entries
//! (or `compact_bytes`) the apply is made durable instead (a checkpoint) and only then is the
//! log compacted up to it, so the log always holds what a crash may have taken from redb.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use blixard_core::{Applied, ClientSession};
use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, StateRole};
use rand::{Rng, SeedableRng};
use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot, watch};

use crate::engine::{Effect, Engine, EngineConfig, Proposal, Token};
use crate::error::StorageError;
use crate::handle::{ClientRequest, Handle, PeerRequest, Reply, CLIENT_QUEUE, PEER_QUEUE};
use crate::known::Known;
use crate::storage::DiskStorage;
use crate::transport::Transport;
use crate::types::{NodeStatus, ProposeError, RaftConfig, Role};

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
pub(crate) struct OpenTxn {
    pub txn: WriteTransaction,
    pub entries: usize,
    pub since: tokio::time::Instant,
    /// The index of the last entry applied in it that changed more than the key/value table.
    pub version: Option<u64>,
    /// Its hottest rows, written into it when it is committed (see [`crate::hot`]).
    pub hot: crate::hot::HotRows,
}

/// Most entries applied in one open transaction before it is committed.
pub(crate) const MAX_OPEN_ENTRIES: usize = 100_000;
/// Longest a transaction stays open.
const MAX_OPEN_TIME: Duration = Duration::from_secs(1);
/// Raft messages taken per turn at most before client requests get their turn.
const MAX_PEER_BATCH: usize = 4096;

pub struct Driver<T: Transport> {
    pub(crate) cfg: RaftConfig,
    pub(crate) raw: RawNode<DiskStorage>,
    pub(crate) transport: Arc<T>,
    clients: mpsc::Receiver<ClientRequest>,
    peers: mpsc::Receiver<PeerRequest>,
    pub(crate) status_tx: watch::Sender<NodeStatus>,
    pub(crate) engine: Engine,
    writes: HashMap<Token, Reply<Applied>>,
    reads: HashMap<Token, Reply<u64>>,
    next_token: Token,
    /// Local (stale) reads taken this turn.
    local_reads: Vec<oneshot::Sender<u64>>,
    pub(crate) applied: u64,
    pub(crate) db: Arc<Database>,
    /// Bytes appended since the last compaction.
    pub(crate) appended_bytes: u64,
    /// The state machine's open write transaction (see [`OpenTxn`]).
    pub(crate) open: Option<OpenTxn>,
    /// A checkpoint being made durable, and the overlay applied into meanwhile.
    pub(crate) checkpoint: Option<crate::checkpoint::Checkpoint>,
    pub(crate) state_version_tx: watch::Sender<u64>,
    pub(crate) known: Known,
    /// The driver's own randomness (election jitter, read contexts), so a simulation run is a
    /// function of its seed: raft-rs's `thread_rng` is seeded by a raw syscall MadSim cannot see.
    rng: rand::rngs::StdRng,
    /// The engine's clock starts here.
    start: tokio::time::Instant,
    /// Peer messages dropped by [`crate::validate`].
    pub(crate) refused: Arc<std::sync::atomic::AtomicU64>,
    /// Committed entries skipped because they do not decode (see [`crate::apply`]).
    pub(crate) undecodable: Arc<std::sync::atomic::AtomicU64>,
    /// The observer (metrics), shared with the handles.
    pub(crate) observed: crate::observe::Observed,
    /// Entries in the last log write (see [`RaftConfig::group_commit`]).
    pub(crate) last_append: usize,
}

/// Entropy for the driver's generator: the OS in production; under MadSim the simulated clock,
/// which the seed determines.
fn rng_seed(id: u64) -> u64 {
    #[cfg(not(madsim))]
    let base = rand::random::<u64>();
    #[cfg(madsim)]
    let base =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    base ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
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
        let (client_tx, clients) = mpsc::channel(CLIENT_QUEUE);
        let (peer_tx, peers) = mpsc::channel(PEER_QUEUE);
        let (state_version_tx, state_version) = watch::channel(applied);
        let mut rng = rand::rngs::StdRng::seed_from_u64(rng_seed(cfg.id));
        let engine_cfg = EngineConfig { retry_ms: cfg.retry.as_millis() as u64, ..EngineConfig::default() };
        let engine = Engine::new(engine_cfg, rng.gen::<u64>() >> 1);
        let own = ClientSession::new(rng.gen::<u128>());
        let reply_spin = cfg.reply_spin;
        let mut d = Driver {
            cfg,
            raw,
            transport,
            clients,
            peers,
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
            engine,
            writes: HashMap::new(),
            reads: HashMap::new(),
            next_token: 0,
            local_reads: Vec::new(),
            applied,
            db: db.clone(),
            appended_bytes: 0,
            open: None,
            checkpoint: None,
            state_version_tx,
            known: Known::default(),
            rng,
            start: tokio::time::Instant::now(),
            refused: Arc::default(),
            undecodable: Arc::default(),
            observed: crate::observe::Observed::default(),
            last_append: 0,
        };
        d.learn_unapplied_log();
        d.publish();
        let handle = Handle {
            clients: client_tx,
            peers: peer_tx,
            status: d.status_tx.subscribe(),
            state_version,
            db,
            reply_spin,
            waiting: Arc::default(),
            own: Arc::new(Mutex::new(own)),
            refused: d.refused.clone(),
            undecodable: d.undecodable.clone(),
            observed: d.observed.clone(),
        };
        Ok((d, handle))
    }

    /// The members named by configuration changes in the log past the applied index.
    fn learn_unapplied_log(&mut self) {
        let last = self.raw.raft.raft_log.last_index();
        if last > self.applied {
            let ctx = raft::GetEntriesContext::empty(false);
            if let Ok(es) = raft::Storage::entries(self.raw.store(), self.applied + 1, last + 1, None, ctx) {
                self.known.appended(&es);
            }
        }
    }

    /// Milliseconds since the driver started, the engine's clock.
    pub(crate) fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, t: tokio::time::Instant) -> u64 {
        t.saturating_duration_since(self.start).as_millis() as u64
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
            // Right after a turn with work, the next message usually follows within tens of
            // µs: poll for it a moment before sleeping (see `RaftConfig::idle_spin`).
            let woke = if worked { self.spin() } else { false };
            worked = false;
            if woke {
                // A tick that fell due meanwhile is not skipped.
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if ticker.poll_tick(&mut cx).is_ready() {
                    self.tick();
                }
            } else {
                // Going idle: the log claims its last sync (cheap, no fsync; see the WAL).
                self.raw.mut_store().seal()?;
                let got = tokio::select! {
                    biased;
                    m = self.peers.recv() => match m {
                        Some(m) => {
                            self.on_peer(m);
                            true
                        }
                        None => break,
                    },
                    r = self.clients.recv() => match r {
                        Some(r) => {
                            if !self.on_client(r) {
                                break;
                            }
                            true
                        }
                        None => break,
                    },
                    _ = ticker.tick() => {
                        self.tick();
                        false
                    }
                };
                worked = got;
            }
            let (more, stop) = self.drain();
            let stop = stop || (more && self.gather());
            worked = worked || woke || more;
            let now = self.now();
            self.engine.flush(now);
            self.effects()?;
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
            self.poll_checkpoint()?;
            if stop {
                break;
            }
        }
        self.finish()
    }

    /// Takes what is queued: all of Raft's traffic (up to a bound), then up to a batch of client
    /// requests. Returns whether anything came, and whether to stop.
    fn drain(&mut self) -> (bool, bool) {
        let mut any = false;
        for _ in 0..MAX_PEER_BATCH {
            match self.peers.try_recv() {
                Ok(m) => {
                    self.on_peer(m);
                    any = true;
                }
                Err(_) => break,
            }
        }
        for _ in 0..self.cfg.max_batch {
            match self.clients.try_recv() {
                Ok(r) => {
                    any = true;
                    if !self.on_client(r) {
                        return (true, true);
                    }
                }
                Err(_) => break,
            }
        }
        (any, false)
    }

    /// Group commit (see [`RaftConfig::group_commit`]): on a busy leader, takes client writes
    /// (and Raft traffic) for up to `group_commit` more before this turn writes the log, yielding
    /// the CPU between polls. Returns whether to stop.
    fn gather(&mut self) -> bool {
        #[cfg(madsim)]
        return false;
        #[cfg(not(madsim))]
        {
            let busy = self.last_append >= crate::types::GROUP_COMMIT_MIN;
            if self.cfg.group_commit.is_zero() || !busy || self.raw.raft.state != StateRole::Leader {
                return false;
            }
            let until = std::time::Instant::now() + self.cfg.group_commit;
            while std::time::Instant::now() < until {
                let (more, stop) = self.drain();
                if stop {
                    return true;
                }
                if !more {
                    std::thread::yield_now();
                }
            }
            false
        }
    }

    fn tick(&mut self) {
        self.raw.tick();
        self.rejitter();
        self.promote_learners();
        let now = self.now();
        self.engine.tick(now);
    }

    /// Polls both queues for up to `idle_spin`, letting other threads have the CPU between
    /// polls; `true` if something came (it was handled). Waking a sleeping thread costs far more
    /// than a poll on virtual machines (~20 µs per cross-CPU wake-up measured on the benchmark
    /// machine), and the next message of a busy exchange usually arrives within it. Never under
    /// simulation (its clock stands still while a task runs). Only for a loop on a thread of its
    /// own: it blocks that thread's other tasks while it polls.
    fn spin(&mut self) -> bool {
        #[cfg(madsim)]
        return false;
        #[cfg(not(madsim))]
        {
            if self.cfg.idle_spin.is_zero() {
                return false;
            }
            let until = std::time::Instant::now() + self.cfg.idle_spin;
            loop {
                if !self.peers.is_empty() || !self.clients.is_empty() {
                    return true;
                }
                if std::time::Instant::now() >= until {
                    return false;
                }
                std::thread::yield_now();
            }
        }
    }

    fn token(&mut self) -> Token {
        self.next_token += 1;
        self.next_token
    }

    /// Returns false to stop.
    fn on_client(&mut self, r: ClientRequest) -> bool {
        match r {
            ClientRequest::Write { env, reply, deadline } => {
                let Some(session) = env.session else {
                    let _ = reply.send(Err(ProposeError::Exhausted("a client write needs a session".into())));
                    return true;
                };
                let conf = blixard_core::membership::change_of(&env.command)
                    .map(|c| crate::apply::conf_change_for(c).write_to_bytes().unwrap_or_default());
                let token = self.token();
                self.writes.insert(token, reply);
                let deadline = self.at(deadline);
                self.engine.submit(token, session.key(), Proposal { data: env.encode(), conf }, deadline);
            }
            ClientRequest::Read { reply, deadline } => {
                let token = self.token();
                self.reads.insert(token, reply);
                let deadline = self.at(deadline);
                self.engine.read(token, deadline);
            }
            ClientRequest::LocalRead { reply } => self.local_reads.push(reply),
            ClientRequest::Shutdown => return false,
        }
        true
    }

    fn on_peer(&mut self, m: PeerRequest) {
        match m {
            PeerRequest::TransferLeader(to) => self.raw.transfer_leader(to),
            PeerRequest::Progress(reply) => {
                let r = &self.raw.raft;
                let prs = if r.state == raft::StateRole::Leader {
                    r.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect()
                } else {
                    Vec::new()
                };
                let _ = reply.send(prs);
            }
            PeerRequest::Unreachable(id) => self.raw.report_unreachable(id),
            PeerRequest::SnapshotDone { to, ok } => {
                self.observed.with(|o| o.snapshot_sent(ok));
                let st = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                self.raw.report_snapshot(to, st);
            }
            PeerRequest::Step(m) => {
                if let Err(why) = self.validate(&m) {
                    let n = self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    // Every refusal is counted; the log shows the 1st, 2nd, 4th, 8th... (a
                    // flood of forged frames must not become a flood of log lines).
                    if n.is_power_of_two() {
                        tracing::warn!(from = m.from, refused = n, "dropping a raft message: {why}");
                    } else {
                        tracing::debug!(from = m.from, "dropping a raft message: {why}");
                    }
                    return;
                }
                if let Err(e) = self.raw.step(*m) {
                    tracing::debug!("dropping raft message: {e}");
                }
                self.rejitter();
            }
        }
    }

    /// Checks a message from a peer against what this node knows (see [`crate::validate`]).
    fn validate(&self, m: &Message) -> Result<(), crate::validate::Refused> {
        let r = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let member = |id: u64| self.known.admits(cs, id);
        // raft-rs answers 0 for an index outside the log; here that is "unknown".
        let (first, last) = (r.raft_log.first_index(), r.raft_log.last_index());
        let term_at = |i: u64| if i + 1 < first || i > last { None } else { r.raft_log.term(i).ok() };
        let leader =
            if r.state == StateRole::Candidate || r.state == StateRole::PreCandidate { 0 } else { r.leader_id };
        let local = crate::validate::Local {
            id: self.cfg.id,
            term: r.term,
            leader,
            in_lease: leader != raft::INVALID_ID && r.election_elapsed < self.cfg.election_ticks,
            is_leader: r.state == StateRole::Leader,
            last_index: last,
            committed: r.raft_log.committed,
            applied: self.applied,
            member: &member,
            term_at: &term_at,
        };
        crate::validate::check(m, &local)
    }

    /// Carries out what the engine decided.
    pub(crate) fn effects(&mut self) -> Result<(), StorageError> {
        let effects = self.engine.take_effects();
        if effects.iter().any(|e| matches!(e, Effect::Read(_, Ok(_)))) {
            // A read is served from the committed state.
            self.commit_state(false)?;
        }
        for e in effects {
            match e {
                Effect::Propose(batch) => self.propose(batch),
                Effect::ReadIndex(ctx) => self.raw.read_index(ctx.to_be_bytes().to_vec()),
                Effect::Write(t, r) => {
                    if let Some(reply) = self.writes.remove(&t) {
                        let _ = reply.send(r);
                    }
                }
                Effect::Read(t, r) => {
                    if let Some(reply) = self.reads.remove(&t) {
                        let _ = reply.send(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// Proposes writes as one Raft message: the leader appends them, a follower forwards them
    /// to the leader with its other Raft traffic. If raft-rs drops them (an election or a
    /// leadership transfer under way), the engine proposes them again.
    fn propose(&mut self, batch: Vec<Proposal>) {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgPropose);
        msg.from = self.cfg.id;
        for p in batch {
            let mut e = Entry::default();
            match p.conf {
                Some(cc) => {
                    e.set_entry_type(EntryType::EntryConfChangeV2);
                    e.data = cc.into();
                    e.context = p.data.into();
                }
                None => e.data = p.data.into(),
            }
            msg.mut_entries().push(e);
        }
        if let Err(e) = self.raw.raft.step(msg) {
            tracing::debug!("proposal not taken now ({e}); it will be proposed again");
        }
    }

    fn finish(mut self) -> Result<(), StorageError> {
        self.engine.stop();
        self.effects()?;
        self.local_reads.clear();
        // A clean stop leaves nothing to replay: checkpoint the state machine and the log.
        self.raw.mut_store().sync(true)?;
        self.raw.mut_store().seal()?;
        if self.open.is_none() {
            self.open = Some(OpenTxn::begin(&self.db)?);
        }
        self.commit_state(true)
    }

    /// Commits the open state transaction (durably for a checkpoint, which the caller then may
    /// compact the log up to), and tells watchers of the state version what became visible.
    /// A checkpoint under way is finished first (its overlay is not visible to readers).
    pub(crate) fn commit_state(&mut self, durable: bool) -> Result<(), StorageError> {
        if self.checkpointing() {
            self.finish_checkpoint()?;
        }
        let Some(mut o) = self.open.take() else { return Ok(()) };
        let d = if durable { Durability::Immediate } else { Durability::None };
        o.hot.flush(&o.txn)?;
        o.txn.set_durability(d).map_err(StorageError::db)?;
        o.txn.commit().map_err(StorageError::db)?;
        if let Some(v) = o.version {
            self.state_version_tx.send_replace(v);
        }
        Ok(())
    }

    /// At the start of every election period, draws its timeout from our own generator in
    /// [election_ticks, 2 * election_ticks), replacing raft-rs's draw.
    pub(crate) fn rejitter(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let e = self.cfg.election_ticks;
            let t = self.rng.gen_range(e..2 * e);
            self.raw.raft.set_randomized_election_timeout(t);
        }
    }

    pub(crate) fn leader_id(&self) -> Option<u64> {
        Some(self.raw.raft.leader_id).filter(|&l| l != raft::INVALID_ID && self.raw.raft.state != StateRole::Candidate)
    }
}

impl OpenTxn {
    pub(crate) fn begin(db: &Database) -> Result<Self, StorageError> {
        Ok(OpenTxn {
            txn: db.begin_write().map_err(StorageError::db)?,
            entries: 0,
            since: tokio::time::Instant::now(),
            version: None,
            hot: Default::default(),
        })
    }
}
