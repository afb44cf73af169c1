//! Series read at scrape time: this node's Raft status, and the replicated tables as this node's
//! replica holds them (VMs by phase, nodes by status, the scheduler's pending queue). Every node
//! reports the cluster-wide `blixard_cluster_*` series from its own replica: aggregate them with
//! `max` across nodes, not `sum`. Per-VM series come only from the VM's host node.

use blixard_consensus::{Handle, Role};
use blixard_core::spec::Phase;
use blixard_core::NodeState;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Phases in the order they are reported.
pub const PHASES: [Phase; 7] =
    [Phase::Pending, Phase::Starting, Phase::Running, Phase::Stopping, Phase::Stopped, Phase::Failed, Phase::Lost];

pub struct StateCollector {
    pub id: u64,
    pub raft: Handle,
    pub peers: std::sync::Arc<crate::transport::PeerTransport>,
    /// The finished tasks' states, read once each (see [`blixard_core::state::tasks::count_by_state`]).
    pub finished_tasks: std::sync::Mutex<std::collections::BTreeMap<u64, blixard_core::TaskState>>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateCollector").field("id", &self.id).finish_non_exhaustive()
    }
}

pub(crate) fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

pub(crate) fn gauge_f(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

pub(crate) fn counter_f(e: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// A gauge with one series per label set.
fn gauges<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
    for (labels, v) in series {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
    for (labels, v) in series {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Counts of the replicated state, as this node's replica holds it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    pub vms_by_phase: [i64; PHASES.len()],
    pub nodes_ready: i64,
    pub nodes_down: i64,
    pub nodes_draining: i64,
    pub pending: i64,
    /// VMs placed on each node, by phase (only the counts above zero).
    pub by_node: std::collections::BTreeMap<(u64, usize), i64>,
    /// (name, restarts) of the VMs placed on this node.
    pub local_restarts: Vec<(String, u64)>,
    /// (name, incarnation, pid, boot ms) of the VMs this node observed started.
    pub local_running: Vec<(String, u64, u32, Option<u64>)>,
}

/// The phase a VM is counted in: what its node last observed; a VM no node observed yet is
/// pending; a lost one is lost.
pub fn phase_of(v: &blixard_core::spec::VmRecord) -> Phase {
    if v.lost {
        return Phase::Lost;
    }
    v.observed.as_ref().map(|o| o.phase).unwrap_or(Phase::Pending)
}

pub fn count(id: u64, raft: &Handle) -> Result<ClusterCounts, blixard_core::StoreError> {
    let view = blixard_consensus::sm::ReadView::begin(raft.db())?;
    let mut c = ClusterCounts::default();
    for v in blixard_core::state::vms(&view)? {
        let p = phase_of(&v);
        if let Some(i) = PHASES.iter().position(|x| *x == p) {
            c.vms_by_phase[i] += 1;
            if let Some(n) = v.node {
                *c.by_node.entry((n, i)).or_default() += 1;
            }
        }
        if v.node.is_none() {
            c.pending += 1;
        }
        if v.node == Some(id) {
            c.local_restarts.push((v.spec.name.clone(), v.observed.as_ref().map_or(0, |o| u64::from(o.restarts))));
            if let Some(pid) = super::usage::process_of(id, &v) {
                let boot = v.observed.as_ref().and_then(|o| o.boot_ms);
                c.local_running.push((v.spec.name.clone(), v.placed_index, pid, boot));
            }
        }
    }
    for n in blixard_core::state::nodes(&view)? {
        match n.state {
            NodeState::Ready => c.nodes_ready += 1,
            NodeState::Down => c.nodes_down += 1,
        }
        if n.drain.is_some() {
            c.nodes_draining += 1;
        }
    }
    Ok(c)
}

impl Collector for StateCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.raft.status();
        let mut info = e.encode_descriptor(
            "blixard_node_info",
            "This node's id and version (always 1).",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        let labels = [("node_id", self.id.to_string()), ("version", env!("CARGO_PKG_VERSION").to_string())];
        ConstGauge::new(1i64).encode(info.encode_family(&labels.as_slice())?)?;
        gauge(&mut e, "blixard_raft_term", "This node's current Raft term.", s.term as i64)?;
        gauge(
            &mut e,
            "blixard_raft_leader_id",
            "The leader this node knows (0: none).",
            s.leader_id.unwrap_or(0) as i64,
        )?;
        gauge(
            &mut e,
            "blixard_raft_has_leader",
            "Whether this node knows a leader (1) or not (0).",
            i64::from(s.leader_id.is_some()),
        )?;
        gauge(
            &mut e,
            "blixard_raft_is_leader",
            "Whether this node is the leader (1) or not (0).",
            i64::from(s.role == Role::Leader),
        )?;
        gauge(
            &mut e,
            "blixard_raft_commit_index",
            "The highest log index this node knows committed.",
            s.commit as i64,
        )?;
        gauge(&mut e, "blixard_raft_applied_index", "The highest log index this node applied.", s.applied as i64)?;
        gauge(&mut e, "blixard_raft_last_index", "The last index in this node's log.", s.last_index as i64)?;
        gauge(&mut e, "blixard_raft_voters", "Voters in the configuration this node knows.", s.voters.len() as i64)?;
        gauge(
            &mut e,
            "blixard_raft_learners",
            "Learners in the configuration this node knows.",
            s.learners.len() as i64,
        )?;
        gauge(
            &mut e,
            "blixard_raft_proposals_in_flight",
            "Client proposals on this node waiting for their answers.",
            self.raft.proposals_in_flight() as i64,
        )?;
        let peers = self.peers.peer_stats();
        let reachable = peers.iter().map(|(p, r, _)| ([("peer", p.to_string())], i64::from(*r)));
        gauges(
            &mut e,
            "blixard_peer_reachable",
            "Whether the last connection attempt or write to a peer this node sends to succeeded (1) or failed (0).",
            reachable,
        )?;
        let queued = peers.iter().map(|(p, _, q)| ([("peer", p.to_string())], *q as i64));
        gauges(&mut e, "blixard_peer_send_queue_bytes", "Raft traffic queued for a peer, not yet written.", queued)?;
        match count(self.id, &self.raft) {
            Ok(c) => {
                let phases = PHASES.iter().zip(c.vms_by_phase).map(|(p, n)| ([("phase", p.as_str())], n));
                gauges(
                    &mut e,
                    "blixard_cluster_vms",
                    "VMs by phase (the replicated state as this node holds it).",
                    phases,
                )?;
                let status = [([("status", "ready")], c.nodes_ready), ([("status", "down")], c.nodes_down)];
                gauges(&mut e, "blixard_cluster_nodes", "Registered nodes by status (replicated state).", status)?;
                gauge(&mut e, "blixard_cluster_nodes_draining", "Registered nodes being drained.", c.nodes_draining)?;
                let by_node = c
                    .by_node
                    .iter()
                    .map(|((n, p), v)| ([("node", n.to_string()), ("phase", PHASES[*p].as_str().into())], *v));
                gauges(
                    &mut e,
                    "blixard_cluster_node_vms",
                    "VMs placed on each node, by phase (replicated state; only counts above zero).",
                    by_node,
                )?;
                gauge(&mut e, "blixard_scheduler_pending_vms", "VMs waiting for a node with capacity.", c.pending)?;
                let restarts = c.local_restarts.into_iter().map(|(vm, n)| ([("vm", vm)], n));
                let usage: Vec<_> = c
                    .local_running
                    .iter()
                    .filter_map(|(vm, inc, pid, _)| Some((vm.clone(), super::usage::read(vm, *inc, *pid)?)))
                    .collect();
                let mut m = e.encode_descriptor(
                    "blixard_vm_cpu_seconds",
                    "CPU time of the process of a VM this node runs (QEMU or its runner), in seconds.",
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (vm, u) in &usage {
                    ConstCounter::new(u.cpu_seconds).encode(m.encode_family(&[("vm", vm.as_str())])?)?;
                }
                let rss =
                    usage.iter().map(|(vm, u)| ([("vm", vm.as_str())], u.resident_bytes.min(i64::MAX as u64) as i64));
                gauges(&mut e, "blixard_vm_resident_memory_bytes", "Resident memory of a VM's process.", rss)?;
                let mut m = e.encode_descriptor(
                    "blixard_vm_boot_seconds",
                    "From the start of a VM's process to its guest's boot marker, for the VMs this node runs.",
                    None,
                    prometheus_client::metrics::MetricType::Gauge,
                )?;
                for (vm, _, _, boot) in &c.local_running {
                    if let Some(ms) = boot {
                        ConstGauge::new(*ms as f64 / 1000.0).encode(m.encode_family(&[("vm", vm.as_str())])?)?;
                    }
                }
                counters(
                    &mut e,
                    "blixard_vm_restarts",
                    "Restarts this node made of a VM it hosts (per its restart policy) since it was placed here.",
                    restarts,
                )?;
            }
            Err(err) => tracing::debug!("metrics: cannot read the replicated state: {err}"),
        }
        let tasks = blixard_consensus::sm::ReadView::begin(self.raft.db()).and_then(|view| {
            let mut finished = self.finished_tasks.lock().unwrap_or_else(|e| e.into_inner());
            blixard_core::state::tasks::count_by_state(&view, &mut finished)
        });
        match tasks {
            Ok(counts) => {
                let series = blixard_core::TaskState::ALL
                    .iter()
                    .zip(counts)
                    .map(|(s, n)| ([("state", s.as_str())], n.min(i64::MAX as u64) as i64));
                gauges(&mut e, "blixard_cluster_tasks", "Tasks by state (replicated state).", series)?;
            }
            Err(err) => tracing::debug!("metrics: cannot count the tasks: {err}"),
        }
        Ok(())
    }
}
