//! This node's metrics, in one registry per node (no globals), served at `/metrics` by
//! [`crate::http`].
//!
//! Three kinds of sources:
//! - events, counted where they happen: the driver's [`Observer`] callbacks (proposals, WAL
//!   persists, snapshots, compactions), the gRPC layer ([`api`]) and the leader watcher;
//! - the Raft status, the peer links and the replicated tables, read at scrape time ([`state`]);
//! - the process, read from `/proc/self` at scrape time ([`process`]).
//!
//! Names follow Prometheus's conventions: `blixard_` prefix, base units (`_seconds`, `_bytes`),
//! counters end in `_total`. The README's "Operating" section lists every series.

pub mod api;
pub mod process;
pub mod state;
pub mod usage;
pub mod work;

use std::sync::Arc;
use std::time::Duration;

use blixard_consensus::{Handle, Observer};
use blixard_core::scheduler::{Tally, KINDS, OUTCOMES, STAGES};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of Prometheus's classic text format (0.0.4).
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SyncLabel {
    pub sync: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PlacementLabel {
    pub kind: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StageLabel {
    pub stage: &'static str,
}

type HistFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latencies from 50 µs to ~13 s.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 19))
}

/// Entry counts from 1 to ~260,000.
fn entries() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 10))
}

/// What the driver reports (see [`Observer`]).
#[derive(Debug)]
pub struct RaftEvents {
    proposals: HistFamily<ResultLabel>,
    wal: HistFamily<SyncLabel>,
    snapshots_sent: Family<ResultLabel, Counter>,
    snapshots_installed: Counter,
    applied_batch: Histogram,
    compactions: Counter,
    pub(crate) leader_changes: Counter,
    pub(crate) elections: Counter,
    placements: Family<PlacementLabel, Counter>,
    rejections: Family<StageLabel, Counter>,
    /// The series every write observes, taken from their families once (no label hashing or
    /// family lock per write): proposals ok, then error; log appends synced, then not.
    hot: std::sync::OnceLock<[Histogram; 4]>,
}

fn result(ok: bool) -> ResultLabel {
    ResultLabel { result: if ok { "ok" } else { "error" } }
}

impl RaftEvents {
    fn hot(&self) -> &[Histogram; 4] {
        self.hot.get_or_init(|| {
            let p = |ok| self.proposals.get_or_create(&result(ok)).clone();
            let w = |sync| self.wal.get_or_create(&SyncLabel { sync }).clone();
            [p(true), p(false), w("true"), w("false")]
        })
    }
}

impl Observer for RaftEvents {
    fn proposal(&self, latency: Duration, ok: bool) {
        self.hot()[usize::from(!ok)].observe(latency.as_secs_f64());
    }

    fn wal_persist(&self, latency: Duration, _entries: usize, synced: bool) {
        self.hot()[2 + usize::from(!synced)].observe(latency.as_secs_f64());
    }

    fn snapshot_sent(&self, ok: bool) {
        self.snapshots_sent.get_or_create(&result(ok)).inc();
    }

    fn snapshot_installed(&self) {
        self.snapshots_installed.inc();
    }

    fn applied_batch(&self, entries: usize) {
        self.applied_batch.observe(entries as f64);
    }

    fn compacted(&self) {
        self.compactions.inc();
    }

    fn scheduled(&self, t: &Tally) {
        for (kind, by_outcome) in KINDS.iter().zip(t.placements) {
            for (outcome, n) in OUTCOMES.iter().zip(by_outcome) {
                if n > 0 {
                    self.placements.get_or_create(&PlacementLabel { kind, outcome }).inc_by(n);
                }
            }
        }
        for (stage, n) in STAGES.iter().zip(t.rejections) {
            if n > 0 {
                self.rejections.get_or_create(&StageLabel { stage }).inc_by(n);
            }
        }
    }
}

/// A node's registry and the metrics updated as things happen.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub raft: Arc<RaftEvents>,
    pub api: api::ApiMetrics,
    /// This node's VM and task work (the reconciler and the task runner count into it).
    pub work: Arc<work::Work>,
    /// Off (`--metrics off`): requests, proposals and log writes are not timed or counted, and
    /// nothing is served.
    pub enabled: bool,
}

impl Metrics {
    /// Builds the registry of node `id`, whose state is read through `raft` at every scrape.
    pub fn new(id: u64, raft: Handle, peers: Arc<crate::transport::PeerTransport>, enabled: bool) -> Arc<Metrics> {
        let mut r = Registry::default();
        let raft_events = Arc::new(RaftEvents {
            proposals: Family::new_with_constructor(latency),
            wal: Family::new_with_constructor(latency),
            snapshots_sent: Family::default(),
            snapshots_installed: Counter::default(),
            applied_batch: entries(),
            compactions: Counter::default(),
            leader_changes: Counter::default(),
            elections: Counter::default(),
            placements: Family::default(),
            rejections: Family::default(),
            hot: Default::default(),
        });
        let e = &raft_events;
        r.register_with_unit(
            "blixard_raft_proposal_duration",
            "Client proposals on this node from hand-off to the driver until answered, by result",
            Unit::Seconds,
            e.proposals.clone(),
        );
        // Both series exist from the start (dashboards and alerts need them before any load).
        for ok in [true, false] {
            let _ = e.proposals.get_or_create(&result(ok));
            let _ = e.snapshots_sent.get_or_create(&result(ok));
        }
        r.register_with_unit(
            "blixard_raft_wal_append_duration",
            "Appends of entries and hard state to the write-ahead log; sync=true ones include the fdatasync",
            Unit::Seconds,
            e.wal.clone(),
        );
        let _ = e.wal.get_or_create(&SyncLabel { sync: "true" });
        r.register("blixard_raft_snapshots_sent", "Snapshots sent to followers, by result", e.snapshots_sent.clone());
        r.register(
            "blixard_raft_snapshots_installed",
            "Snapshots received from the leader and installed",
            e.snapshots_installed.clone(),
        );
        r.register(
            "blixard_raft_apply_batch_entries",
            "Committed entries applied to the state machine per batch",
            e.applied_batch.clone(),
        );
        r.register("blixard_raft_compactions", "Log compactions (after a durable checkpoint)", e.compactions.clone());
        r.register(
            "blixard_raft_leader_changes",
            "Times this node saw a new leader become known",
            e.leader_changes.clone(),
        );
        r.register("blixard_raft_elections", "Terms this node saw begin (each an election)", e.elections.clone());
        r.register(
            "blixard_scheduler_placements",
            "Placement attempts this node applied, by kind (vm, task) and outcome (placed, pending, refused)",
            e.placements.clone(),
        );
        r.register(
            "blixard_scheduler_rejections",
            "Nodes the placements this node applied found unfit, by the stage that rejected them",
            e.rejections.clone(),
        );
        for kind in KINDS {
            for outcome in OUTCOMES {
                let _ = e.placements.get_or_create(&PlacementLabel { kind, outcome });
            }
        }
        for stage in STAGES {
            let _ = e.rejections.get_or_create(&StageLabel { stage });
        }
        let work = Arc::new(work::Work::default());
        work.register(&mut r);
        let api = api::ApiMetrics::new();
        api.register(&mut r);
        r.register_collector(Box::new(state::StateCollector {
            id,
            raft: raft.clone(),
            peers,
            finished_tasks: Default::default(),
        }));
        r.register_collector(Box::new(process::ProcessCollector));
        let m = Arc::new(Metrics { registry: r, raft: raft_events, api, work, enabled });
        if enabled {
            raft.observe(m.raft.clone());
            tokio::spawn(watch_leader(raft, m.raft.clone()));
        }
        m
    }

    /// The registry encoded in OpenMetrics (`openmetrics`) or Prometheus's text format.
    pub fn render(&self, openmetrics: bool) -> String {
        let mut s = String::with_capacity(16 * 1024);
        let r = if openmetrics {
            prometheus_client::encoding::text::encode(&mut s, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry)
        };
        if let Err(e) = r {
            tracing::warn!("cannot encode the metrics: {e}");
        }
        s
    }
}

/// Counts leader changes and new terms as this node's Raft status reports them.
async fn watch_leader(raft: Handle, e: Arc<RaftEvents>) {
    let mut w = raft.watch_status();
    let (mut leader, mut term) = {
        let s = w.borrow_and_update();
        (s.leader_id, s.term)
    };
    while w.changed().await.is_ok() {
        let s = w.borrow_and_update().clone();
        if s.leader_id.is_some() && s.leader_id != leader {
            e.leader_changes.inc();
        }
        if s.leader_id.is_some() {
            leader = s.leader_id;
        }
        if s.term > term {
            e.elections.inc_by(s.term - term);
            term = s.term;
        }
    }
}
