//! Membership rules as `apply` enforces them, for entries carrying configuration changes.

use super::*;
use crate::command::{Envelope, Outcome, Response};
use crate::state::{apply, begin, finish, run, Begun};
use crate::store::MemStore;

fn env(command: Command) -> Envelope {
    Envelope { session: None, now_ms: 1_000, command }
}

/// A configuration-change entry raft-rs accepts, applied as the driver does.
fn conf(store: &mut MemStore, index: u64, command: Command, change: MembershipChange) -> Outcome {
    let e = env(command);
    match begin(store, index, &e, Some(&change)).unwrap() {
        Begun::Done(a) => a.outcome,
        Begun::Go(p) => {
            let o = run(store, index, &e).unwrap();
            finish(store, index, &e, p, o).unwrap().outcome
        }
    }
}

fn add(id: NodeId, addr: &str) -> (Command, MembershipChange) {
    (Command::AddLearner { id, addr: addr.into() }, MembershipChange { kind: ChangeKind::AddLearner, id })
}

fn promote(id: NodeId) -> (Command, MembershipChange) {
    (Command::PromoteVoter { id }, MembershipChange { kind: ChangeKind::AddVoter, id })
}

fn remove(id: NodeId) -> (Command, MembershipChange) {
    (Command::RemoveMember { id }, MembershipChange { kind: ChangeKind::Remove, id })
}

/// Node 1 bootstrapped at 127.0.0.1:7001.
fn cluster() -> MemStore {
    let mut s = MemStore::default();
    let a = apply(&mut s, 1, &env(Command::Bootstrap { id: 1, addr: "127.0.0.1:7001".into() }));
    // A bootstrap is never replicated: only the bootstrap itself applies it, directly.
    assert!(a.unwrap().outcome.is_err());
    crate::state::run(&mut s, 1, &env(Command::Bootstrap { id: 1, addr: "127.0.0.1:7001".into() })).unwrap().unwrap();
    s
}

fn ok(o: Outcome) {
    assert!(o.is_ok(), "{o:?}");
}

#[test]
fn a_node_joins_as_a_learner_under_a_fresh_id_and_address() {
    let mut s = cluster();
    let (c, ch) = add(2, "127.0.0.1:7002");
    ok(conf(&mut s, 2, c, ch));
    assert_eq!(
        members(&s).unwrap(),
        vec![
            Member { id: 1, addr: "127.0.0.1:7001".into(), voter: true },
            Member { id: 2, addr: "127.0.0.1:7002".into(), voter: false },
        ]
    );
}

#[test]
fn the_second_of_two_concurrent_joins_is_refused_inside_apply() {
    let mut s = cluster();
    let (c, ch) = add(2, "127.0.0.1:7002");
    ok(conf(&mut s, 2, c.clone(), ch));
    // Both passed any check made before proposing; only the log order decides.
    assert_eq!(
        conf(&mut s, 3, c, ch),
        Err(CommandError::AlreadyExists("node id 2 is already a member at 127.0.0.1:7002".into()))
    );
    let (c, ch) = add(3, "127.0.0.1:7002");
    assert_eq!(
        conf(&mut s, 4, c, ch),
        Err(CommandError::AlreadyExists("address 127.0.0.1:7002 is already used by node 2".into()))
    );
}

#[test]
fn bad_ids_and_addresses_are_refused() {
    let mut s = cluster();
    let (c, ch) = add(0, "127.0.0.1:7009");
    assert!(matches!(conf(&mut s, 2, c, ch), Err(CommandError::Invalid(e)) if e.field == "node_id"));
    for bad in ["nohost", ":7000", "h:0", "h:99999"] {
        let (c, ch) = add(9, bad);
        assert!(matches!(conf(&mut s, 2, c, ch), Err(CommandError::Invalid(e)) if e.field == "addr"), "{bad}");
    }
    assert_eq!(members(&s).unwrap().len(), 1);
}

#[test]
fn only_a_learner_is_promoted() {
    let mut s = cluster();
    let (c, ch) = promote(1);
    assert!(matches!(conf(&mut s, 2, c, ch), Err(CommandError::FailedPrecondition(_))));
    let (c, ch) = add(2, "127.0.0.1:7002");
    ok(conf(&mut s, 3, c, ch));
    let (c, ch) = promote(2);
    ok(conf(&mut s, 4, c.clone(), ch));
    assert!(members(&s).unwrap().iter().all(|m| m.voter));
    // A repeated promotion (or join) must never turn the voter back into a learner.
    assert!(conf(&mut s, 5, c, ch).is_err());
}

#[test]
fn only_members_leave_and_never_the_last_voter() {
    let mut s = cluster();
    let (c, ch) = remove(1);
    assert_eq!(
        conf(&mut s, 2, c, ch),
        Err(CommandError::FailedPrecondition("node 1 is the last voter; it cannot leave".into()))
    );
    let (c, ch) = remove(5);
    assert_eq!(conf(&mut s, 3, c, ch), Err(CommandError::NotFound("node 5 is not a member".into())));
    let (c, ch) = add(2, "127.0.0.1:7002");
    ok(conf(&mut s, 4, c, ch));
    let node = crate::Registration { id: 2, vcpus: 4, memory_mib: 4096, ..Default::default() };
    ok(apply(&mut s, 5, &env(Command::NodeRegister { node })).unwrap().outcome);
    // A learner may leave; its capacity goes with it.
    let (c, ch) = remove(2);
    assert_eq!(conf(&mut s, 6, c, ch), Ok(Response::Deleted { existed: true }));
    assert!(crate::state::nodes(&s).unwrap().is_empty());
}

#[test]
fn a_change_that_does_not_match_its_command_is_refused() {
    let mut s = cluster();
    let (c, _) = add(2, "127.0.0.1:7002");
    let other = MembershipChange { kind: ChangeKind::AddLearner, id: 3 };
    assert!(matches!(conf(&mut s, 2, c, other), Err(CommandError::FailedPrecondition(_))));
    let kv = Command::KvPut { key: b"k".to_vec(), value: b"v".to_vec() };
    assert!(matches!(conf(&mut s, 3, kv, other), Err(CommandError::FailedPrecondition(_))));
    assert_eq!(members(&s).unwrap().len(), 1);
}
