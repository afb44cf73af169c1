//! Events of this node's own work, counted where they happen: the reconciler's actions, VM
//! boots, restarts and health checks, and task attempts. The reconciler and the task runner
//! hold an [`Arc<Work>`]; one made with [`Work::default`] counts into nothing anyone reads.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use blixard_core::AttemptResult;

use super::HistFamily;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskResultLabel {
    pub result: &'static str,
}

/// What the reconciler does to a VM (the `action` label).
pub const ACTIONS: [&str; 4] = ["start", "stop", "restart", "remove"];
/// Why a VM was restarted (the `reason` label): it stopped on its own (`exited`), its process
/// failed (`failed`), health checks failed (`unhealthy`), fencing killed it (`fenced`), or
/// `vm restart` asked (`requested`).
pub const REASONS: [&str; 5] = ["exited", "failed", "unhealthy", "fenced", "requested"];
/// How a task attempt ended (the `result` label).
pub const TASK_RESULTS: [&str; 8] =
    ["succeeded", "failed", "signaled", "timed_out", "cancelled", "lost", "oom", "start_failed"];

/// The `result` label of an attempt's end.
pub fn task_result(r: &AttemptResult) -> &'static str {
    match r {
        AttemptResult::Exited { code: 0 } => "succeeded",
        AttemptResult::Exited { .. } => "failed",
        AttemptResult::Signaled { .. } => "signaled",
        AttemptResult::TimedOut { .. } => "timed_out",
        AttemptResult::Cancelled { .. } => "cancelled",
        AttemptResult::Lost => "lost",
        AttemptResult::Oom => "oom",
        AttemptResult::StartFailed { .. } => "start_failed",
    }
}

fn ok(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "error"
    }
}

#[derive(Debug)]
pub struct Work {
    actions: Family<ActionLabel, Counter>,
    restarts: Family<ReasonLabel, Counter>,
    health_failures: Counter,
    boot: Histogram,
    task_attempts: HistFamily<TaskResultLabel>,
}

/// From 250 ms to ~4 min.
fn boot_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 11))
}

/// From 10 ms to ~3 h.
fn task_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 4.0, 11))
}

impl Default for Work {
    fn default() -> Self {
        let w = Work {
            actions: Family::default(),
            restarts: Family::default(),
            health_failures: Counter::default(),
            boot: boot_buckets(),
            task_attempts: Family::new_with_constructor(task_buckets),
        };
        // Every series exists from the start (alerts and dashboards need them before the event).
        for action in ACTIONS {
            for result in ["ok", "error"] {
                let _ = w.actions.get_or_create(&ActionLabel { action, result });
            }
        }
        for reason in REASONS {
            let _ = w.restarts.get_or_create(&ReasonLabel { reason });
        }
        for result in TASK_RESULTS {
            let _ = w.task_attempts.get_or_create(&TaskResultLabel { result });
        }
        w
    }
}

impl Work {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "blixard_reconciler_actions",
            "What this node's reconciler did to its VMs (start, stop, restart, remove), by result",
            self.actions.clone(),
        );
        r.register(
            "blixard_reconciler_restarts",
            "VM restarts this node made, by reason (exited, failed, unhealthy, fenced, requested)",
            self.restarts.clone(),
        );
        r.register(
            "blixard_vm_health_check_failures",
            "Failed health checks of the VMs this node runs",
            self.health_failures.clone(),
        );
        r.register_with_unit(
            "blixard_vm_boot_duration",
            "From a VM's start on this node to its guest's boot marker",
            Unit::Seconds,
            self.boot.clone(),
        );
        r.register_with_unit(
            "blixard_task_attempt_duration",
            "Task attempts this node ran, from start to end, by result",
            Unit::Seconds,
            self.task_attempts.clone(),
        );
    }

    /// The reconciler carried out `action` (one of [`ACTIONS`]).
    pub fn action(&self, action: &'static str, succeeded: bool) {
        self.actions.get_or_create(&ActionLabel { action, result: ok(succeeded) }).inc();
    }

    /// The reconciler restarts a VM for `reason` (one of [`REASONS`]).
    pub fn restart(&self, reason: &'static str) {
        self.restarts.get_or_create(&ReasonLabel { reason }).inc();
    }

    pub fn health_check_failed(&self) {
        self.health_failures.inc();
    }

    /// A VM this node started reached its boot marker `ms` after its process started.
    pub fn booted(&self, ms: u64) {
        self.boot.observe(ms as f64 / 1000.0);
    }

    /// A task attempt run here ended after `secs`.
    pub fn task_attempt(&self, result: &AttemptResult, secs: f64) {
        self.task_attempts.get_or_create(&TaskResultLabel { result: task_result(result) }).observe(secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_there_from_the_start_and_counts() {
        let w = Work::default();
        let mut r = Registry::default();
        w.register(&mut r);
        w.action("start", true);
        w.restart("unhealthy");
        w.health_check_failed();
        w.booted(1500);
        w.task_attempt(&AttemptResult::Exited { code: 0 }, 0.5);
        w.task_attempt(&AttemptResult::Exited { code: 3 }, 0.5);
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &r).unwrap();
        for want in [
            r#"blixard_reconciler_actions_total{action="start",result="ok"} 1"#,
            r#"blixard_reconciler_actions_total{action="remove",result="error"} 0"#,
            r#"blixard_reconciler_restarts_total{reason="unhealthy"} 1"#,
            r#"blixard_reconciler_restarts_total{reason="fenced"} 0"#,
            "blixard_vm_health_check_failures_total 1",
            "blixard_vm_boot_duration_seconds_sum 1.5",
            "blixard_vm_boot_duration_seconds_count 1",
            r#"blixard_task_attempt_duration_seconds_count{result="succeeded"} 1"#,
            r#"blixard_task_attempt_duration_seconds_count{result="failed"} 1"#,
            r#"blixard_task_attempt_duration_seconds_count{result="oom"} 0"#,
        ] {
            assert!(s.contains(want), "{want} in\n{s}");
        }
    }
}
