//! Consensus for Blixard: raft-rs driven by one Ready loop, over a write-ahead log (the Raft
//! log) and redb (the state machine).
//!
//! - [`wal`]: the append-only, segmented, checksummed Raft log.
//! - [`storage`]: [`DiskStorage`], raft-rs's `Storage` over the WAL and redb.
//! - [`log_store`]: the write half of a Raft log store ([`LogStore`]), implemented for
//!   [`DiskStorage`] and raft-rs's `MemStorage`, both held to one conformance suite.
//! - [`sm`]: the core state machine's [`blixard_core::Store`] over redb tables.
//! - [`driver`]: the Ready loop, proposals tracked by id, ReadIndex reads.

// rust-protobuf messages are built by mutating a default (they carry hidden fields).
#![allow(clippy::field_reassign_with_default)]

pub mod driver;
pub mod error;
pub mod log_store;
mod logger;
pub mod sm;
pub mod storage;
pub mod transport;
pub mod wal;

pub use driver::{Handle, NodeStatus, ProposeError, RaftConfig, Role};
pub use error::StorageError;
pub use log_store::LogStore;
pub use storage::{Bootstrap, DiskStorage};
pub use transport::Transport;

pub use raft::eraftpb;
