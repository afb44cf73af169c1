//! Membership rules, enforced inside `apply` so that concurrent requests cannot both pass them:
//! a node joins as a learner under an id and address nobody else has, only a learner is
//! promoted, only a member is removed, and the last voter never is.
//!
//! Membership commands travel only inside Raft configuration-change entries, and the change an
//! entry makes must be the one its command describes: the node applying it checks that, these
//! rules, and raft-rs's own acceptance before anything changes, and every node decides alike.

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandError};
use crate::spec::ValidationError;
use crate::store::{ReadStore, StoreError, Table};
use crate::NodeId;

/// A cluster member as recorded in the replicated state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub addr: String,
    /// A voter (else a learner, still catching up).
    pub voter: bool,
}

/// The kind of a single Raft configuration change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    AddLearner,
    AddVoter,
    Remove,
}

/// The one change a configuration-change entry makes (Blixard never proposes joint changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    pub kind: ChangeKind,
    pub id: NodeId,
}

/// The change a membership command must travel with; `None` for every other command.
pub fn change_of(cmd: &Command) -> Option<MembershipChange> {
    let (kind, id) = match cmd {
        Command::AddLearner { id, .. } => (ChangeKind::AddLearner, *id),
        Command::PromoteVoter { id } => (ChangeKind::AddVoter, *id),
        Command::RemoveMember { id } => (ChangeKind::Remove, *id),
        _ => return None,
    };
    Some(MembershipChange { kind, id })
}

/// Whether `cmd` may travel in an entry making `change` (`None`: a normal entry).
pub fn check_carrier(cmd: &Command, change: Option<&MembershipChange>) -> Result<(), CommandError> {
    let bad = |m: &str| Err(CommandError::FailedPrecondition(m.to_string()));
    match (change_of(cmd), change) {
        (None, None) => match cmd {
            Command::Bootstrap { .. } => bad("a bootstrap is never replicated"),
            _ => Ok(()),
        },
        (Some(want), Some(got)) if want == *got => Ok(()),
        (Some(_), Some(_)) => bad("the configuration change does not match its command"),
        (Some(_), None) => bad("a membership change must come with a configuration change"),
        (None, Some(_)) => bad("a configuration change must carry a membership command"),
    }
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<Member, StoreError> {
    postcard::from_bytes(bytes)
        .map_err(|e| StoreError(format!("undecodable member at {:?}: {e}", String::from_utf8_lossy(key))))
}

/// All recorded members, by id.
pub fn members(store: &impl ReadStore) -> Result<Vec<Member>, StoreError> {
    store.scan(Table::Members, b"", usize::MAX)?.iter().map(|(k, v)| decode(k, v)).collect()
}

/// Validates a node's address: `HOST:PORT` with a non-empty host and a port 1–65535.
pub fn validate_addr(addr: &str) -> Result<(), ValidationError> {
    let shown: String = addr.chars().take(64).collect();
    let ok = addr.len() <= 255
        && addr.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new("addr", format!("must be HOST:PORT with a port 1-65535 (got {shown:?})")))
    }
}

/// The membership rules, against the state before the change.
pub fn validate(store: &impl ReadStore, cmd: &Command) -> Result<(), CommandError> {
    let members = members(store).map_err(|e| CommandError::FailedPrecondition(e.to_string()))?;
    let find = |id: NodeId| members.iter().find(|m| m.id == id);
    match cmd {
        Command::AddLearner { id, addr } => {
            if *id == 0 {
                return Err(ValidationError::new("node_id", "must be a positive integer (got 0)").into());
            }
            validate_addr(addr)?;
            if let Some(m) = find(*id) {
                return Err(CommandError::AlreadyExists(format!("node id {} is already a member at {}", m.id, m.addr)));
            }
            if let Some(m) = members.iter().find(|m| m.addr == *addr) {
                return Err(CommandError::AlreadyExists(format!("address {addr} is already used by node {}", m.id)));
            }
            Ok(())
        }
        Command::PromoteVoter { id } => match find(*id) {
            Some(m) if !m.voter => Ok(()),
            Some(_) => Err(CommandError::FailedPrecondition(format!("node {id} is already a voter"))),
            None => Err(CommandError::NotFound(format!("node {id}"))),
        },
        Command::RemoveMember { id } => match find(*id) {
            None => Err(CommandError::NotFound(format!("node {id} is not a member"))),
            Some(m) if m.voter && members.iter().filter(|m| m.voter).count() == 1 => {
                Err(CommandError::FailedPrecondition(format!("node {id} is the last voter; it cannot leave")))
            }
            Some(_) => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
