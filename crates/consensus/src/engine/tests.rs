//! The engine, input by input: each test feeds events and asserts the exact effects.

use blixard_core::{Applied, Response, SessionKey};

use super::*;

fn key(seq: u64) -> SessionKey {
    SessionKey { client: 7, seq }
}

fn p(seq: u64) -> Proposal {
    Proposal { data: vec![seq as u8], conf: None }
}

fn done(index: u64) -> Applied {
    Applied { index, outcome: Ok(Response::Done), duplicate: false }
}

fn engine() -> Engine {
    Engine::new(EngineConfig { retry_ms: 1_000, max_pending: 3 }, 0)
}

#[test]
fn a_write_is_proposed_at_the_end_of_the_turn_and_answered_with_its_outcome() {
    let mut e = engine();
    e.on_leader(0, Some(1), 1);
    e.submit(10, key(1), p(1), 5_000);
    e.submit(11, key(2), p(2), 5_000);
    assert_eq!(e.take_effects(), vec![]);
    e.flush(0);
    assert_eq!(e.take_effects(), vec![Effect::Propose(vec![p(1), p(2)])]);
    e.on_applied(key(2), &done(8));
    e.on_applied(key(9), &done(9)); // someone else's
    assert_eq!(e.take_effects(), vec![Effect::Write(11, Ok(done(8)))]);
    assert_eq!(e.pending_writes(), 1);
}

#[test]
fn writes_wait_for_a_leader_and_go_to_it_when_it_appears() {
    let mut e = engine();
    e.submit(10, key(1), p(1), 5_000);
    e.flush(0);
    e.tick(100);
    assert_eq!(e.take_effects(), vec![], "no leader: nothing to propose to");
    e.on_leader(200, Some(2), 3);
    assert_eq!(e.take_effects(), vec![Effect::Propose(vec![p(1)])]);
}

#[test]
fn a_new_leader_gets_every_waiting_write_again() {
    // A follower forwarded writes to a leader that then died: they may be lost.
    let mut e = engine();
    e.on_leader(0, Some(1), 1);
    e.submit(10, key(1), p(1), 5_000);
    e.submit(11, key(2), p(2), 5_000);
    e.flush(0);
    e.take_effects();
    e.on_leader(250, None, 2);
    assert_eq!(e.take_effects(), vec![], "an election is under way");
    e.on_leader(260, Some(3), 2);
    assert_eq!(e.take_effects(), vec![Effect::Propose(vec![p(1), p(2)])]);
    e.on_leader(300, Some(3), 2);
    assert_eq!(e.take_effects(), vec![], "the same leader again changes nothing");
}

#[test]
fn a_write_not_applied_in_time_is_proposed_again_then_answered_unknown_at_its_deadline() {
    let mut e = engine();
    e.on_leader(0, Some(1), 1);
    e.submit(10, key(1), p(1), 2_500);
    e.flush(0);
    e.take_effects();
    e.tick(999);
    assert_eq!(e.take_effects(), vec![]);
    e.tick(1_000);
    assert_eq!(e.take_effects(), vec![Effect::Propose(vec![p(1)])]);
    e.tick(2_500);
    assert_eq!(
        e.take_effects(),
        vec![Effect::Write(10, Err(ProposeError::Unknown("not seen applied before the deadline".into())))]
    );
    assert_eq!(e.pending_writes(), 0);
}

#[test]
fn a_write_never_proposed_is_answered_not_applied_at_its_deadline() {
    let mut e = engine();
    e.submit(10, key(1), p(1), 1_000);
    e.flush(0);
    e.tick(1_000);
    assert_eq!(e.take_effects(), vec![Effect::Write(10, Err(ProposeError::Unavailable { leader_id: None }))]);
}

#[test]
fn a_retry_of_a_waiting_write_joins_it() {
    let mut e = engine();
    e.on_leader(0, Some(1), 1);
    e.submit(10, key(1), p(1), 1_000);
    e.flush(0);
    e.submit(11, key(1), p(1), 9_000);
    e.flush(10);
    assert_eq!(e.take_effects(), vec![Effect::Propose(vec![p(1)])], "proposed once");
    e.tick(1_500);
    e.take_effects();
    e.on_applied(key(1), &done(4));
    assert_eq!(e.take_effects(), vec![Effect::Write(10, Ok(done(4))), Effect::Write(11, Ok(done(4)))]);
}

#[test]
fn after_a_snapshot_writes_it_holds_are_answered_and_the_others_proposed_again() {
    let mut e = engine();
    e.on_leader(0, Some(1), 1);
    e.submit(10, key(1), p(1), 5_000);
    e.submit(11, key(2), p(2), 5_000);
    e.flush(0);
    e.take_effects();
    let dup = Applied { index: 3, outcome: Ok(Response::Done), duplicate: true };
    let d = dup.clone();
    e.on_snapshot(100, move |k| (k == key(1)).then(|| d.clone()));
    assert_eq!(e.take_effects(), vec![Effect::Write(10, Ok(dup)), Effect::Propose(vec![p(2)])]);
}

#[test]
fn too_many_waiting_writes_are_refused_at_once() {
    let mut e = engine();
    for s in 1..=3 {
        e.submit(s, key(s), p(s), 5_000);
    }
    e.submit(4, key(4), p(4), 5_000);
    assert!(matches!(e.take_effects()[..], [Effect::Write(4, Err(ProposeError::Exhausted(_)))]));
}

#[test]
fn reads_of_one_turn_share_a_read_index_and_are_answered_once_it_is_applied() {
    let mut e = engine();
    e.on_leader(0, Some(1), 1);
    e.read(20, 5_000);
    e.read(21, 5_000);
    e.flush(0);
    assert_eq!(e.take_effects(), vec![Effect::ReadIndex(1)]);
    e.on_read_state(1, 40);
    e.on_applied_index(39);
    assert_eq!(e.take_effects(), vec![]);
    e.on_applied_index(40);
    assert_eq!(e.take_effects(), vec![Effect::Read(20, Ok(40)), Effect::Read(21, Ok(40))]);
}

#[test]
fn reads_asked_of_a_lost_leader_are_asked_of_the_next() {
    let mut e = engine();
    e.on_leader(0, Some(1), 1);
    e.read(20, 5_000);
    e.flush(0);
    e.take_effects();
    e.on_leader(10, None, 2);
    e.read(21, 5_000);
    e.flush(20);
    assert_eq!(e.take_effects(), vec![], "no leader to ask");
    e.on_leader(30, Some(2), 2);
    assert_eq!(e.take_effects(), vec![Effect::ReadIndex(2)]);
    e.on_read_state(1, 7); // the old request's late answer is ignored
    e.on_read_state(2, 9);
    e.on_applied_index(9);
    assert_eq!(e.take_effects(), vec![Effect::Read(20, Ok(9)), Effect::Read(21, Ok(9))]);
    e.read(22, 100);
    e.tick(100);
    assert_eq!(e.take_effects(), vec![Effect::Read(22, Err(ProposeError::Unavailable { leader_id: Some(2) }))]);
}

#[test]
fn stopping_answers_everyone_truthfully() {
    let mut e = engine();
    e.submit(10, key(1), p(1), 5_000);
    e.flush(0);
    e.on_leader(1, Some(1), 1);
    e.submit(11, key(2), p(2), 5_000);
    e.read(20, 5_000);
    e.take_effects();
    e.stop();
    assert_eq!(
        e.take_effects(),
        vec![
            Effect::Write(10, Err(ProposeError::Unknown("the node is shutting down".into()))),
            Effect::Write(11, Err(ProposeError::Stopped)),
            Effect::Read(20, Err(ProposeError::Stopped)),
        ]
    );
}
