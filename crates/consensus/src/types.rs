//! The driver's vocabulary: configuration, status and errors.

use std::time::Duration;

use raft::StateRole;

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
    /// Group commit on the leader: when its last log write held at least
    /// [`GROUP_COMMIT_MIN`] entries (it is busy), a turn that took client writes waits up to
    /// this long for more before it writes the log, so one write and one `fdatasync` (on the
    /// leader, and on each follower for the append it receives) carry more entries (0: never).
    pub group_commit: Duration,
    /// A write not seen applied this long after it was proposed is proposed again.
    pub retry: Duration,
}

/// See [`RaftConfig::group_commit`]: below this many entries in the last log write, a leader
/// writes at once (a light load waits for no one).
pub const GROUP_COMMIT_MIN: usize = 8;

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
            group_commit: Duration::ZERO,
            retry: Duration::from_secs(2),
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
    pub(crate) fn of(r: StateRole) -> Self {
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
    /// Not applied, and never proposed (no leader was known in time): safe to retry anywhere.
    #[error("no leader is known; the request was not applied")]
    Unavailable { leader_id: Option<u64> },
    /// Proposed but not seen applied: it may or may not have been. A retry with the same
    /// session is safe (the state machine answers a duplicate with its recorded outcome).
    #[error("the outcome is unknown: {0}")]
    Unknown(String),
    /// Refused for load before it was proposed.
    #[error("{0}")]
    Exhausted(String),
    #[error("the node is shutting down; the request was not applied")]
    Stopped,
}
