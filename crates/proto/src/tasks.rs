//! Conversions for batch tasks between the wire and core.

use blixard_core::placement::Constraint;
use blixard_core::task::{Attempt, AttemptResult, Isolation, TaskRecord, TaskSpec};
use blixard_core::ValidationError;

use crate::v1;

impl TryFrom<v1::TaskSpec> for TaskSpec {
    type Error = ValidationError;

    /// Zero or empty fields take the defaults of [`TaskSpec::default`]; the result is validated.
    fn try_from(s: v1::TaskSpec) -> Result<Self, ValidationError> {
        let d = TaskSpec::default();
        if s.constraints.len() > blixard_core::placement::MAX_CONSTRAINTS {
            return Err(ValidationError::new("constraint", "too many constraints"));
        }
        let spec = TaskSpec {
            name: Some(s.name).filter(|n| !n.is_empty()),
            command: s.command,
            args: s.args,
            env: s.env.into_iter().collect(),
            vcpus: if s.vcpus == 0 { d.vcpus } else { s.vcpus },
            memory_mib: if s.memory_mib == 0 { d.memory_mib } else { s.memory_mib },
            constraints: s.constraints.iter().map(|c| Constraint::parse(c)).collect::<Result<_, _>>()?,
            timeout_ms: if s.timeout_ms == 0 { d.timeout_ms } else { s.timeout_ms },
            retries: s.retries,
            backoff_ms: if s.backoff_ms == 0 { d.backoff_ms } else { s.backoff_ms },
            backoff_cap_ms: if s.backoff_cap_ms == 0 { d.backoff_cap_ms.max(s.backoff_ms) } else { s.backoff_cap_ms },
            isolation: if s.isolation.is_empty() { Isolation::Process } else { Isolation::parse(&s.isolation)? },
            labels: s.labels.into_iter().collect(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl From<TaskSpec> for v1::TaskSpec {
    fn from(s: TaskSpec) -> Self {
        v1::TaskSpec {
            name: s.name.unwrap_or_default(),
            command: s.command,
            args: s.args,
            env: s.env.into_iter().collect(),
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            constraints: s.constraints.iter().map(ToString::to_string).collect(),
            timeout_ms: s.timeout_ms,
            retries: s.retries,
            backoff_ms: s.backoff_ms,
            backoff_cap_ms: s.backoff_cap_ms,
            isolation: s.isolation.as_str().into(),
            labels: s.labels.into_iter().collect(),
        }
    }
}

impl From<Attempt> for v1::TaskAttempt {
    fn from(a: Attempt) -> Self {
        let mut out = v1::TaskAttempt {
            number: a.number,
            id: a.id,
            node: a.node,
            assigned_ms: a.assigned_ms,
            not_before_ms: a.not_before_ms,
            started_ms: a.started_ms,
            ended_ms: a.ended_ms,
            result: a.result.as_ref().map_or("", |r| r.kind()).into(),
            stdout_tail: a.stdout_tail,
            stderr_tail: a.stderr_tail,
            enforcement: a.enforcement.map_or("", |e| e.as_str()).into(),
            ..Default::default()
        };
        match a.result {
            Some(AttemptResult::Exited { code }) => out.exit_code = code,
            Some(AttemptResult::Signaled { signal }) => out.signal = signal,
            Some(AttemptResult::TimedOut { killed } | AttemptResult::Cancelled { killed }) => out.killed = killed,
            Some(AttemptResult::StartFailed { error }) => out.error = error,
            _ => {}
        }
        out
    }
}

impl From<TaskRecord> for v1::Task {
    fn from(t: TaskRecord) -> Self {
        let exit_code = t.exit_code();
        v1::Task {
            id: t.id,
            spec: Some(t.spec.into()),
            submitted_ms: t.submitted_ms,
            state: t.state.as_str().into(),
            attempts: t.attempts.into_iter().map(Into::into).collect(),
            pending: t.pending.unwrap_or_default(),
            cancel_requested: t.cancel_requested,
            retries_used: t.retries_used,
            finished_ms: t.finished_ms,
            exit_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_zero_fields_and_bad_ones_are_named() {
        let s = TaskSpec::try_from(v1::TaskSpec { command: "echo".into(), ..Default::default() }).unwrap();
        assert_eq!((s.vcpus, s.memory_mib, s.isolation), (1, 128, Isolation::Process));
        let e =
            TaskSpec::try_from(v1::TaskSpec { command: "echo".into(), isolation: "x".into(), ..Default::default() });
        assert_eq!(e.unwrap_err().field, "isolation");
        let e = TaskSpec::try_from(v1::TaskSpec { command: "".into(), ..Default::default() });
        assert_eq!(e.unwrap_err().field, "command");
        let e = TaskSpec::try_from(v1::TaskSpec {
            command: "echo".into(),
            constraints: vec!["a ~ b".into()],
            ..Default::default()
        });
        assert_eq!(e.unwrap_err().field, "constraint");
    }
}
