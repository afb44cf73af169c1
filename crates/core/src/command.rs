//! Commands (replicated writes), queries (reads) and their results.

use serde::{Deserialize, Serialize};

use crate::scheduler::{NodeRecord, NodeState, Plan};
use crate::session::Session;
use crate::spec::{Observed, PowerState, ValidationError, VmRecord, VmSpec};
use crate::store::PageLimit;
use crate::NodeId;

/// A write, replicated through Raft and applied by [`crate::state::apply`] on every node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Does nothing; proposed by a new leader to commit an entry of its own term.
    Noop,
    KvPut {
        #[serde(with = "bytes")]
        key: Vec<u8>,
        #[serde(with = "bytes")]
        value: Vec<u8>,
    },
    KvDelete {
        #[serde(with = "bytes")]
        key: Vec<u8>,
    },
    /// Records a VM and places it (on `node` when given), running when `start`. A VM no node
    /// can take now waits as pending when `queue`, else is refused.
    VmCreate {
        spec: VmSpec,
        node: Option<NodeId>,
        start: bool,
        queue: bool,
    },
    VmDelete {
        name: String,
    },
    VmSetDesired {
        name: String,
        desired: PowerState,
    },
    /// Asks the hosting node to restart the VM once.
    VmRestart {
        name: String,
    },
    /// A node's report of what it observes; ignored unless the VM (this very incarnation, by
    /// `incarnation`: its `placed_index`) is placed on that node.
    VmReport {
        name: String,
        incarnation: u64,
        node: NodeId,
        observed: Observed,
    },
    /// Moves a VM to another node (a drain's step): it is placed again, and the new node starts
    /// it once the old one reported it stopped ([`Command::VmHandoff`]).
    VmMove {
        name: String,
    },
    /// The node a VM moved from stopped incarnation `incarnation` of it.
    VmHandoff {
        name: String,
        node: NodeId,
    },
    /// A node's schedulable capacity and labels, at its start.
    NodeRegister {
        node: Registration,
    },
    /// A liveness transition, proposed by the leader (heartbeats themselves are not replicated).
    NodeSetState {
        id: NodeId,
        state: NodeState,
    },
    /// Whether new work may go to a node.
    NodeEligibility {
        id: NodeId,
        eligible: bool,
    },
    /// Starts (or, with `None`, cancels) draining a node.
    NodeDrain {
        id: NodeId,
        drain: Option<DrainSpec>,
    },
    /// Records a task and places it (or queues it, pending, with the scheduler's reasons).
    TaskSubmit {
        spec: Box<crate::task::TaskSpec>,
    },
    /// The node running attempt `attempt` of task `id` reports on it; refused unless that is
    /// the task's current attempt on that node (a fenced node's late result is stale).
    TaskReport {
        id: u64,
        attempt: u64,
        node: NodeId,
        update: crate::state::TaskUpdate,
    },
    /// Cancels a task: at once when pending, else its node stops the attempt and reports.
    TaskCancel {
        id: u64,
    },
    /// Deletes the finished tasks beyond the newest `keep`.
    TaskPrune {
        keep: u64,
    },
    /// The first member of a new cluster (applied by the bootstrap itself, never from the log).
    Bootstrap {
        id: NodeId,
        addr: String,
    },
    /// Adds a node as a learner; travels with the Raft configuration change that adds it.
    AddLearner {
        id: NodeId,
        addr: String,
    },
    /// Makes a caught-up learner a voter (with its configuration change).
    PromoteVoter {
        id: NodeId,
    },
    /// Removes a member (with its configuration change).
    RemoveMember {
        id: NodeId,
    },
    /// Records an API token by the SHA-256 of its secret; it expires `ttl_ms` after the cluster
    /// time of its apply (never when `None`).
    TokenCreate {
        name: String,
        role: String,
        hash: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    /// Revokes the token with this name or id.
    TokenRevoke {
        which: String,
    },
    /// Benchmarks only: registers capacity-only nodes that are no members and run nothing
    /// (ids from [`crate::state::SIMULATED_NODE_IDS`] on), so placement can be measured with
    /// thousands of nodes. Proposed by an admin (`NodeService/RegisterSimulatedNodes`).
    NodeRegisterSimulated {
        nodes: Vec<Registration>,
    },
}

/// What a node tells the cluster about itself when it starts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub id: NodeId,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub accel: String,
    pub backend: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub agent_version: String,
}

/// How to drain a node: at most `parallel` VMs on the move at once, everything moved by
/// `deadline_ms` after the drain starts (cluster time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainSpec {
    pub deadline_ms: u64,
    pub parallel: u32,
}

/// What goes into a Raft entry's data: the command plus what makes `apply` deterministic and
/// lets the proposer find its answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The client command this is, for exactly-once (see [`crate::session`]); `None` only for
    /// commands a node makes on its own that need no answer (a new leader's no-op, promoting a
    /// learner), whose repetition is harmless.
    pub session: Option<Session>,
    /// The proposer's wall clock in ms since the Unix epoch: time enters `apply` only here.
    pub now_ms: u64,
    pub command: Command,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(data: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(data)
    }
}

/// The successful result of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Done,
    Deleted { existed: bool },
    Vm(Box<VmRecord>),
    Task(Box<crate::task::TaskRecord>),
    Pruned { count: u64 },
}

/// A command that was applied but refused. It changed nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The client's session expired: this command was not applied now, and whether an earlier
    /// copy of it was is no longer known.
    #[error("the client session expired; the outcome of this request is unknown")]
    SessionExpired,
    /// A bound of the replicated state was reached; nothing was applied.
    #[error("{0}")]
    Exhausted(String),
}

/// The deterministic result of applying one command.
pub type Outcome = Result<Response, CommandError>;

/// A command's outcome with the index of the entry that applied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The entry that applied the command (for a duplicate, the first one).
    pub index: u64,
    pub outcome: Outcome,
    /// Answered from the session table: an earlier copy was applied.
    pub duplicate: bool,
}

/// A read, served after a ReadIndex round (or locally for stale reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    KvGet {
        key: Vec<u8>,
    },
    /// One page of the keys with the prefix, in byte order, after `start_after` (exclusive)
    /// when given.
    KvList {
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: PageLimit,
    },
    VmGet {
        name: String,
    },
    /// One page of the VMs by name, after `start_after` (exclusive) when given; `limit.bytes`
    /// counts the records' stored bytes.
    VmList {
        start_after: Option<String>,
        limit: PageLimit,
    },
    Members,
    Nodes,
    Tokens,
    Node {
        id: NodeId,
    },
    TaskGet {
        id: u64,
    },
    /// Tasks in submit order after `start_after`, at most `limit`, with `state` when given.
    TaskList {
        state: Option<crate::task::TaskState>,
        start_after: Option<u64>,
        limit: usize,
    },
    /// The tasks with an open attempt on a node (what its executor runs).
    TasksOnNode {
        node: NodeId,
    },
    /// Where a VM of this spec would go now, and why not elsewhere (every node looked at).
    Explain {
        spec: Box<VmSpec>,
        pinned: Option<NodeId>,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub enum QueryResult {
    Value(Option<Vec<u8>>),
    /// A page of pairs; `more`: others follow the last one.
    Pairs {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        more: bool,
    },
    Vm(Option<Box<VmRecord>>),
    /// A page of VMs; `more`: others follow the last one.
    Vms {
        vms: Vec<VmRecord>,
        more: bool,
    },
    Members(Vec<crate::state::Member>),
    Nodes(Vec<NodeRecord>),
    Tokens(Vec<crate::state::tokens::TokenRecord>),
    Node(Option<Box<NodeRecord>>),
    Plan(Plan),
    Task(Option<Box<crate::task::TaskRecord>>),
    Tasks {
        tasks: Vec<crate::task::TaskRecord>,
        more: bool,
    },
}

/// Byte strings as serde bytes rather than a sequence of `u8`s: postcard writes both the same
/// way (a varint length, then the bytes), so entries already in logs and snapshots read alike,
/// but bytes are copied at once instead of pushed and checked one by one (the encoding of a
/// put was ~2 % of a node's CPU under a write load).
mod bytes {
    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                // Bounded by what the input holds: a length prefix alone reserves nothing.
                let mut out = Vec::new();
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod bytes_tests {
    use super::*;

    /// The commands as they were before byte strings were serde bytes.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Before {
        Noop,
        KvPut { key: Vec<u8>, value: Vec<u8> },
        KvDelete { key: Vec<u8> },
    }

    #[test]
    fn byte_strings_encode_as_before_and_old_entries_decode() {
        for (key, value) in [(vec![], vec![]), (b"k".to_vec(), vec![0; 300]), ((0..=255).collect(), b"v".to_vec())] {
            let now = Command::KvPut { key: key.clone(), value: value.clone() };
            let before = Before::KvPut { key: key.clone(), value };
            let bytes = postcard::to_stdvec(&before).unwrap();
            assert_eq!(postcard::to_stdvec(&now).unwrap(), bytes);
            assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), now);
            let del = postcard::to_stdvec(&Before::KvDelete { key: key.clone() }).unwrap();
            assert_eq!(postcard::from_bytes::<Command>(&del).unwrap(), Command::KvDelete { key });
        }
        // A length prefix larger than what follows is an error, not an allocation.
        assert!(postcard::from_bytes::<Command>(&[1, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
