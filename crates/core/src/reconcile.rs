//! What a node does about one VM assigned to it: a pure function of the desired state, what
//! the hypervisor shows, and the restart policy. The node's reconciler loop supplies the inputs,
//! carries out the action through its `VmDriver`, and reports what it then observes.

use crate::spec::{PowerState, RestartPolicy};

/// What the node's hypervisor shows for the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// No files and no process: never prepared here.
    Absent,
    Running,
    /// Not running. `on_its_own`: it ran and ended without anyone asking (guest power-off).
    Stopped {
        on_its_own: bool,
    },
    /// It ended in a way nobody asked for (killed, crashed, failed to start, unhealthy).
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Prepare (idempotent) and start.
    Start,
    Stop,
    /// Stop, then start: for `vm restart`.
    Restart,
}

/// Decides the next step for one VM.
pub fn decide(desired: PowerState, policy: RestartPolicy, seen: Seen, restart_requested: bool) -> Action {
    match (desired, seen) {
        (PowerState::Stopped, Seen::Running) => Action::Stop,
        (PowerState::Stopped, _) => Action::Nothing,
        (PowerState::Running, Seen::Running) if restart_requested => Action::Restart,
        (PowerState::Running, Seen::Running) => Action::Nothing,
        (PowerState::Running, Seen::Absent) | (PowerState::Running, Seen::Stopped { on_its_own: false }) => {
            Action::Start
        }
        (PowerState::Running, Seen::Stopped { on_its_own: true }) => match policy {
            RestartPolicy::Always => Action::Start,
            RestartPolicy::OnFailure | RestartPolicy::Never => Action::Nothing,
        },
        (PowerState::Running, Seen::Failed) => match policy {
            RestartPolicy::Never => Action::Nothing,
            RestartPolicy::OnFailure | RestartPolicy::Always => Action::Start,
        },
    }
}

/// Delay before the `n`th consecutive automatic restart (n ≥ 1): 1 s doubling to 32 s.
pub fn backoff_ms(n: u32) -> u64 {
    1000u64 << n.saturating_sub(1).min(5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use PowerState::{Running as Want, Stopped as Off};
    use RestartPolicy::{Always, Never, OnFailure};

    #[test]
    fn a_vm_wanted_running_is_started_when_absent_or_stopped_by_request() {
        for p in [Never, OnFailure, Always] {
            assert_eq!(decide(Want, p, Seen::Absent, false), Start);
            assert_eq!(decide(Want, p, Seen::Stopped { on_its_own: false }, false), Start);
            assert_eq!(decide(Want, p, Seen::Running, false), Nothing);
        }
    }

    #[test]
    fn a_vm_wanted_stopped_is_stopped_and_never_started() {
        for p in [Never, OnFailure, Always] {
            assert_eq!(decide(Off, p, Seen::Running, false), Stop);
            for s in [Seen::Absent, Seen::Failed, Seen::Stopped { on_its_own: true }] {
                assert_eq!(decide(Off, p, s, true), Nothing);
            }
        }
    }

    #[test]
    fn failures_restart_unless_the_policy_is_never() {
        assert_eq!(decide(Want, Never, Seen::Failed, false), Nothing);
        assert_eq!(decide(Want, OnFailure, Seen::Failed, false), Start);
        assert_eq!(decide(Want, Always, Seen::Failed, false), Start);
    }

    #[test]
    fn a_clean_guest_power_off_restarts_only_with_always() {
        let s = Seen::Stopped { on_its_own: true };
        assert_eq!(decide(Want, Never, s, false), Nothing);
        assert_eq!(decide(Want, OnFailure, s, false), Nothing);
        assert_eq!(decide(Want, Always, s, false), Start);
    }

    #[test]
    fn a_requested_restart_applies_to_a_running_vm() {
        assert_eq!(decide(Want, Never, Seen::Running, true), Restart);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!([1, 2, 3, 6, 7, 100].map(backoff_ms), [1000, 2000, 4000, 32000, 32000, 32000]);
    }
}
