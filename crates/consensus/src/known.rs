//! Which node ids a member's traffic may come from: the applied configuration plus every node a
//! configuration change in the not-yet-applied log names.
//!
//! Traffic from outside the cluster (a removed node, a stranger) is dropped so it cannot disrupt
//! elections. Using only the applied configuration would be wrong after a restart from an old
//! checkpoint: a member added since — perhaps the leader — would be ignored until replay caught
//! up, and replay may need that very leader to learn the commit index.

use std::collections::BTreeMap;

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeV2, ConfState, Entry, EntryType};

#[derive(Default)]
pub(crate) struct Known {
    /// Node ids named by configuration changes in the log after the applied index, by index.
    pending: BTreeMap<u64, Vec<u64>>,
}

fn ids_of(e: &Entry) -> Vec<u64> {
    use raft::prelude::ConfChange;
    use raft_proto::ConfChangeI;
    let cc = match e.get_entry_type() {
        EntryType::EntryNormal => return Vec::new(),
        EntryType::EntryConfChange => ConfChange::parse_from_bytes(&e.data).map(|c| c.into_v2()),
        EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data),
    };
    cc.map(|cc| cc.changes.iter().map(|c| c.node_id).collect()).unwrap_or_default()
}

impl Known {
    /// Entries appended to the log (they replace any from their first index on).
    pub fn appended(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        self.pending.split_off(&first.index);
        for e in entries {
            let ids = ids_of(e);
            if !ids.is_empty() {
                self.pending.insert(e.index, ids);
            }
        }
    }

    /// Everything up to `index` is applied (its changes are in the conf state now).
    pub fn applied(&mut self, index: u64) {
        self.pending = self.pending.split_off(&(index + 1));
    }

    /// The log was replaced by a snapshot.
    pub fn reset(&mut self) {
        self.pending.clear();
    }

    /// Whether a message from `id` comes from inside the cluster. A node that belongs to no
    /// cluster yet (a joining node before its first snapshot) accepts everyone.
    pub fn admits(&self, cs: &ConfState, id: u64) -> bool {
        cs.voters.is_empty()
            || cs.voters.contains(&id)
            || cs.learners.contains(&id)
            || cs.voters_outgoing.contains(&id)
            || self.pending.values().any(|ids| ids.contains(&id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::{ConfChangeSingle, ConfChangeType};

    fn conf_entry(index: u64, id: u64) -> Entry {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(ConfChangeType::AddLearnerNode);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let mut e = Entry::default();
        e.set_entry_type(EntryType::EntryConfChangeV2);
        e.index = index;
        e.data = cc.write_to_bytes().unwrap().into();
        e
    }

    fn normal(index: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e
    }

    #[test]
    fn a_member_added_in_the_unapplied_log_is_admitted_until_applied_then_the_conf_state_decides() {
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2];
        let mut k = Known::default();
        assert!(!k.admits(&cs, 3));
        k.appended(&[normal(5), conf_entry(6, 3), normal(7)]);
        assert!(k.admits(&cs, 3), "node 3 is named by entry 6");
        assert!(!k.admits(&cs, 4));
        k.applied(6);
        assert!(!k.admits(&cs, 3), "applied: only the conf state counts now");
    }

    #[test]
    fn an_overwritten_change_no_longer_admits() {
        let cs = ConfState { voters: vec![1], ..Default::default() };
        let mut k = Known::default();
        k.appended(&[conf_entry(6, 3)]);
        k.appended(&[normal(6)]);
        assert!(!k.admits(&cs, 3));
    }

    #[test]
    fn a_node_of_no_cluster_admits_everyone() {
        assert!(Known::default().admits(&ConfState::default(), 42));
    }
}
