//! Test support for Blixard: a linearizability checker for histories that clients record
//! (the MadSim simulation, a chaos run against real processes), and `blixard-check`, which
//! checks a history saved as JSON lines.
//!
//! # What is checked
//!
//! A history is a set of operations, each with a client, an input, an invoke time, a
//! completion time and a result. It is *linearizable* when there is one total order of (some
//! of) the operations such that each takes effect at one instant between its invoke and its
//! completion, every operation whose result was seen is in it, and running them in that order
//! through the sequential [`Model`] gives every recorded output.
//!
//! Results:
//! - `Ok(output)`: the operation took effect and returned `output`; it must be in the order.
//! - `Fail`: it is known not to have taken effect; it is dropped before checking.
//! - `Unknown` (a timeout, a lost connection): it may have taken effect at any time after its
//!   invoke, or never. Its completion counts as +∞; it is placed anywhere after its invoke
//!   with whatever output the model gives there, or left out; the history is linearizable if
//!   any such choice works. So an unknown put may be observed by a later get, or never, but
//!   once observed it cannot be un-observed.
//!
//! # How
//!
//! P-compositionality: linearizability is local, so the history is split by [`Model::partition`]
//! (a KV key, a VM name) and each partition is checked on its own; a history of 100,000
//! operations over many keys is many small searches.
//!
//! Each partition is searched with Wing & Gong's algorithm and Lowe's memoization (see
//! `search.rs`): walk the call/return events in time order, linearize a pending call whose
//! recorded output the model reproduces, backtrack when a return is reached whose operation
//! was not linearized; cache every (set of linearized operations, model state) reached, so
//! that no configuration is explored twice. For a history that is mostly sequential per key
//! this is linear in its length; concurrency makes it exponential in the number of operations
//! that overlap, which [`Limits`] can bound.
//!
//! Unknown operations stay pending forever, so without care each one doubles the
//! configurations. Three reductions, each exact (they never change the verdict), keep that
//! in check: a configuration that used more unknown operations than another with the same
//! required operations and state is pruned (dominance); unknown operations with equal inputs
//! are one choice; and [`Model::simplify`] lets a model merge what no output can tell apart
//! (the KV model gives every value that no get returned one placeholder).
//!
//! What that buys, measured in a release build: 100,000 KV operations from 8 clients over 20
//! keys (1 % unknown, 1 % failed) check in about 0.15 s, and 0.2 s with one bad read in the
//! middle. The expensive case is a violation deep into one long, contended partition with
//! unknown operations: the search must rule out every explanation before it, which took
//! 2.4 s for 5,000 operations from 4 clients on one key, while 20,000 from 2 clients on one
//! key were not done after 100 million steps (17 s; [`Limits`] bounds it). Spread a run over
//! many keys when you can.
//!
//! On a violation, [`Violation`] names the partition and shows a window: the end of the
//! longest partial linearization found and the operations that could have gone next, with
//! what the model would have answered.
//!
//! ```
//! use blixard_testkit::{check, KvInput, KvModel, KvOutput, Recorder};
//!
//! let mut recorder = Recorder::<KvModel>::default();
//! let put = recorder.invoke(1, KvInput::Put { key: "a".into(), value: "1".into() });
//! recorder.ok(put, KvOutput::Written);
//! let get = recorder.invoke(2, KvInput::Get { key: "a".into() });
//! recorder.ok(get, KvOutput::Value(None)); // stale: the put had completed
//! let report = check(&KvModel, &recorder.finish()).unwrap();
//! assert!(!report.is_linearizable());
//! println!("{report}");
//! ```

mod check;
mod cluster;
mod history;
mod json;
mod model;
mod record;
mod report;
mod search;

#[cfg(test)]
mod tests;

pub use check::{check, check_with, CheckReport, Limits};
pub use cluster::{ClusterInput, ClusterModel, ClusterOutput, ClusterPartition, ClusterState};
pub use history::{History, HistoryError, OpResult, Operation, Rule};
pub use json::{ParseError, MAX_LINE_BYTES};
pub use model::{Key, KvInput, KvModel, KvOutput, Model, VmInput, VmModel, VmName, VmOutput};
pub use record::{Clock, Pending, Recorder, Ticks};
pub use report::{Candidate, OpRef, Step, Violation};
