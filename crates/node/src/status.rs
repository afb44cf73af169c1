//! The one place errors become `tonic::Status`, with explicit codes.

use blixard_consensus::ProposeError;
use blixard_core::{CommandError, StoreError, ValidationError};
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
    bounded(code, e.to_string())
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

/// The longest message a `Status` carries, in bytes. A message travels in an HTTP/2 header,
/// which the other end limits (a too-long one is a protocol error, not an answer); a message
/// built from input is bounded here so that it always arrives.
pub const MAX_MESSAGE: usize = 2048;

/// A `Status` whose message is cut to [`MAX_MESSAGE`] bytes (on a character boundary, marked by
/// `…`). Every message built from input goes through here.
pub fn bounded(code: Code, message: impl Into<String>) -> Status {
    let mut m: String = message.into();
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - '…'.len_utf8();
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    Status::new(code, m)
}

/// Bad input: the field and the rule.
pub fn invalid(e: ValidationError) -> Status {
    bounded(Code::InvalidArgument, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_on_a_character_boundary() {
        assert_eq!(bounded(Code::NotFound, "short").message(), "short");
        let exact = "x".repeat(MAX_MESSAGE);
        assert_eq!(bounded(Code::Internal, exact.clone()).message(), exact);
        let long = "é".repeat(MAX_MESSAGE);
        let m = bounded(Code::InvalidArgument, long).message().to_string();
        assert!(m.len() <= MAX_MESSAGE && m.ends_with("é…"), "{} bytes", m.len());
        let e = invalid(ValidationError::new("name", "n".repeat(100_000)));
        assert_eq!((e.code(), e.message().len()), (Code::InvalidArgument, MAX_MESSAGE));
        assert!(e.message().starts_with("invalid name: nnn"));
    }
}
