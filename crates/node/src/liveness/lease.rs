//! A node's side of liveness: it heartbeats the leader and holds a lease while the leader
//! answers (see the module doc of [`super`] for why this keeps a VM from running twice).

use std::sync::{Arc, Mutex};

use blixard_consensus::{Handle, Role};
use blixard_core::NodeId;
use blixard_proto::v1::node_service_client::NodeServiceClient;
use blixard_proto::v1::HeartbeatRequest;
use tokio::sync::watch;
use tokio::time::Instant;

use super::monitor::Monitor;
use super::Timing;
use crate::pool::ChannelPool;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct State {
    /// The lease runs out at this instant (`None`: never held).
    until: Option<Instant>,
    /// The leader's commit index when it granted the lease: VMs may be started only once this
    /// node has applied that far.
    commit: u64,
    /// The newest term a lease came from; answers from older terms are refused.
    term: u64,
    /// A leader answered at least once since the daemon started (until then `until` is only
    /// the grace a restarted daemon has to reach one before VMs it adopted are killed).
    granted: bool,
}

/// This node's lease. Cheap to share.
pub struct Lease {
    fence_after: std::time::Duration,
    state: Mutex<State>,
    /// The instances fencing killed and nothing has started again since.
    fenced: Mutex<std::collections::BTreeSet<blixard_vmm::Instance>>,
    /// Changes whenever the lease is granted (the fencer re-arms on it).
    changed: watch::Sender<u64>,
}

impl Lease {
    /// A lease not yet granted: VMs left running by an earlier daemon may keep running for
    /// `fence_after` while this one reaches the leader; none may be started.
    pub fn new(timing: Timing) -> Arc<Lease> {
        let state = State { until: Some(Instant::now() + timing.fence_after), ..State::default() };
        Arc::new(Lease {
            fence_after: timing.fence_after,
            state: Mutex::new(state),
            fenced: Mutex::default(),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The leader of `term`, at `commit`, answered the heartbeat sent at `sent`.
    pub fn grant(&self, sent: Instant, term: u64, commit: u64) {
        let mut s = self.lock();
        if term < s.term {
            return;
        }
        let until = sent + self.fence_after;
        s.until = Some(s.until.map_or(until, |u| u.max(until)));
        s.commit = if term > s.term { commit } else { s.commit.max(commit) };
        s.term = term;
        s.granted = true;
        drop(s);
        self.changed.send_modify(|n| *n += 1);
    }

    /// When the lease runs out (`None`: never held).
    pub fn until(&self) -> Option<Instant> {
        self.lock().until
    }

    /// Whether VMs may run here now, given what this node has applied.
    pub fn valid(&self, applied: u64) -> bool {
        let s = *self.lock();
        s.granted && s.until.is_some_and(|u| Instant::now() < u) && applied >= s.commit
    }

    /// Whether the lease has not run out: what runs here may go on running (the fencing
    /// watchdog's rule). Unlike [`Lease::valid`], it does not wait for this node to apply what the
    /// leader had committed when it last answered: a busy node is always a little behind, and
    /// that is no reason to kill anything.
    pub fn held(&self) -> bool {
        self.lock().until.is_some_and(|u| Instant::now() < u)
    }

    /// Fencing killed `vm`.
    pub fn note_fenced(&self, vm: &blixard_vmm::Instance) {
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).insert(vm.clone());
    }

    /// Whether fencing killed `vm` and it has not run since.
    pub fn was_fenced(&self, vm: &blixard_vmm::Instance) -> bool {
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).contains(vm)
    }

    /// `vm` runs again (or is gone): forget that fencing killed it.
    pub fn forget_fenced(&self, vm: &blixard_vmm::Instance) {
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).remove(vm);
    }

    /// Forgets every fenced instance the driver no longer has (so the set stays bounded).
    pub fn retain_fenced(&self, present: &[blixard_vmm::Instance]) {
        self.fenced.lock().unwrap_or_else(|e| e.into_inner()).retain(|vm| present.contains(vm));
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Whether `id` is a registered node in what this node has applied.
fn registered(raft: &Handle, id: NodeId) -> bool {
    blixard_consensus::sm::ReadView::begin(raft.db())
        .and_then(|v| blixard_core::state::node_exists(&v, id))
        .unwrap_or(false)
}

/// Heartbeats sent on a stream and not answered yet that are remembered (their send times).
const PENDING: usize = 16;

/// Sent `(seq, when)`, oldest first: the send time an answer's seq stands for.
type Pending = Arc<Mutex<std::collections::VecDeque<(u64, Instant)>>>;

/// One open heartbeat stream to a leader (`NodeService/Heartbeats`). Dropping it ends the
/// stream.
struct Session {
    leader: NodeId,
    tx: futures::channel::mpsc::Sender<HeartbeatRequest>,
    pending: Pending,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The send time of the heartbeat `seq`, forgetting it and every older one (answers come in
/// order; one never answered is forgotten when a later one is).
fn take_sent(pending: &Pending, seq: u64) -> Option<Instant> {
    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
    while let Some(&(s, t)) = p.front() {
        if s > seq {
            break;
        }
        p.pop_front();
        if s == seq {
            return Some(t);
        }
    }
    None
}

impl Session {
    /// Opens a stream to `leader` at `addr` and sends `first` on it; its answers grant the lease.
    async fn open(
        leader: NodeId,
        addr: &str,
        first: (HeartbeatRequest, Instant),
        raft: &Handle,
        pool: &ChannelPool,
        lease: &Arc<Lease>,
        every: std::time::Duration,
    ) -> Option<Session> {
        let ch = pool.get(addr).ok()?;
        let (mut tx, rx) = futures::channel::mpsc::channel(PENDING);
        let pending: Pending = Arc::default();
        pending.lock().unwrap_or_else(|e| e.into_inner()).push_back((first.0.seq, first.1));
        tx.try_send(first.0).ok()?;
        let mut answers = match tokio::time::timeout(every, NodeServiceClient::new(ch).heartbeats(rx)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => {
                tracing::trace!("heartbeat stream to node {leader} refused: {}", s.message());
                return None;
            }
            Err(_) => {
                tracing::trace!("heartbeat stream to node {leader} not answered in {every:?}");
                return None;
            }
        };
        let reader = tokio::spawn({
            let (pending, raft, lease) = (pending.clone(), raft.clone(), lease.clone());
            async move {
                loop {
                    match answers.message().await {
                        Ok(Some(r)) => {
                            // Answers from a leader older than the one this node knows are refused.
                            if let Some(sent) = take_sent(&pending, r.seq) {
                                if r.term >= raft.status().term {
                                    lease.grant(sent, r.term, r.commit_index);
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(s) => {
                            tracing::trace!("heartbeat stream to node {leader} ended: {}", s.message());
                            break;
                        }
                    }
                }
            }
        });
        Some(Session { leader, tx, pending, reader })
    }

    /// Whether the stream still works: open, and no heartbeat left unanswered for `stall`.
    fn alive(&self, now: Instant, stall: std::time::Duration) -> bool {
        let oldest = self.pending.lock().unwrap_or_else(|e| e.into_inner()).front().map(|&(_, t)| t);
        !self.reader.is_finished() && oldest.is_none_or(|t| now.saturating_duration_since(t) < stall)
    }

    /// Sends heartbeat `req`, sent at `sent`; `false` when the stream cannot take it.
    fn send(&mut self, req: HeartbeatRequest, sent: Instant) -> bool {
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if p.len() >= PENDING {
                p.pop_front();
            }
            p.push_back((req.seq, sent));
        }
        self.tx.try_send(req).is_ok()
    }
}

/// Heartbeats the leader every `timing.heartbeat` for as long as the node runs, on one stream
/// per leader (a new one when the leader changes, the stream ends or stalls). The lease is
/// reasoned exactly as with one call per heartbeat: an answer extends it from the send time of
/// the heartbeat whose seq it carries. On the leader itself a heartbeat is a note in its own
/// monitor.
pub async fn heartbeat(id: NodeId, raft: Handle, pool: Arc<ChannelPool>, monitor: Arc<Monitor>, lease: Arc<Lease>) {
    let every = monitor.timing.heartbeat;
    let mut seq = 0u64;
    let mut session: Option<Session> = None;
    loop {
        let st = raft.status();
        let sent = Instant::now();
        seq += 1;
        match st.leader_id {
            // A leader that left the cluster (it is no registered node any more) grants itself
            // no lease, as it answers no heartbeat of another node that left.
            Some(l)
                if l == id
                    && st.role == Role::Leader
                    && registered(&raft, id)
                    && monitor.heard(id, st.role, st.term) =>
            {
                session = None;
                lease.grant(sent, st.term, st.commit);
            }
            Some(l) if l == id => session = None,
            Some(l) => {
                let req = HeartbeatRequest { node_id: id, seq };
                // A stream to an old leader, ended, or with a heartbeat unanswered for two
                // periods is dropped and a new one opened.
                match session.as_mut() {
                    Some(s) if s.leader == l && s.alive(sent, every * 2) => {
                        if !s.send(req, sent) {
                            session = None;
                        }
                    }
                    _ => {
                        session = None;
                        if let Some(addr) = crate::members_addr(&raft, l) {
                            session = Session::open(l, &addr, (req, sent), &raft, &pool, &lease, every).await;
                        }
                    }
                }
            }
            None => session = None,
        }
        let spent = sent.elapsed();
        if spent < every {
            tokio::time::sleep(every - spent).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timing() -> Timing {
        Timing {
            heartbeat: Duration::from_millis(100),
            fence_after: Duration::from_millis(400),
            down_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_lease_counts_from_the_send_time_needs_the_applied_commit_and_refuses_old_terms() {
        let l = Lease::new(timing());
        assert!(!l.valid(100), "never granted");
        assert!(l.until().is_some(), "a grace to reach the leader");
        let sent = Instant::now();
        l.grant(sent, 3, 50);
        assert!(l.until() >= Some(sent + Duration::from_millis(400)));
        assert!(!l.valid(49), "not yet applied as far as the leader had committed");
        assert!(l.valid(50));
        // An answer from an older leader neither extends nor replaces it.
        let before = l.until();
        l.grant(sent + Duration::from_millis(300), 2, 10);
        assert_eq!(l.until(), before);
        // A newer term's answer does, and its commit index is the one to wait for.
        l.grant(sent + Duration::from_millis(100), 4, 70);
        assert_eq!(l.until(), Some(sent + Duration::from_millis(500)));
        assert!(!l.valid(60));
    }

    #[test]
    fn an_answer_on_the_stream_stands_for_the_send_time_of_its_own_seq_only() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let pending: Pending = Arc::new(Mutex::new((1..=4).map(|s| (s, at(s * 100))).collect()));
        // The answer to 3: its own send time (never a later one), and 1 and 2 are forgotten.
        assert_eq!(take_sent(&pending, 3), Some(at(300)));
        assert_eq!(take_sent(&pending, 2), None, "older than an answered one");
        assert_eq!(take_sent(&pending, 3), None, "answered once");
        assert_eq!(take_sent(&pending, 9), None, "never sent");
        assert!(pending.lock().unwrap().is_empty(), "9 is past every sent one: all forgotten");
        pending.lock().unwrap().push_back((10, at(1_000)));
        assert_eq!(take_sent(&pending, 10), Some(at(1_000)));
    }

    #[test]
    fn a_lease_whose_commit_is_not_applied_yet_is_held_and_one_run_out_is_not() {
        let l = Lease::new(timing());
        l.grant(Instant::now(), 3, 50);
        assert!(!l.valid(49) && l.held(), "behind the leader's commit: nothing starts, nothing is killed");
        let l = Lease::new(Timing { fence_after: Duration::ZERO, ..timing() });
        assert!(!l.held(), "no grace");
        l.grant(Instant::now() - Duration::from_secs(1), 3, 50);
        assert!(!l.held() && !l.valid(50), "answered too long ago: run out");
    }
}
