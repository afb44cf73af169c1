//! The one place errors become `tonic::Status`, with explicit codes.

use blixard_consensus::ProposeError;
use blixard_core::{CommandError, StoreError};
use tonic::{Code, Status};

/// Metadata key carrying the leader's address on `Unavailable` answers.
pub const LEADER_ADDR_KEY: &str = "x-blixard-leader-addr";

/// "outer: cause: cause" for logs and messages.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

pub fn command(e: CommandError) -> Status {
    let code = match e {
        CommandError::Invalid(_) => Code::InvalidArgument,
        CommandError::AlreadyExists(_) => Code::AlreadyExists,
        CommandError::NotFound(_) => Code::NotFound,
        CommandError::FailedPrecondition(_) => Code::FailedPrecondition,
    };
    Status::new(code, e.to_string())
}

pub fn propose(e: ProposeError, leader_addr: Option<String>) -> Status {
    match e {
        ProposeError::NotLeader { leader_id: None } => Status::unavailable("no leader elected yet; retry shortly"),
        ProposeError::NotLeader { leader_id: Some(id) } => {
            let mut s = Status::unavailable(match &leader_addr {
                Some(a) => format!("not the leader; the leader is node {id} at {a}"),
                None => format!("not the leader; the leader is node {id}"),
            });
            if let Some(Ok(v)) = leader_addr.map(|a| a.parse()) {
                s.metadata_mut().insert(LEADER_ADDR_KEY, v);
            }
            s
        }
        ProposeError::Dropped => Status::unavailable(e.to_string()),
        ProposeError::Stopped => Status::unavailable(e.to_string()),
        ProposeError::Busy(m) => Status::failed_precondition(m),
        // Not Unavailable: a client must not blindly retry a write that may have been applied.
        ProposeError::Unconfirmed(_) => Status::deadline_exceeded(e.to_string()),
    }
}

pub fn store(e: StoreError) -> Status {
    tracing::error!("{e}");
    Status::internal(e.to_string())
}

pub fn timeout(what: &str) -> Status {
    Status::deadline_exceeded(format!("{what} did not complete in time (is a quorum of nodes up?)"))
}
