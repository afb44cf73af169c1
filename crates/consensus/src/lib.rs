//! Consensus for Blixard: raft-rs driven by one Ready loop, over a write-ahead log (the Raft
//! log) and redb (the state machine).
//!
//! - [`wal`]: the append-only, segmented, checksummed Raft log.
//! - [`storage`]: [`DiskStorage`], raft-rs's `Storage` over the WAL and redb.
//! - [`log_store`]: the write half of a Raft log store ([`LogStore`]), implemented for
//!   [`DiskStorage`] and raft-rs's `MemStorage`, both held to one conformance suite.
//! - [`simdisk`]: a simulated disk (for the log and redb) that loses unsynced writes at a crash,
//!   rots bits, fills up and fails `fsync`s, for tests.
//! - [`sm`]: the core state machine's [`blixard_core::Store`] over redb tables.
//! - [`engine`]: the pure policy of the Ready loop: waiting writes and reads, re-proposals,
//!   answers (unit-tested input by input).
//! - [`driver`] and `ready`: the Ready loop's IO shell; `apply`: committed entries into the
//!   state machine; [`handle`]: what clients of the driver hold.

// rust-protobuf messages are built by mutating a default (they carry hidden fields).
#![allow(clippy::field_reassign_with_default)]

mod apply;
mod checkpoint;
pub mod driver;
pub mod engine;
pub mod error;
#[cfg(feature = "failpoints")]
pub mod failpoints;
pub mod handle;
mod hot;
mod known;
pub mod log_store;
mod logger;
pub mod observe;
mod overlay;
mod ready;
pub mod simdisk;
pub mod sm;
pub mod storage;
pub mod transport;
pub mod types;
pub mod validate;
pub mod wal;

pub use error::StorageError;
pub use handle::Handle;
pub use log_store::LogStore;
pub use observe::Observer;
pub use storage::{Bootstrap, DiskStorage};
pub use transport::Transport;
pub use types::{NodeStatus, ProposeError, RaftConfig, Role};

pub use raft::eraftpb;
