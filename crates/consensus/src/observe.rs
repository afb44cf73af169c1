//! What the driver tells an observer (the node's metrics) about its work: proposal latencies,
//! WAL persists, snapshots. Consensus knows no metrics library; the node implements
//! [`Observer`] and sets it once with [`crate::Handle::observe`]. Without one nothing is recorded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Callbacks from the driver and the handle. They run on the Ready loop's thread (or a caller's
/// task): they must be cheap and never block.
pub trait Observer: Send + Sync + 'static {
    /// A client proposal was answered after `latency` (from handing it to the driver): `ok` is
    /// whether it was applied (a refused command counts as applied).
    fn proposal(&self, latency: Duration, ok: bool);
    /// The log appended `entries` (and hard state), `synced` with an `fdatasync`, in `latency`.
    fn wal_persist(&self, latency: Duration, entries: usize, synced: bool);
    /// A snapshot this node sent to a follower arrived (`ok`) or failed.
    fn snapshot_sent(&self, ok: bool);
    /// This node installed a snapshot from its leader.
    fn snapshot_installed(&self);
    /// Committed entries applied to the state machine in one batch.
    fn applied_batch(&self, entries: usize);
    /// The log was compacted (after a checkpoint).
    fn compacted(&self);
    /// What the scheduler did in an applied batch (only called when it did something).
    fn scheduled(&self, _tally: &blixard_core::scheduler::Tally) {}
}

/// The observer slot shared by a driver and its handles, and the proposals waiting for answers.
#[derive(Clone, Default)]
pub(crate) struct Observed {
    pub(crate) observer: Arc<OnceLock<Arc<dyn Observer>>>,
    pub(crate) in_flight: Arc<AtomicUsize>,
}

impl Observed {
    pub(crate) fn with(&self, f: impl FnOnce(&dyn Observer)) {
        if let Some(o) = self.observer.get() {
            f(o.as_ref());
        }
    }
}

/// Counts a proposal waiting for its answer for as long as it lives.
pub(crate) struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    pub(crate) fn enter(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
