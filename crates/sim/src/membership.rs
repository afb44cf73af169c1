//! The nemesis's membership verbs: hand leadership over, add a node (a new id on a fresh host
//! with an empty disk, joining through a member), remove one (`leave`, drained first or not; its
//! host runs on for a while, then is shut down for good), replace one (its host dies, it is
//! removed, a fresh one added).
//!
//! A node that leaves undrained may still run its VMs until its lease runs out: they must start
//! elsewhere only once the leader declared it down (found by these schedules, fixed; see
//! docs/RELIABILITY.md section 3 and `tests/s32_leave_undrained.rs`).

use std::path::PathBuf;
use std::time::Duration;

use blixard_consensus::wal::fs::Fs;
use madsim::rand::{thread_rng, Rng};
use madsim::runtime::Handle;

use crate::{status, Client, Cluster, Write};

/// How long a membership change may take before the nemesis gives up on it.
const CHANGE_DEADLINE: Duration = Duration::from_secs(30);

impl Cluster {
    /// The current nodes.
    pub fn current(&self) -> Vec<u64> {
        self.members.get()
    }

    /// A random current node other than `not`.
    pub fn pick_other(&self, not: u64) -> Option<u64> {
        let others: Vec<u64> = self.current().into_iter().filter(|&m| m != not).collect();
        (!others.is_empty()).then(|| others[thread_rng().gen_range(0..others.len())])
    }

    /// The leader as the first current node that knows one sees it.
    pub async fn leader(&self) -> Option<u64> {
        for m in self.current() {
            if let Some(s) = status(m).await {
                if s.leader_id != 0 {
                    return Some(s.leader_id);
                }
            }
        }
        None
    }

    /// Asks the leader to hand leadership to another voter (raft-rs `transfer_leader`); says
    /// what happened.
    pub async fn transfer_leadership(&self) -> String {
        let Some(leader) = self.leader().await else { return "no leader known to transfer from".into() };
        let Some(to) = self.pick_other(leader) else { return "no other node to transfer to".into() };
        if !self.reg.transfer_leader(leader, to) {
            return format!("leader {leader} does not run: no transfer");
        }
        for _ in 0..50 {
            if status(to).await.is_some_and(|s| s.role == "leader") {
                return format!("leadership transferred {leader} -> {to}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        format!("leadership transfer {leader} -> {to} asked, not seen within 5 s")
    }

    /// Whether node `via` counts `id` as a voter it reaches (`Some(false)`: not a member).
    async fn voter(via: u64, id: u64) -> Option<bool> {
        let s = status(via).await?;
        Some(s.members.iter().any(|m| m.id == id && m.membership == "voter" && m.reachable))
    }

    /// Adds a node with a new id on a fresh host and disk, joining through a current member;
    /// waits until it is a voter.
    pub async fn add_node(&mut self) -> Result<u64, String> {
        let id = self.disks.keys().max().copied().unwrap_or(0) + 1;
        let via = self.leader().await.ok_or("no leader known to join through")?;
        self.spawn_host(id, Some(via), None);
        let end = tokio::time::Instant::now() + CHANGE_DEADLINE;
        while tokio::time::Instant::now() < end {
            if Cluster::voter(via, id).await == Some(true) {
                return Ok(id);
            }
            if let Some(why) = self.reg.stopped(id) {
                return Err(format!("node {id} {why}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("node {id} is not a voter after {} s", CHANGE_DEADLINE.as_secs()))
    }

    /// Drains node `id` (through another member) and waits until no VM is placed on it.
    pub async fn drain_node(&self, id: u64, client: &mut Client) -> Result<(), String> {
        let via = self.pick_other(id).ok_or("no other node to drain through")?;
        client.write(via, Write::Drain(id), CHANGE_DEADLINE).await?;
        let end = tokio::time::Instant::now() + CHANGE_DEADLINE;
        while tokio::time::Instant::now() < end {
            if crate::vms(via).await.is_some_and(|v| v.values().all(|vm| vm.node != id)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("node {id} still holds VMs after {} s of draining", CHANGE_DEADLINE.as_secs()))
    }

    /// Removes node `id` (`leave`, through the other members), then shuts its host down for good
    /// (its VMs die with it). If the outcome stays unknown, the members' view decides.
    pub async fn remove_node(&mut self, id: u64, client: &mut Client) -> Result<u64, String> {
        let i = self.leave(id, client).await?;
        self.retire_host(id);
        Ok(i)
    }

    /// Removes node `id` (`leave`, through the other members); its host keeps running, as a
    /// daemon does when it is removed, until [`Cluster::retire_host`]. If the outcome stays
    /// unknown, the members' view decides.
    pub async fn leave(&mut self, id: u64, client: &mut Client) -> Result<u64, String> {
        let via = self.pick_other(id).ok_or("no other node to leave through")?;
        let r = client.write(via, Write::Leave(id), CHANGE_DEADLINE).await;
        let gone = match &r {
            Ok(_) => true,
            Err(_) => self.left_after_all(id).await,
        };
        if !gone {
            return Err(format!("node {id} did not leave: {}", r.err().unwrap_or_default()));
        }
        self.members.remove(id);
        Ok(r.unwrap_or(0))
    }

    /// Shuts the host of node `id`, which left, down for good (its VMs die with it).
    pub fn retire_host(&mut self, id: u64) {
        Handle::current().kill(self.ids[&id]);
        self.view.host_died(id);
        if let Some(t) = &self.tasks {
            t.host_died(id);
        }
        self.dead.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        self.ids.remove(&id);
        self.nodes.remove(&id);
    }

    async fn still_member(via: u64, id: u64) -> Option<bool> {
        Some(status(via).await?.members.iter().any(|m| m.id == id))
    }

    /// Whether a leave of `id` whose outcome the client never learned took effect after all:
    /// asks the other members for up to 10 s (it may commit after the client gave up; seed 208
    /// of `s42`: the harness kept counting a node the cluster had removed).
    async fn left_after_all(&self, id: u64) -> bool {
        for _ in 0..50 {
            for via in self.current().into_iter().filter(|&m| m != id) {
                if Cluster::still_member(via, id).await == Some(false) {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Node `id`'s host dies for good; the node is removed and a fresh one added; says what
    /// happened.
    pub async fn replace_node(&mut self, id: u64, client: &mut Client) -> String {
        if !self.dead().contains(&id) {
            self.kill(id);
        }
        match self.remove_node(id, client).await {
            Err(e) => format!("replace {id}: {e}"),
            Ok(i) => match self.add_node().await {
                Ok(new) => format!("replaced {id} (removed at {i}) by {new}"),
                Err(e) => format!("replace {id}: removed at {i}; the new node did not join: {e}"),
            },
        }
    }

    /// Node `id`'s log segments, oldest first.
    pub fn segments(&self, id: u64) -> Vec<PathBuf> {
        let dir = self.dir.join(format!("n{id}")).join(blixard_node::datadir::LOG_DIR);
        let mut names: Vec<String> =
            self.disks[&id].list(&dir).unwrap_or_default().into_iter().filter(|n| n.ends_with(".wal")).collect();
        names.sort();
        names.into_iter().map(|n| dir.join(n)).collect()
    }
}
