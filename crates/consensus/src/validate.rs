//! Checks every Raft message that comes from the network before it is stepped: pure, no IO.
//!
//! raft-rs trusts its input: a message it considers impossible ends the process (`fatal!`) —
//! a heartbeat committing past the log's end, an append that overwrites a committed entry, a
//! snapshot whose configuration cannot be restored, an empty proposal. A peer is not trusted
//! that far: whatever arrives is checked here against what Raft guarantees, and a message that
//! cannot come from a correct member is dropped (and counted) with the rule it broke.
//!
//! What this cannot tell: whether a well-formed message really comes from the member it names
//! (that is the transport's authentication). What it does guarantee: no peer input reaches a
//! raft-rs panic, and no message from a member that is not this term's leader acts as one.
//!
//! The rules, by message:
//! - only types peers exchange (never the local-only `MsgHup`, `MsgBeat`, `MsgUnreachable`,
//!   `MsgSnapStatus`, `MsgCheckQuorum`); `to` is us, `from` a member other than us;
//! - a term is set on everything but forwarded proposals and read requests (raft-rs takes a
//!   message of term 0 as a local one and skips its term checks);
//! - leader traffic (`MsgAppend`, `MsgHeartbeat`, `MsgSnapshot`, `MsgTimeoutNow`): a term has
//!   one leader, so at our term only the leader we follow sends it; a newer term's leader is
//!   not believed while we heard from ours less than an election timeout ago (the lease
//!   raft-rs's `check_quorum` already applies to votes; a real new leader is believed once it
//!   expires); `MsgTimeoutNow` only from our leader at our term;
//! - `MsgHeartbeat`: its commit is within our log (raft-rs clamps the leader's side to what we
//!   hold, so more is impossible; raft-rs aborts on it);
//! - `MsgAppend`: its entries follow its index one by one, with terms that never decrease,
//!   from its log term up to its term; an entry we hold committed is not replaced by another;
//!   its log term is not older than our committed entry's (raft-rs would walk back into the
//!   compacted log and abort);
//! - `MsgSnapshot`: newer than what we applied, of a term not past the message's, with a plain
//!   (non-joint) configuration of distinct non-zero voters and learners that includes us;
//! - responses to a leader name indexes inside its log; a proposal has entries and is only
//!   taken by the leader (a follower would forward it on).

use std::fmt;

use raft::eraftpb::{Message, MessageType};
use raft::prelude::ConfState;

/// What this node knows when a message arrives.
pub struct Local<'a> {
    pub id: u64,
    pub term: u64,
    /// The leader we follow (0: none).
    pub leader: u64,
    /// We heard from `leader` less than an election timeout ago (or we are it).
    pub in_lease: bool,
    pub is_leader: bool,
    pub last_index: u64,
    pub committed: u64,
    pub applied: u64,
    /// Whether `from` is a member (voter or learner, applied or in the unapplied log).
    pub member: &'a dyn Fn(u64) -> bool,
    /// The term of our entry at an index, when we hold it.
    pub term_at: &'a dyn Fn(u64) -> Option<u64>,
}

/// Why a message was dropped: the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn no(why: impl Into<String>) -> Result<(), Refused> {
    Err(Refused(why.into()))
}

/// Checks one message from the network; `Ok` means it may be stepped.
pub fn check(m: &Message, l: &Local) -> Result<(), Refused> {
    use MessageType::*;
    let t = m.get_msg_type();
    match t {
        MsgHup | MsgBeat | MsgUnreachable | MsgSnapStatus | MsgCheckQuorum => {
            return no(format!("{t:?} is local-only and never comes from a peer"))
        }
        _ => {}
    }
    if m.to != l.id {
        return no(format!("{t:?} is addressed to node {}, not to us ({})", m.to, l.id));
    }
    if m.from == 0 || m.from == l.id {
        return no(format!("{t:?} claims to come from node {}", m.from));
    }
    if !(l.member)(m.from) {
        return no(format!("{t:?} from node {}, which is not a member", m.from));
    }
    let forwarded = matches!(t, MsgPropose | MsgReadIndex);
    if !forwarded && m.term == 0 {
        return no(format!("{t:?} has no term (only forwarded proposals and reads may)"));
    }
    if matches!(t, MsgAppend | MsgHeartbeat | MsgSnapshot | MsgTimeoutNow) {
        leader_traffic(m, l)?;
    }
    match t {
        MsgHeartbeat if m.commit > l.last_index => {
            no(format!("MsgHeartbeat commits index {} past our last index {}", m.commit, l.last_index))
        }
        MsgAppend => append(m, l),
        MsgSnapshot => snapshot(m, l),
        MsgTimeoutNow if m.term != l.term || m.from != l.leader || l.leader == 0 => no(format!(
            "MsgTimeoutNow from node {} at term {}: only our leader ({}) at our term ({}) may",
            m.from, m.term, l.leader, l.term
        )),
        MsgPropose if m.entries.is_empty() => no("MsgPropose without entries"),
        MsgPropose if !l.is_leader => no("MsgPropose to a node that does not lead"),
        MsgAppendResponse if m.index > l.last_index || m.reject_hint > l.last_index => no(format!(
            "MsgAppendResponse names index {} (hint {}) past our last index {}",
            m.index, m.reject_hint, l.last_index
        )),
        _ => Ok(()),
    }
}

fn leader_traffic(m: &Message, l: &Local) -> Result<(), Refused> {
    let t = m.get_msg_type();
    if m.term == l.term && l.leader != 0 && m.from != l.leader {
        return no(format!("{t:?} from node {} at term {}, whose leader is node {}", m.from, m.term, l.leader));
    }
    if m.term > l.term && l.in_lease {
        return no(format!(
            "{t:?} from node {} claims term {} while our leader {} of term {} was heard within the election timeout",
            m.from, m.term, l.leader, l.term
        ));
    }
    Ok(())
}

fn append(m: &Message, l: &Local) -> Result<(), Refused> {
    if m.log_term > m.term {
        return no(format!("MsgAppend's log term {} is past its term {}", m.log_term, m.term));
    }
    if m.index >= l.committed {
        if let Some(ct) = (l.term_at)(l.committed) {
            if m.log_term < ct {
                return no(format!(
                    "MsgAppend at index {} has log term {}, older than our committed entry's term {ct}",
                    m.index, m.log_term
                ));
            }
        }
    }
    let mut prev_term = m.log_term;
    for (i, e) in m.entries.iter().enumerate() {
        let want = m.index.checked_add(i as u64 + 1);
        if want != Some(e.index) {
            return no(format!("MsgAppend's entry {i} has index {}, not the next one after {}", e.index, m.index));
        }
        if e.term < prev_term || e.term > m.term {
            return no(format!(
                "MsgAppend's entry {} has term {} (the previous {prev_term}, the message's {})",
                e.index, e.term, m.term
            ));
        }
        prev_term = e.term;
        if e.index <= l.committed {
            if let Some(ours) = (l.term_at)(e.index) {
                if ours != e.term {
                    return no(format!(
                        "MsgAppend replaces our committed entry {} (term {ours}) with one of term {}",
                        e.index, e.term
                    ));
                }
            }
        }
    }
    Ok(())
}

fn snapshot(m: &Message, l: &Local) -> Result<(), Refused> {
    let meta = m.get_snapshot().get_metadata();
    if meta.index <= l.applied {
        return no(format!("MsgSnapshot at index {} is not newer than our applied index {}", meta.index, l.applied));
    }
    if meta.term == 0 || meta.term > m.term {
        return no(format!("MsgSnapshot of term {} in a message of term {}", meta.term, m.term));
    }
    conf_state(meta.get_conf_state(), l.id)
}

/// A configuration a snapshot may carry: plain (Blixard makes no joint changes), distinct
/// non-zero ids, at least one voter, including us.
fn conf_state(cs: &ConfState, me: u64) -> Result<(), Refused> {
    if !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() || cs.auto_leave {
        return no("MsgSnapshot carries a joint configuration");
    }
    if cs.voters.is_empty() {
        return no("MsgSnapshot's configuration has no voters");
    }
    let mut ids: Vec<u64> = cs.voters.iter().chain(&cs.learners).copied().collect();
    ids.sort_unstable();
    if ids.first() == Some(&0) || ids.windows(2).any(|w| w[0] == w[1]) {
        return no("MsgSnapshot's configuration names node 0 or a node twice");
    }
    if !ids.contains(&me) {
        return no(format!("MsgSnapshot's configuration does not include us ({me})"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
