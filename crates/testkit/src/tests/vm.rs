//! Hand-made VM-by-name histories.

use super::*;
use crate::VmName;
use VmOutput::{AlreadyExists, Created, Deleted, NotFound};

fn vm(name: &str) -> VmName {
    VmName(name.into())
}

#[test]
fn create_delete_create() {
    assert_linearizable(
        &VmModel,
        vec![
            destroy(1, "web", 0, 1, NotFound),
            create(1, "web", 2, 3, Created),
            create(2, "web", 4, 5, AlreadyExists),
            destroy(2, "web", 6, 7, Deleted),
            create(1, "web", 8, 9, Created),
        ],
    );
}

#[test]
fn two_concurrent_creates_cannot_both_succeed() {
    assert_violation(&VmModel, vec![create(1, "web", 0, 10, Created), create(2, "web", 5, 15, Created)], vm("web"));
}

#[test]
fn two_concurrent_creates_one_already_exists() {
    for (a, b) in [(Created, AlreadyExists), (AlreadyExists, Created)] {
        assert_linearizable(&VmModel, vec![create(1, "web", 0, 10, a), create(2, "web", 5, 15, b)]);
    }
}

#[test]
fn already_exists_before_any_create_is_a_violation() {
    assert_violation(
        &VmModel,
        vec![create(1, "web", 0, 10, AlreadyExists), create(2, "web", 20, 30, Created)],
        vm("web"),
    );
}

#[test]
fn an_unknown_create_explains_already_exists() {
    assert_linearizable(
        &VmModel,
        vec![
            Operation::unknown(1, VmInput::Create { name: "web".into() }, 0, Some(10)),
            create(2, "web", 20, 30, AlreadyExists),
            destroy(2, "web", 40, 50, Deleted),
        ],
    );
}

#[test]
fn a_delete_not_found_after_a_create_is_a_violation() {
    assert_violation(&VmModel, vec![create(1, "web", 0, 10, Created), destroy(2, "web", 20, 30, NotFound)], vm("web"));
}

#[test]
fn names_are_checked_apart() {
    assert_linearizable(
        &VmModel,
        vec![
            create(1, "web", 0, 10, Created),
            create(2, "db", 0, 10, Created),
            destroy(1, "web", 20, 30, Deleted),
            destroy(2, "db", 20, 30, Deleted),
        ],
    );
}
