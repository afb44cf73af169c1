//! Node liveness and fencing: how the cluster notices a dead node, and why a VM never runs on
//! two nodes at once when it moves the dead node's VMs elsewhere.
//!
//! **Heartbeats.** Every node sends the leader a heartbeat every `heartbeat` (500 ms), each a
//! message on one long-lived stream to the leader (`NodeService/Heartbeats`, a new stream when
//! the leader changes or the stream ends or stalls), answered by a message carrying its seq:
//! a unary call per heartbeat cost the leader ~90 µs of CPU each, 18 % of a core for 1,000
//! nodes, in the request layers rather than in the liveness logic. They are not Raft writes: the leader ([`monitor::Monitor`]) keeps, in memory, when it last received
//! one from each node, and proposes only transitions through Raft — `ready → down` when a node
//! was silent for `down_after` (3 s), `down → ready` when it is heard again. A node that becomes
//! leader first gives every node a full `down_after` from that moment, and a node that registers
//! later a full `down_after` from when the leader first sees it registered.
//!
//! **Leases and fencing.** A node holds a lease ([`lease::Lease`]) while the leader answers its
//! heartbeats: an answer to the heartbeat *sent* at `s` (the node's monotonic clock) extends the
//! lease to `s + fence_after` (2 s). On the stream an answer names its heartbeat by seq and
//! stands for that heartbeat's send time only, as a unary call's answer did: the leader received
//! it after `s`, so the argument below is unchanged by the transport. When the lease runs out, the node fences itself: it kills
//! every VM it runs ([`fence`]) and starts none until it holds a lease again, and then only
//! once it has applied the log as far as the leader had committed when it answered — so it has
//! seen every VM moved away from it before it may start any.
//!
//! **Why a VM never runs twice.** Let heartbeat `k` be the last one the leader answered before
//! it declared the node down; the node sent it at real time `s` and the leader received it at
//! `r ≥ s`. The node is fenced from `s + fence_after·(1+ρ)` on in real time (its clock may run
//! slow by at most a rate ρ), the leader declares it down at `r + down_after·(1−ρ)` at the
//! earliest, and a replacement can start only after that declaration is committed and applied.
//! With `fence_after·(1+ρ) < down_after·(1−ρ)` — 2 s against 3 s leaves room for ρ up to 20 %,
//! far beyond real clock drift (parts per million) — the node has killed the VM before its
//! replacement may start. Only monotonic clocks are used; wall clocks may be skewed at will.
//!
//! *A new leader* does not know when the old one last heard from a node, so it gives every node
//! a full `down_after` from its own election, `e`. A heartbeat answered by the old leader after
//! `e` (it may not know yet that it lost) could extend a lease past `e + fence_after`; but the
//! old leader steps down within two election timeouts of losing its quorum (raft-rs's
//! check-quorum), the new one is elected at least one election timeout after the followers last
//! heard from the old one, and a node rejects answers from a term older than the newest it
//! knows. With election timeouts of 200–400 ms, the old leader's last answer comes at most
//! ~0.4 s after `e`, so leases end by `e + 2.4 s`, before `e + 3 s`.
//!
//! *A node that leaves* the cluster (`cluster leave`, drained or not) may still run its VMs: it
//! hears of its removal late or never, and the leader answered its heartbeats until it applied
//! the removal. From then on its heartbeats are refused (it is no registered node), so its lease
//! runs out and it fences, as a node cut off would; and a leader that left grants itself no
//! lease. Its VMs are placed elsewhere at once but wait there, as a moved VM waits for its old
//! node, until the leader declares the departed node down by the rule above
//! (`blixard_core::state::departed_nodes`), or it reports them stopped.
//!
//! *A daemon that dies* cannot fence, and its QEMUs (in process groups of their own, so that a
//! restarted daemon can adopt them) would run on: the watchdog process ([`watchdog`],
//! `blixard fence-watch`) reads the lease's deadline the daemon writes to `<data-dir>/lease`
//! and kills them when it passes — on the same monotonic clock, so the argument above holds
//! for it too, give or take its 100 ms poll.
//!
//! *Lower defaults* (250 ms / 1.2 s / 2 s: the down timeout is most of a dead host's VM move
//! time) satisfy both rules above, and a 3-node cluster under heavy load showed no false down
//! or fencing with them; but the task simulation then found a task attempt running on two nodes
//! at once (s47 seeds 2 and 3, tried together with heartbeats each waited for up to the fence
//! time instead of one period; that change alone failed seed 8), so neither is in until that is
//! understood.
//!
//! The simulation checks the result: at no instant do two nodes run one VM
//! (`crates/sim`, with the fake driver's global view).

pub mod fence;
pub mod lease;
pub mod monitor;
#[cfg(not(madsim))]
pub mod watchdog;

use std::time::Duration;

/// The timings of liveness (`blixard node --heartbeat-ms --fence-after-ms --down-after-ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat: Duration,
    pub fence_after: Duration,
    pub down_after: Duration,
}

/// The defaults, in ms (`blixard node`'s flags use them too).
pub const DEFAULT_HEARTBEAT_MS: u64 = 500;
pub const DEFAULT_FENCE_AFTER_MS: u64 = 2_000;
pub const DEFAULT_DOWN_AFTER_MS: u64 = 3_000;

impl Default for Timing {
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            fence_after: Duration::from_millis(DEFAULT_FENCE_AFTER_MS),
            down_after: Duration::from_millis(DEFAULT_DOWN_AFTER_MS),
        }
    }
}

impl Timing {
    /// Checks the rule the safety argument needs (with room for the heartbeat and for a new
    /// leader's election): a node fences well before the leader may declare it down.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.heartbeat * 2 > self.fence_after {
            return Err(format!(
                "--heartbeat-ms must be positive and at most half of --fence-after-ms ({:?} vs {:?})",
                self.heartbeat, self.fence_after
            ));
        }
        if self.fence_after + Duration::from_millis(500) > self.down_after {
            return Err(format!(
                "--fence-after-ms must be at least 500 ms below --down-after-ms ({:?} vs {:?})",
                self.fence_after, self.down_after
            ));
        }
        Ok(())
    }
}
