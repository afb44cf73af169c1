//! Consensus for Blixard: raft-rs driven by one Ready loop, over a redb-backed log and state
//! machine.
//!
//! - [`log_store`]: the write half of a Raft log store ([`LogStore`]), implemented for redb
//!   ([`RedbStorage`]) and raft-rs's `MemStorage`, both held to one conformance suite.
//! - [`sm`]: the core state machine's [`blixard_core::Store`] over redb tables.
//! - [`driver`]: the Ready loop, proposals tracked by id, ReadIndex reads.

// rust-protobuf messages are built by mutating a default (they carry hidden fields).
#![allow(clippy::field_reassign_with_default)]

pub mod driver;
pub mod error;
pub mod log_store;
mod logger;
pub mod redb_store;
pub mod sm;
pub mod transport;

pub use driver::{Handle, NodeStatus, ProposeError, RaftConfig, Role};
pub use error::StorageError;
pub use log_store::LogStore;
pub use redb_store::{Bootstrap, RedbStorage};
pub use transport::Transport;

pub use raft::eraftpb;
