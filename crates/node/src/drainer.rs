//! Draining, on the leader: the VMs of a node being drained move elsewhere `parallel` at a
//! time — each started on its new node before the next one is moved — and all that remain at
//! once when the drain's deadline passes. The drain itself is replicated state (a new leader
//! carries on with it); each move is a `VmMove` through Raft, with the old node handing the VM
//! over only once it has stopped it, so a VM never runs on both.

use std::collections::BTreeMap;
use std::time::Duration;

use blixard_consensus::sm::ReadView;
use blixard_consensus::{Handle, Role};
use blixard_core::{Command, NodeId, Phase, VmRecord};

const EVERY: Duration = Duration::from_millis(500);

/// A move this leader made: done once the VM runs on its new incarnation (or no longer needs
/// to: stopped, deleted, lost).
fn settled(rec: Option<&VmRecord>, incarnation: u64) -> bool {
    let Some(r) = rec else { return true };
    if r.placed_index != incarnation || !r.reserves() {
        return true;
    }
    r.handoff_from.is_none() && r.observed.as_ref().is_some_and(|o| o.phase == Phase::Running)
}

/// The moves to make now for node `id`: which VMs, given the VMs on it, those in flight, and
/// whether the deadline has passed.
pub fn next_moves(on_node: &[String], in_flight: usize, parallel: u32, deadline_passed: bool) -> Vec<String> {
    let room = if deadline_passed { usize::MAX } else { (parallel as usize).saturating_sub(in_flight) };
    on_node.iter().take(room).cloned().collect()
}

pub async fn run(raft: Handle) {
    // name -> (node it moved from, its new incarnation)
    let mut moving: BTreeMap<String, (NodeId, u64)> = BTreeMap::new();
    let mut term = 0;
    loop {
        tokio::time::sleep(EVERY).await;
        let st = raft.status();
        if st.role != Role::Leader {
            moving.clear();
            continue;
        }
        if st.term != term {
            moving.clear();
            term = st.term;
        }
        let Ok(view) = ReadView::begin(raft.db()) else { continue };
        let (Ok(nodes), Ok(vms)) = (blixard_core::state::nodes(&view), blixard_core::state::vms(&view)) else {
            continue;
        };
        drop(view);
        let by_name: BTreeMap<&str, &VmRecord> = vms.iter().map(|v| (v.spec.name.as_str(), v)).collect();
        moving.retain(|name, (_, inc)| !settled(by_name.get(name.as_str()).copied(), *inc));
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for n in nodes.iter().filter(|n| n.drain.is_some()) {
            let Some(d) = &n.drain else { continue };
            let on_node: Vec<String> =
                vms.iter().filter(|v| v.node == Some(n.id)).map(|v| v.spec.name.clone()).collect();
            let handing_off = vms.iter().filter(|v| v.handoff_from == Some(n.id)).count();
            let in_flight = moving.values().filter(|(from, _)| *from == n.id).count().max(handing_off);
            for name in next_moves(&on_node, in_flight, d.parallel, now_ms >= d.deadline_ms) {
                match crate::internal::propose(&raft, Command::VmMove { name: name.clone() }).await {
                    Ok((index, Ok(_))) => {
                        tracing::info!(vm = %name, node = n.id, "draining: moved");
                        moving.insert(name, (n.id, index));
                    }
                    Ok((_, Err(e))) => tracing::warn!(vm = %name, node = n.id, "draining: cannot move it now: {e}"),
                    Err(s) => tracing::debug!(vm = %name, "draining: move not accepted yet: {}", s.message()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_go_parallel_at_a_time_and_all_at_once_past_the_deadline() {
        let vms: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        assert_eq!(next_moves(&vms, 0, 1, false), ["a"]);
        assert!(next_moves(&vms, 1, 1, false).is_empty(), "one in flight: wait for it");
        assert_eq!(next_moves(&vms, 1, 2, false), ["a"]);
        assert_eq!(next_moves(&vms, 5, 1, true), ["a", "b", "c"]);
    }
}
