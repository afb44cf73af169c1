//! The pure core of Blixard.
//!
//! Everything here is deterministic and free of IO: the types users and nodes exchange, the
//! validation rules for them, and the replicated state machine ([`state::apply`]) that every node
//! runs over the committed Raft log. Storage is reached only through the [`store::Store`] trait,
//! so the same `apply` runs over redb in a node and over a `BTreeMap` in tests and simulation.

pub mod backup;
pub mod command;
pub mod image_ref;
pub mod membership;
pub mod placement;
pub mod reconcile;
pub mod scheduler;
pub mod session;
pub mod spec;
pub mod state;
pub mod store;
pub mod task;

pub use command::{Applied, Command, CommandError, Envelope, Outcome, Query, QueryResult, Response};
pub use command::{DrainSpec, Registration};
pub use membership::{ChangeKind, MembershipChange};
pub use scheduler::{NodeRecord, NodeState};
pub use session::{ClientSession, Session, SessionKey};
pub use spec::{
    quoted, HealthCheck, HealthKind, Observed, Phase, PortForward, PowerState, RestartPolicy, ValidationError, VmEvent,
    VmRecord, VmSpec,
};
pub use state::TaskUpdate;
pub use store::{MemStore, Page, PageLimit, ReadStore, Store, StoreError, Table};
pub use task::{Attempt, AttemptResult, Enforcement, Isolation, TaskRecord, TaskSpec, TaskState};

/// Identifier of a node in the cluster. Never 0 (raft-rs reserves 0 for "none").
pub type NodeId = u64;

/// Largest KV key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Largest KV value, in bytes (1 MiB).
pub const MAX_VALUE_LEN: usize = 1024 * 1024;
