//! What travels beside the messages: the client session of a write (gRPC metadata) and typed
//! error details, so neither side ever interprets message text.
//!
//! Session header: `x-blixard-session: <client, 32 hex digits>.<seq>.<first unanswered seq>`.

use blixard_core::Session;
use prost::Message as _;
use tonic::{Code, Status};

use crate::v1::error_detail::Reason;
use crate::v1::ErrorDetail;

pub const SESSION_HEADER: &str = "x-blixard-session";

pub fn encode_session(s: &Session) -> String {
    format!("{:032x}.{}.{}", s.client, s.seq, s.first_unanswered)
}

/// Parses a session header; the error names the rule.
pub fn decode_session(v: &str) -> Result<Session, String> {
    let rule = || {
        format!(
            "invalid {SESSION_HEADER}: must be CLIENT.SEQ.FIRST_UNANSWERED (32 hex digits, then two positive integers)"
        )
    };
    let mut parts = v.split('.');
    let (Some(c), Some(q), Some(f), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(rule());
    };
    if c.len() != 32 {
        return Err(rule());
    }
    let client = u128::from_str_radix(c, 16).map_err(|_| rule())?;
    let seq: u64 = q.parse().map_err(|_| rule())?;
    let first_unanswered: u64 = f.parse().map_err(|_| rule())?;
    if seq == 0 || first_unanswered == 0 || first_unanswered > seq {
        return Err(rule());
    }
    Ok(Session { client, seq, first_unanswered })
}

/// The session a request carries, if any.
pub fn session_of(meta: &tonic::metadata::MetadataMap) -> Result<Option<Session>, Status> {
    match meta.get(SESSION_HEADER) {
        None => Ok(None),
        Some(v) => {
            let s = v.to_str().map_err(|_| Status::invalid_argument(format!("invalid {SESSION_HEADER}: not ASCII")))?;
            decode_session(s).map(Some).map_err(Status::invalid_argument)
        }
    }
}

/// Attaches `s` to a request.
pub fn set_session(meta: &mut tonic::metadata::MetadataMap, s: &Session) {
    if let Ok(v) = encode_session(s).parse() {
        meta.insert(SESSION_HEADER, v);
    }
}

/// A status with a typed reason (and the leader, when known).
pub fn status(code: Code, message: impl Into<String>, reason: Reason, leader: Option<(u64, String)>) -> Status {
    let (leader_id, leader_addr) = leader.unwrap_or_default();
    let d = ErrorDetail { reason: reason as i32, leader_id, leader_addr };
    Status::with_details(code, message, d.encode_to_vec().into())
}

/// The typed reason of an error status, if it has one.
pub fn reason(s: &Status) -> Option<Reason> {
    ErrorDetail::decode(s.details())
        .ok()
        .and_then(|d| Reason::try_from(d.reason).ok())
        .filter(|r| *r != Reason::Unspecified)
}

/// The leader an error status names, if any.
pub fn leader(s: &Status) -> Option<(u64, String)> {
    ErrorDetail::decode(s.details()).ok().filter(|d| d.leader_id != 0).map(|d| (d.leader_id, d.leader_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_round_trip_and_junk_is_refused_with_the_rule() {
        let s = Session { client: 0xabc, seq: 7, first_unanswered: 5 };
        assert_eq!(decode_session(&encode_session(&s)), Ok(s));
        for bad in
            ["", "x.1.1", "00000000000000000000000000000abc.0.0", "00000000000000000000000000000abc.3.4", "a.b.c.d"]
        {
            assert!(decode_session(bad).unwrap_err().contains("CLIENT.SEQ"), "{bad}");
        }
    }

    #[test]
    fn reasons_round_trip_through_a_status() {
        let st = status(Code::Unavailable, "no leader", Reason::NotApplied, Some((3, "h:1".into())));
        assert_eq!(reason(&st), Some(Reason::NotApplied));
        assert_eq!(leader(&st), Some((3, "h:1".into())));
        assert_eq!(reason(&Status::unavailable("plain")), None);
    }
}
