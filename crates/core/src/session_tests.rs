//! The session table: duplicates answered with the recorded outcome, expiry by cluster time,
//! bounds, and survival through a snapshot.

use super::*;
use crate::command::{Command, Envelope, Response};
use crate::state::{apply, export, import};
use crate::store::MemStore;
use crate::{Applied, Query, QueryResult};

fn s(client: u128, seq: u64, first_unanswered: u64) -> Session {
    Session { client, seq, first_unanswered }
}

fn put(key: &str, value: &str) -> Command {
    Command::KvPut { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec() }
}

fn del(key: &str) -> Command {
    Command::KvDelete { key: key.as_bytes().to_vec() }
}

fn at(store: &mut MemStore, index: u64, now_ms: u64, session: Session, command: Command) -> Applied {
    apply(store, index, &Envelope { session: Some(session), now_ms, command }).unwrap()
}

fn get(store: &MemStore, key: &str) -> Option<Vec<u8>> {
    match crate::state::query(store, &Query::KvGet { key: key.as_bytes().to_vec() }).unwrap() {
        QueryResult::Value(v) => v,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_duplicate_is_answered_with_the_recorded_outcome_and_not_applied_again() {
    let mut st = MemStore::default();
    at(&mut st, 1, 1_000, s(7, 1, 1), put("k", "v"));
    let first = at(&mut st, 2, 1_000, s(7, 2, 1), del("k"));
    assert_eq!(first, Applied { index: 2, outcome: Ok(Response::Deleted { existed: true }), duplicate: false });
    // Someone else writes the key again; then the delete arrives a second time (a retry, or a
    // re-forwarded proposal): it must not delete it, and must answer what the first one did.
    at(&mut st, 3, 1_000, s(8, 1, 1), put("k", "again"));
    let dup = at(&mut st, 4, 1_000, s(7, 2, 1), del("k"));
    assert_eq!(dup, Applied { index: 2, outcome: Ok(Response::Deleted { existed: true }), duplicate: true });
    assert_eq!(get(&st, "k").as_deref(), Some(&b"again"[..]));
}

#[test]
fn outcomes_the_client_has_seen_are_forgotten_and_a_late_copy_is_refused() {
    let mut st = MemStore::default();
    at(&mut st, 1, 1_000, s(7, 1, 1), put("a", "1"));
    // The client saw the answer to 1 and now sends 2.
    at(&mut st, 2, 1_000, s(7, 2, 2), put("b", "2"));
    assert_eq!(lookup(&st, SessionKey { client: 7, seq: 1 }).unwrap(), None);
    assert!(lookup(&st, SessionKey { client: 7, seq: 2 }).unwrap().is_some());
    at(&mut st, 3, 1_000, s(8, 1, 1), put("a", "other"));
    let late = at(&mut st, 4, 1_000, s(7, 1, 1), put("a", "1"));
    assert!(matches!(late.outcome, Err(CommandError::FailedPrecondition(ref m)) if m.contains("already answered")));
    assert_eq!(get(&st, "a").as_deref(), Some(&b"other"[..]), "the late copy changed nothing");
}

#[test]
fn a_command_of_an_unknown_session_that_has_seen_answers_is_refused_as_expired() {
    let mut st = MemStore::default();
    let r = at(&mut st, 1, 1_000, s(9, 5, 5), put("k", "v"));
    assert_eq!(r.outcome, Err(CommandError::SessionExpired));
    assert_eq!(get(&st, "k"), None);
    assert_eq!(count(&st).unwrap(), 0, "a refused command opens no session");
}

#[test]
fn idle_sessions_expire_by_cluster_time_and_then_their_retries_are_refused() {
    let mut st = MemStore::default();
    at(&mut st, 1, 1_000, s(1, 1, 1), put("a", "1"));
    at(&mut st, 2, 1_000, s(1, 2, 2), put("a", "2"));
    // Another client's commands move cluster time past the first one's time to live.
    at(&mut st, 3, 1_000 + SESSION_TTL_MS / 2, s(2, 1, 1), put("b", "1"));
    assert_eq!(count(&st).unwrap(), 2, "not idle long enough yet");
    at(&mut st, 4, 2_000 + SESSION_TTL_MS + TIME_BUCKET_MS, s(2, 2, 2), put("b", "2"));
    assert_eq!(count(&st).unwrap(), 1);
    assert_eq!(lookup(&st, SessionKey { client: 1, seq: 2 }).unwrap(), None);
    let retry = at(&mut st, 5, 3_000 + SESSION_TTL_MS, s(1, 2, 2), put("a", "2"));
    assert_eq!(retry.outcome, Err(CommandError::SessionExpired));
}

#[test]
fn cluster_time_never_goes_back() {
    let mut st = MemStore::default();
    assert_eq!(advance_clock(&mut st, 5_000).unwrap(), 5_000);
    assert_eq!(advance_clock(&mut st, 4_000).unwrap(), 5_000, "a proposer with a slower clock");
    assert_eq!(advance_clock(&mut st, 6_000).unwrap(), 6_000);
}

#[test]
fn a_session_keeps_a_bounded_number_of_unseen_outcomes() {
    let mut st = MemStore::default();
    for seq in 1..=MAX_OUTSTANDING as u64 {
        assert!(at(&mut st, seq, 1_000, s(3, seq, 1), put("k", "v")).outcome.is_ok());
    }
    let n = MAX_OUTSTANDING as u64 + 1;
    let over = at(&mut st, n, 1_000, s(3, n, 1), put("over", "v"));
    assert!(matches!(over.outcome, Err(CommandError::Exhausted(_))), "{over:?}");
    assert_eq!(get(&st, "over"), None);
    // Once the client has seen the first answers, it may go on.
    assert!(at(&mut st, n + 1, 1_000, s(3, n, 2), put("over", "v")).outcome.is_ok());
}

#[test]
fn a_full_table_evicts_only_sessions_idle_a_minute_else_refuses_new_ones() {
    let mut st = MemStore::default();
    for c in 0..MAX_SESSIONS as u128 {
        at(&mut st, 1, 1_000, s(1_000_000 + c, 1, 1), Command::Noop);
    }
    assert_eq!(count(&st).unwrap(), MAX_SESSIONS);
    let refused = at(&mut st, 2, 2_000, s(1, 1, 1), Command::Noop);
    assert!(matches!(refused.outcome, Err(CommandError::Exhausted(_))), "{refused:?}");
    let ok = at(&mut st, 3, 1_000 + MIN_IDLE_EVICT_MS, s(1, 1, 1), Command::Noop);
    assert_eq!(ok.outcome, Ok(Response::Done));
    assert_eq!(count(&st).unwrap(), MAX_SESSIONS);
    assert_eq!(lookup(&st, SessionKey { client: 1_000_000, seq: 1 }).unwrap(), None, "the oldest went");
}

#[test]
fn the_session_table_travels_in_snapshots() {
    let mut a = MemStore::default();
    at(&mut a, 1, 1_000, s(7, 1, 1), put("k", "v"));
    at(&mut a, 2, 1_000, s(7, 2, 1), del("k"));
    let mut b = MemStore::default();
    import(&mut b, &export(&a).unwrap()).unwrap();
    assert_eq!(b, a);
    let dup = at(&mut b, 3, 1_000, s(7, 2, 1), del("k"));
    assert_eq!(dup, Applied { index: 2, outcome: Ok(Response::Deleted { existed: true }), duplicate: true });
}

#[test]
fn a_client_session_reports_the_lowest_unanswered_sequence_number() {
    let mut c = ClientSession::new(42);
    let a = c.begin();
    let b = c.begin();
    assert_eq!((a.seq, a.first_unanswered, b.seq, b.first_unanswered), (1, 1, 2, 1));
    c.end(2);
    assert_eq!(c.begin().first_unanswered, 1, "1 is still out");
    c.end(1);
    c.end(3);
    let d = c.begin();
    assert_eq!((d.seq, d.first_unanswered), (4, 4));
}

#[test]
fn expired_sessions_are_swept_when_cluster_time_enters_a_new_second_and_only_then() {
    let mut st = MemStore::default();
    let n = SWEEP_PER_BUCKET as u128 + 10;
    for c in 0..n {
        at(&mut st, 1 + c as u64, 1_000, s(100 + c, 1, 1), put("k", "v"));
    }
    assert_eq!(count(&st).unwrap(), n as u64);
    // Long after their expiry, more commands within the second cluster time was already in
    // remove nothing; the first command of a new second removes up to SWEEP_PER_BUCKET.
    let later = 5_000 + SESSION_TTL_MS;
    let mut seq = 0;
    let mut next = |st: &mut MemStore, t: u64| {
        seq += 1;
        let a = at(st, 1_000 + seq, t, s(1, seq, seq), put("x", "y"));
        assert!(a.outcome.is_ok(), "{a:?}");
    };
    next(&mut st, later);
    assert_eq!(count(&st).unwrap(), n as u64 + 1 - SWEEP_PER_BUCKET as u64, "one sweep at the new second");
    next(&mut st, later + 10);
    next(&mut st, later + 900);
    assert_eq!(count(&st).unwrap(), n as u64 + 1 - SWEEP_PER_BUCKET as u64, "no sweep within the second");
    next(&mut st, later + 1_000);
    assert_eq!(count(&st).unwrap(), 1, "the rest at the next second; the active session stays");
}
