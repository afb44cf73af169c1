//! `cluster transfer-leader`: the leader hands leadership to another voter and answers once it
//! has moved. Any node takes the request and forwards it to the leader.

use std::time::Duration;

use blixard_core::state::Member;
use blixard_proto::v1;
use tonic::transport::Channel;
use tonic::{Request, Status};

use super::{forward_failed, forwarded, Api, Result};

/// How long a node without a leader waits for one before answering "no quorum".
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long the leader waits for leadership to move. With [`LEADER_WAIT`] it stays within one
/// attempt of the CLI (12 s), so a slow transfer is reported, never retried blindly.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(8);

/// Why `to` cannot take leadership (`to` 0: any voter, always acceptable here).
pub(crate) fn check_target(to: u64, members: &[Member]) -> std::result::Result<(), Status> {
    if to == 0 {
        return Ok(());
    }
    match members.iter().find(|m| m.id == to) {
        None => {
            let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            Err(Status::not_found(format!(
                "--to: node {to} is not a member of the cluster (members: {})",
                ids.join(", ")
            )))
        }
        Some(m) if !m.voter => Err(Status::failed_precondition(format!(
            "--to: node {to} is a learner, not a voter: only a voter can lead (it becomes one once caught up)"
        ))),
        Some(_) => Ok(()),
    }
}

/// The voter to hand leadership to when none is named: the one whose log matches the
/// leader's furthest (the lowest id among equals); never the leader itself.
pub(crate) fn most_caught_up(leader: u64, voters: &[u64], progress: &[(u64, u64)]) -> Option<u64> {
    voters
        .iter()
        .filter(|&&v| v != leader)
        .map(|&v| (progress.iter().find(|(id, _)| *id == v).map_or(0, |(_, m)| *m), v))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, v)| v)
}

fn no_quorum(why: String) -> Status {
    Status::failed_precondition(format!("no quorum: {why}; leadership was not transferred"))
}

impl Api {
    pub(super) async fn transfer(&self, req: Request<v1::TransferLeaderRequest>) -> Result<v1::TransferLeaderResponse> {
        let to = req.get_ref().to;
        if !req.metadata().contains_key(super::FORWARDED) {
            let mut w = self.raft.watch_status();
            if !matches!(tokio::time::timeout(LEADER_WAIT, w.wait_for(|s| s.leader_id.is_some())).await, Ok(Ok(_))) {
                let me = self.raft.status().id;
                return Err(no_quorum(format!(
                    "node {me} has known no leader for {}s (a majority of the voters is unreachable, or an \
                     election is under way)",
                    LEADER_WAIT.as_secs()
                )));
            }
        }
        forward!(self, req, v1::cluster_service_client::ClusterServiceClient<Channel>, transfer_leader);
        // Checked by the leader: a follower's membership may lag behind the last change.
        check_target(to, &self.members()?)?;
        let deadline = tokio::time::Instant::now() + TRANSFER_TIMEOUT;
        let s = self.raft.status();
        let me = s.id;
        // A leader cut off from the majority must not hand over what it no longer holds.
        match tokio::time::timeout(
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            self.raft.read_index(TRANSFER_TIMEOUT / 2),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(no_quorum(format!("leader {me} could not confirm a majority ({e})"))),
            Err(_) => return Err(no_quorum(format!("leader {me} could not confirm a majority in time"))),
        }
        let target = if to != 0 {
            to
        } else {
            let progress = self.raft.progress().await.map_err(|e| self.propose_error(e))?;
            most_caught_up(me, &s.voters, &progress)
                .ok_or_else(|| Status::failed_precondition("there is no other voter to hand leadership to"))?
        };
        if target != me {
            self.raft.transfer_leader(target);
        }
        let mut w = self.raft.watch_status();
        let moved = tokio::time::timeout(
            deadline.saturating_duration_since(tokio::time::Instant::now()),
            w.wait_for(|st| st.leader_id == Some(target)),
        )
        .await;
        let now = match moved {
            Ok(Ok(st)) => st.clone(),
            _ => {
                let now = self.raft.status().leader_id.map_or("none known".to_string(), |l| format!("node {l}"));
                return Err(Status::aborted(format!(
                    "timed out: leadership did not move to node {target} within {}s (the leader now: {now}); node \
                     {target} may be unreachable or far behind",
                    TRANSFER_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(tonic::Response::new(v1::TransferLeaderResponse {
            previous_leader_id: me,
            leader_id: target,
            leader_addr: self.addr_of(target).unwrap_or_default(),
            term: now.term,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u64, voter: bool) -> Member {
        Member { id, addr: format!("10.0.0.{id}:7001"), voter }
    }

    #[test]
    fn the_target_must_be_a_voting_member() {
        let ms = [m(1, true), m(2, true), m(3, false)];
        assert!(check_target(0, &ms).is_ok());
        assert!(check_target(2, &ms).is_ok());
        let e = check_target(9, &ms).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("node 9 is not a member") && e.message().contains("1, 2, 3"), "{}", e.message());
        let e = check_target(3, &ms).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("node 3 is a learner"), "{}", e.message());
    }

    #[test]
    fn any_picks_the_most_caught_up_other_voter() {
        let prs = [(1, 50), (2, 40), (3, 48), (4, 48), (5, 60)];
        // 5 is furthest but a learner here (not in voters); 3 and 4 tie: the lower id.
        assert_eq!(most_caught_up(1, &[1, 2, 3, 4], &prs), Some(3));
        // Never the leader itself, however far its own log goes.
        assert_eq!(most_caught_up(5, &[1, 5], &prs), Some(1));
        // A voter without progress (just added) counts as matched at 0.
        assert_eq!(most_caught_up(1, &[1, 7], &prs), Some(7));
        assert_eq!(most_caught_up(1, &[1], &prs), None);
    }
}
