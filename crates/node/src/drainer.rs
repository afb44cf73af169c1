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
        let Some(plans) = plan_pass(&raft, &mut moving) else { continue };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for (n, d, on_node, handing_off) in plans {
            let in_flight = moving.values().filter(|(from, _)| *from == n).count().max(handing_off);
            for name in next_moves(&on_node, in_flight, d.parallel, now_ms >= d.deadline_ms) {
                match crate::internal::propose(&raft, Command::VmMove { name: name.clone() }).await {
                    Ok((index, Ok(_))) => {
                        tracing::info!(vm = %name, node = n, "draining: moved");
                        moving.insert(name, (n, index));
                    }
                    Ok((_, Err(e))) => tracing::warn!(vm = %name, node = n, "draining: cannot move it now: {e}"),
                    Err(s) => tracing::debug!(vm = %name, "draining: move not accepted yet: {}", s.message()),
                }
            }
        }
    }
}

/// One pass's reading of the state: the moves made that are settled leave `moving`, and for
/// each draining node its drain, the VMs on it and how many are still handing off from it.
/// Only the VMs that matter are read, through the per-node index: with nothing draining and
/// nothing moving, no VM at all (a walk over every VM of the cluster twice a second cost the
/// leader in proportion to the VM count). `None` when the state cannot be read now.
#[allow(clippy::type_complexity)]
fn plan_pass(
    raft: &Handle,
    moving: &mut BTreeMap<String, (NodeId, u64)>,
) -> Option<Vec<(NodeId, blixard_core::scheduler::Drain, Vec<String>, usize)>> {
    use blixard_core::state;
    let view = ReadView::begin(raft.db()).ok()?;
    let draining: Vec<_> =
        state::nodes(&view).ok()?.into_iter().filter_map(|n| n.drain.clone().map(|d| (n.id, d))).collect();
    let mut done = Vec::new();
    for (name, (_, inc)) in moving.iter() {
        if settled(state::vm_named(&view, name).ok()?.as_ref(), *inc) {
            done.push(name.clone());
        }
    }
    for name in done {
        moving.remove(&name);
    }
    let mut plans = Vec::new();
    for (id, d) in draining {
        let on_node: Vec<String> = state::vms_on(&view, id).ok()?.into_iter().map(|v| v.spec.name).collect();
        let mut handing_off = 0;
        for name in state::handing_off(&view, id).ok()? {
            handing_off += usize::from(state::vm_named(&view, &name).ok()?.is_some_and(|v| v.handoff_from == Some(id)));
        }
        plans.push((id, d, on_node, handing_off));
    }
    Some(plans)
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
