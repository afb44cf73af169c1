//! The one place errors become `tonic::Status`, with explicit codes.

use blixard_consensus::ProposeError;
use blixard_core::{CommandError, StoreError, ValidationError};
use blixard_proto::rpc;
use blixard_proto::v1::error_detail::Reason;
use tonic::{Code, Status};

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
    let msg = cap(e.to_string());
    match e {
        CommandError::Invalid(_) => Status::invalid_argument(msg),
        CommandError::AlreadyExists(_) => Status::already_exists(msg),
        CommandError::NotFound(_) => Status::not_found(msg),
        CommandError::FailedPrecondition(_) => Status::failed_precondition(msg),
        CommandError::SessionExpired => rpc::status(Code::FailedPrecondition, msg, Reason::SessionExpired, None),
        CommandError::Exhausted(_) => rpc::status(Code::ResourceExhausted, msg, Reason::Exhausted, None),
    }
}

/// A driver error as a status; `leader` is the leader and its address when known.
pub fn propose(e: ProposeError, leader: Option<(u64, String)>) -> Status {
    let msg = match (&e, &leader) {
        (ProposeError::Unavailable { .. }, Some((id, addr))) => {
            format!("{e} (the leader is node {id} at {addr}); retry")
        }
        (ProposeError::Unavailable { .. }, None) => format!("{e}; retry shortly"),
        _ => e.to_string(),
    };
    match e {
        ProposeError::Unavailable { .. } | ProposeError::Stopped => {
            rpc::status(Code::Unavailable, msg, Reason::NotApplied, leader)
        }
        // Not plain Unavailable: a client must retry this only with the same session.
        ProposeError::Unknown(_) => rpc::status(Code::DeadlineExceeded, msg, Reason::OutcomeUnknown, leader),
        ProposeError::Exhausted(_) => rpc::status(Code::ResourceExhausted, msg, Reason::Exhausted, None),
    }
}

pub fn store(e: StoreError) -> Status {
    tracing::error!("{e}");
    Status::internal(e.to_string())
}

/// A write that did not complete in time: its outcome is unknown.
pub fn write_timeout() -> Status {
    rpc::status(
        Code::DeadlineExceeded,
        "the write did not complete in time (is a quorum of nodes up?); its outcome is unknown",
        Reason::OutcomeUnknown,
        None,
    )
}

/// A read that did not complete in time (reads are always safe to retry).
pub fn read_timeout() -> Status {
    rpc::status(
        Code::Unavailable,
        "the read did not complete in time (is a quorum of nodes up?)",
        Reason::NotApplied,
        None,
    )
}

/// The longest message a `Status` carries, in bytes. A message travels in an HTTP/2 header,
/// which the other end limits (a too-long one is a protocol error, not an answer); a message
/// built from input is bounded here so that it always arrives.
pub const MAX_MESSAGE: usize = 2048;

/// `message` cut to [`MAX_MESSAGE`] bytes (on a character boundary, marked by `…`). Every
/// status message built from input goes through here.
pub fn cap(message: impl Into<String>) -> String {
    let mut m: String = message.into();
    if m.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - '…'.len_utf8();
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

/// A `Status` with its message capped (see [`cap`]).
pub fn bounded(code: Code, message: impl Into<String>) -> Status {
    Status::new(code, cap(message))
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
