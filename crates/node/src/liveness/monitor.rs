//! The leader's side of liveness: when each node was last heard from (in memory only), and the
//! transitions that follow, proposed through Raft.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use blixard_consensus::sm::ReadView;
use blixard_consensus::{Handle, Role};
use blixard_core::{Command, NodeId, NodeState};
use tokio::time::Instant;

use super::Timing;

#[derive(Default)]
struct Inner {
    /// The term this node leads in (0: it does not lead).
    term: u64,
    /// When it became leader (every node's clock starts there).
    since: Option<Instant>,
    last: BTreeMap<NodeId, Instant>,
    /// When this leadership first saw each node registered: a node that registers after the
    /// leader was elected is judged from then, not from the election (its heartbeats are refused
    /// until its registration is applied, so it cannot have been heard before).
    seen: BTreeMap<NodeId, Instant>,
}

pub struct Monitor {
    pub timing: Timing,
    inner: Mutex<Inner>,
}

/// When `id` was last heard in the leadership that began at `since`.
fn heard_in(since: Instant, last: &BTreeMap<NodeId, Instant>, id: NodeId) -> Option<Instant> {
    last.get(&id).copied().filter(|t| *t >= since)
}

/// When the leadership that began at `since` first saw `id` registered (`since` at the earliest).
fn first_seen(since: Instant, seen: &BTreeMap<NodeId, Instant>, id: NodeId) -> Instant {
    seen.get(&id).map_or(since, |s| (*s).max(since))
}

/// The transitions due at `now`: a ready node silent past `down_after` (counted from its last
/// heartbeat, or, when none came in this leadership, from the later of `since` and when this
/// leadership first saw it registered, `seen`) goes down; a down node heard within `down_after`
/// comes back. `me` (the leader) is never judged.
pub fn transitions(
    now: Instant,
    since: Instant,
    last: &BTreeMap<NodeId, Instant>,
    seen: &BTreeMap<NodeId, Instant>,
    nodes: &[(NodeId, NodeState)],
    me: NodeId,
    down_after: Duration,
) -> Vec<(NodeId, NodeState)> {
    let mut out = Vec::new();
    for &(id, state) in nodes {
        if id == me {
            if state == NodeState::Down {
                out.push((id, NodeState::Ready));
            }
            continue;
        }
        let heard = heard_in(since, last, id);
        let silent = now.saturating_duration_since(heard.unwrap_or_else(|| first_seen(since, seen, id)));
        match state {
            NodeState::Ready if silent > down_after => out.push((id, NodeState::Down)),
            NodeState::Down if heard.is_some() && silent <= down_after => out.push((id, NodeState::Ready)),
            _ => {}
        }
    }
    out
}

impl Monitor {
    pub fn new(timing: Timing) -> Self {
        Monitor { timing, inner: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A heartbeat from `id`; returns whether this node leads in `term` (only a leader records).
    pub fn heard(&self, id: NodeId, role: Role, term: u64) -> bool {
        let mut i = self.lock();
        if role != Role::Leader {
            return false;
        }
        if i.term != term {
            // The first word of a new leadership (before `run` saw it): it starts here.
            *i = Inner { term, since: Some(Instant::now()), ..Inner::default() };
        }
        i.last.insert(id, Instant::now());
        true
    }

    /// How long ago the leader heard from `id` (only on the leader); for a node not heard yet,
    /// how long its clock has run (as [`transitions`] counts it).
    pub fn age(&self, id: NodeId) -> Option<Duration> {
        let i = self.lock();
        let since = i.since.filter(|_| i.term != 0)?;
        Some(heard_in(since, &i.last, id).unwrap_or_else(|| first_seen(since, &i.seen, id)).elapsed())
    }

    /// Follows leadership and proposes transitions, for as long as the node runs.
    pub async fn run(&self, raft: Handle) {
        // Checked often (the check is a map walk): a node is declared down at most this late.
        let every = (self.timing.heartbeat / 2).min(std::time::Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            let st = raft.status();
            if st.role != Role::Leader {
                *self.lock() = Inner::default();
                continue;
            }
            // Read before taking the lock (heartbeats wait for it). Only each node's id and state
            // are decoded: with 10,000 nodes, decoding every full record ten times a second was
            // a visible share of the leader's CPU.
            // A node that left while ready is judged as a ready node that went silent (its
            // heartbeats are refused since): declared down once its lease has certainly run
            // out, what it ran may start elsewhere.
            let nodes = ReadView::begin(raft.db()).and_then(|v| {
                let mut ns = blixard_core::state::node_states(&v)?;
                ns.extend(blixard_core::state::departed_nodes(&v)?.into_iter().map(|id| (id, NodeState::Ready)));
                Ok(ns)
            });
            let mut nodes = match nodes {
                Ok(ns) => ns,
                Err(e) => {
                    tracing::warn!("liveness: cannot read the nodes: {e}");
                    continue;
                }
            };
            nodes.sort_unstable_by_key(|(id, _)| *id);
            let due = {
                let mut i = self.lock();
                if i.term != st.term {
                    // A new leadership: every node gets a full timeout from now.
                    *i = Inner { term: st.term, since: Some(Instant::now()), ..Inner::default() };
                }
                let Some(since) = i.since else { continue };
                let now = Instant::now();
                // Newly registered nodes start their clock now; removed ones are forgotten (a lookup
                // per remembered node in the id-ordered list: a scan of the list for each one was
                // quadratic, ~50 million comparisons a pass with 10,000 nodes).
                let registered = |id: &NodeId| nodes.binary_search_by_key(id, |(n, _)| *n).is_ok();
                i.seen.retain(|id, _| registered(id));
                i.last.retain(|id, _| registered(id));
                for (id, _) in &nodes {
                    i.seen.entry(*id).or_insert(now);
                }
                transitions(now, since, &i.last, &i.seen, &nodes, st.id, self.timing.down_after)
            };
            for (id, state) in due {
                match state {
                    NodeState::Down => {
                        tracing::warn!(node = id, "no heartbeat for {:?}: declaring it down", self.timing.down_after)
                    }
                    NodeState::Ready => tracing::info!(node = id, "heard again: declaring it ready"),
                }
                let cmd = Command::NodeSetState { id, state };
                if let Err(s) = crate::internal::propose(&raft, cmd).await {
                    tracing::debug!(node = id, "liveness transition not accepted yet: {}", s.message());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_nodes_go_down_heard_ones_come_back_and_a_new_leader_waits_a_full_timeout() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let down_after = Duration::from_secs(3);
        let nodes = [(1, NodeState::Ready), (2, NodeState::Ready), (3, NodeState::Down), (4, NodeState::Ready)];
        let last = BTreeMap::from([(2, at(1_000)), (3, at(4_500)), (4, at(4_000))]);
        let none = BTreeMap::new();
        // Leader 1 since t0: node 2 last heard at 1 s (4 s ago), node 4 at 4 s; node 3 was down and
        // was heard at 4.5 s.
        assert_eq!(
            transitions(at(5_000), t0, &last, &none, &nodes, 1, down_after),
            vec![(2, NodeState::Down), (3, NodeState::Ready)]
        );
        // A leader elected at 4 s counts heartbeats from before it as nothing: node 2 has until 7 s.
        assert_eq!(transitions(at(6_900), at(4_000), &last, &none, &nodes, 1, down_after), vec![(3, NodeState::Ready)]);
        assert_eq!(
            transitions(at(7_100), at(4_000), &last, &none, &nodes, 1, down_after),
            vec![(2, NodeState::Down), (3, NodeState::Ready), (4, NodeState::Down)]
        );
        // The leader itself is never judged, and is brought back if it was marked down.
        assert_eq!(
            transitions(at(99_000), t0, &none, &none, &[(1, NodeState::Down)], 1, down_after),
            vec![(1, NodeState::Ready)]
        );
    }

    #[test]
    fn a_node_that_registers_long_after_the_election_gets_a_full_timeout_from_then() {
        // The bug of a fresh cluster: node 3 joined and registered 5 s into node 1's leadership;
        // its heartbeats were refused until then, and it was declared down at once.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let down_after = Duration::from_secs(3);
        let nodes = [(1, NodeState::Ready), (2, NodeState::Ready), (3, NodeState::Ready)];
        let last = BTreeMap::from([(2, at(7_000))]);
        let seen = BTreeMap::from([(1, at(0)), (2, at(0)), (3, at(5_000))]);
        assert_eq!(transitions(at(5_100), t0, &last, &seen, &nodes, 1, down_after), vec![]);
        assert_eq!(transitions(at(7_900), t0, &last, &seen, &nodes, 1, down_after), vec![]);
        // Still silent a full timeout after it registered: down.
        assert_eq!(transitions(at(8_100), t0, &last, &seen, &nodes, 1, down_after), vec![(3, NodeState::Down)]);
        // Seen before this leadership began counts from the election.
        let early = BTreeMap::from([(3, t0 - Duration::from_secs(60))]);
        assert_eq!(
            transitions(at(3_100), t0, &BTreeMap::new(), &early, &[(3, NodeState::Ready)], 1, down_after),
            vec![(3, NodeState::Down)]
        );
    }
}
