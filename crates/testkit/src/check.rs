//! Checking a whole history: drop failed operations, split by partition, search each.

use std::collections::BTreeMap;
use std::fmt;

use crate::history::{History, HistoryError, OpResult};
use crate::model::Model;
use crate::report::Violation;
use crate::search::{search, SearchOp, SearchOutcome};

/// Bounds on the search, whose worst case is exponential in how many operations overlap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Give up on a partition after this many search steps (one step tries one operation).
    pub max_steps: Option<u64>,
}

/// The verdict on a history, with what was checked.
pub struct CheckReport<M: Model> {
    /// Operations checked (all but the failed ones).
    pub checked: usize,
    /// Failed operations, dropped before checking.
    pub dropped: usize,
    pub partitions: usize,
    /// Search steps over all partitions.
    pub steps: u64,
    /// One per partition that has no linearization, in partition order.
    pub violations: Vec<Violation<M>>,
    /// Partitions whose search hit [`Limits::max_steps`] without a verdict.
    pub gave_up: Vec<M::Partition>,
}

impl<M: Model> CheckReport<M> {
    /// True only when every partition was shown linearizable (none violated, none given up).
    pub fn is_linearizable(&self) -> bool {
        self.violations.is_empty() && self.gave_up.is_empty()
    }
}

/// Checks `history` against `model` with no limits.
pub fn check<M: Model>(model: &M, history: &History<M>) -> Result<CheckReport<M>, HistoryError> {
    check_with(model, history, Limits::default())
}

pub fn check_with<M: Model>(model: &M, history: &History<M>, limits: Limits) -> Result<CheckReport<M>, HistoryError> {
    history.validate(model)?;
    let mut partitions: BTreeMap<M::Partition, Vec<usize>> = BTreeMap::new();
    let mut dropped = 0;
    for (index, op) in history.ops().iter().enumerate() {
        if op.result == OpResult::Fail {
            dropped += 1;
        } else {
            partitions.entry(model.partition(&op.input)).or_default().push(index);
        }
    }
    let mut report = CheckReport {
        checked: history.len() - dropped,
        dropped,
        partitions: partitions.len(),
        steps: 0,
        violations: Vec::new(),
        gave_up: Vec::new(),
    };
    for (partition, mut indices) in partitions {
        // The search wants invoke order; a script may have written lines as operations ended.
        indices.sort_by_key(|&index| (history.ops()[index].invoke, index));
        let partition_ops: Vec<_> = indices.iter().map(|&index| &history.ops()[index]).collect();
        let mut inputs: Vec<M::Input> = partition_ops.iter().map(|op| op.input.clone()).collect();
        let outputs: Vec<Option<&M::Output>> = partition_ops.iter().map(|op| op.output()).collect();
        model.simplify(&mut inputs, &outputs);
        let ops: Vec<SearchOp<'_, M>> = partition_ops
            .iter()
            .zip(&inputs)
            .zip(&outputs)
            .map(|((op, input), &output)| SearchOp {
                input,
                output,
                invoke: op.invoke,
                complete: match output {
                    // Validated: an ok operation has a completion.
                    Some(_) => op.complete.unwrap_or(u64::MAX),
                    None => u64::MAX,
                },
            })
            .collect();
        match search(model, &ops, limits.max_steps) {
            SearchOutcome::Linearizable { steps } => report.steps += steps,
            SearchOutcome::GaveUp { steps } => {
                report.steps += steps;
                report.gave_up.push(partition);
            }
            SearchOutcome::Violation { steps, longest } => {
                report.steps += steps;
                report.violations.push(Violation::new(model, partition, history, &indices, &ops, &longest));
            }
        }
    }
    Ok(report)
}

/// How many violations a report prints in full; each is a window, but a run with a broken
/// invariant can violate in every partition.
const PRINTED_VIOLATIONS: usize = 3;

impl<M: Model> fmt::Display for CheckReport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let checked = format!(
            "{} operations in {} partitions ({} failed operations dropped)",
            self.checked, self.partitions, self.dropped
        );
        if self.is_linearizable() {
            return write!(f, "linearizable: {checked}");
        }
        if self.violations.is_empty() {
            write!(f, "inconclusive: {checked}")?;
        } else {
            write!(
                f,
                "NOT linearizable: {} of {} partitions have no linearization; {checked}",
                self.violations.len(),
                self.partitions
            )?;
        }
        for violation in self.violations.iter().take(PRINTED_VIOLATIONS) {
            write!(f, "\n\n{violation}")?;
        }
        if self.violations.len() > PRINTED_VIOLATIONS {
            let more = self.violations[PRINTED_VIOLATIONS..].iter().map(|violation| &violation.partition);
            write!(f, "\n\nalso not linearizable: {}", list(more))?;
        }
        if !self.gave_up.is_empty() {
            write!(f, "\n\ngave up (step limit reached) on: {}", list(self.gave_up.iter()))?;
        }
        Ok(())
    }
}

/// How many partitions a list in a report names.
const LISTED_PARTITIONS: usize = 20;

fn list<'a, P: fmt::Display + 'a>(partitions: impl ExactSizeIterator<Item = &'a P>) -> String {
    let total = partitions.len();
    let mut names: Vec<String> = partitions.take(LISTED_PARTITIONS).map(ToString::to_string).collect();
    if total > LISTED_PARTITIONS {
        names.push(format!("and {} more", total - LISTED_PARTITIONS));
    }
    names.join(", ")
}

impl<M: Model> fmt::Debug for CheckReport<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckReport")
            .field("checked", &self.checked)
            .field("dropped", &self.dropped)
            .field("partitions", &self.partitions)
            .field("steps", &self.steps)
            .field("violations", &self.violations)
            .field("gave_up", &self.gave_up)
            .finish()
    }
}
