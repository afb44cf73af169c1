//! What a violation shows: the window of the history where every linearization breaks, not
//! the whole history.
//!
//! The window is taken at the end of the longest partial linearization the search found: its
//! last few operations (with the state after each), then the operations that could have gone
//! next — every one left whose invoke precedes the earliest completion among those left — each
//! with what the model would have answered there (of the unknown ones, only the few latest
//! that would change the state: a long run has many pending, and they are rarely the story). That earliest-completing operation is the
//! deadline: it had to take effect by then, and no order of the candidates allows it.

use std::fmt;

use crate::history::{History, Operation};
use crate::model::Model;
use crate::search::SearchOp;

/// How many operations of the longest linearization a violation keeps.
const TAIL: usize = 8;
/// How many required candidates a violation keeps; the rest are counted.
const CANDIDATES: usize = 12;
/// How many unknown candidates (those that would change the state) a violation keeps.
const UNKNOWN_CANDIDATES: usize = 3;

/// An operation and its place in the history (0-based; printed as `#index+1`).
pub struct OpRef<M: Model> {
    pub index: usize,
    pub op: Operation<M::Input, M::Output>,
}

/// One operation of a partial linearization and the state after it.
pub struct Step<M: Model> {
    pub op: OpRef<M>,
    pub state: M::State,
}

/// An operation that could have been linearized next at the point the search got stuck.
pub struct Candidate<M: Model> {
    pub op: OpRef<M>,
    /// What the model answers there.
    pub model_output: M::Output,
    /// Whether that answer is the recorded one (always, for an unknown operation); a candidate
    /// that fits is one after which nothing else fits.
    pub fits: bool,
}

/// A partition with no linearization.
pub struct Violation<M: Model> {
    pub partition: M::Partition,
    /// The partition's operations (failed ones dropped).
    pub operations: usize,
    /// Length of the longest partial linearization found.
    pub linearized: usize,
    /// Its last operations, in linearization order.
    pub tail: Vec<Step<M>>,
    /// The state after it.
    pub state: M::State,
    /// The earliest-completing operation not linearized: it had to take effect by its
    /// completion. `None` only if nothing was left, which a violation never has.
    pub deadline: Option<OpRef<M>>,
    /// The operations that could have gone next: the required ones by invoke time, then the
    /// latest invoked unknown ones that would change the state (an unknown operation that
    /// would not cannot matter).
    pub candidates: Vec<Candidate<M>>,
    /// Candidates left out of `candidates`.
    pub more_candidates: usize,
}

impl<M: Model> Violation<M> {
    /// `indices` maps the partition's operations (`ops`) to the history; `longest` is the
    /// longest partial linearization, as positions in `ops`.
    pub(crate) fn new(
        model: &M,
        partition: M::Partition,
        history: &History<M>,
        indices: &[usize],
        ops: &[SearchOp<'_, M>],
        longest: &[usize],
    ) -> Self {
        // The recorded inputs, not the simplified ones the search used: the outputs cannot
        // tell them apart, and these are the ones the reader knows.
        let input = |i: usize| &history.ops()[indices[i]].input;
        let op_ref = |i: usize| OpRef { index: indices[i], op: history.ops()[indices[i]].clone() };
        // Unknown operations at its end explain nothing (the search tried them last, after
        // every required operation had failed there).
        let end = longest.iter().rposition(|&i| ops[i].output.is_some()).map_or(0, |last| last + 1);
        let longest = &longest[..end];
        let mut state = model.init();
        let mut tail = Vec::new();
        for (n, &i) in longest.iter().enumerate() {
            state = model.step(&state, input(i)).0;
            if n + TAIL >= longest.len() {
                tail.push(Step { op: op_ref(i), state: state.clone() });
            }
        }
        let mut done = vec![false; ops.len()];
        for &i in longest {
            done[i] = true;
        }
        // The same order as the search's event list: by completion, then position.
        let deadline =
            (0..ops.len()).filter(|&i| !done[i] && ops[i].output.is_some()).min_by_key(|&i| (ops[i].complete, i));
        let cutoff = deadline.map_or(u64::MAX, |i| ops[i].complete);
        // Required candidates first, by invoke. Of the unknown ones, only those that would
        // change the state could matter, and the latest invoked are the likeliest suspects.
        let mut required: Vec<usize> = Vec::new();
        let mut unknown: Vec<usize> = Vec::new();
        for i in (0..ops.len()).filter(|&i| !done[i] && ops[i].invoke <= cutoff) {
            if ops[i].output.is_some() {
                required.push(i);
            } else if model.step(&state, input(i)).0 != state {
                unknown.push(i);
            }
        }
        unknown.reverse();
        let shown_unknown = UNKNOWN_CANDIDATES.min(unknown.len());
        let shown_required = CANDIDATES.min(required.len());
        let more_candidates = required.len() + unknown.len() - shown_required - shown_unknown;
        let candidates = required[..shown_required]
            .iter()
            .chain(&unknown[..shown_unknown])
            .map(|&i| {
                let model_output = model.step(&state, input(i)).1;
                let fits = ops[i].output.is_none_or(|output| *output == model_output);
                Candidate { op: op_ref(i), model_output, fits }
            })
            .collect();
        Violation {
            partition,
            operations: ops.len(),
            linearized: longest.len(),
            tail,
            state,
            deadline: deadline.map(op_ref),
            candidates,
            more_candidates,
        }
    }
}

impl<M: Model> fmt::Display for OpRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{:<6} {}", self.index + 1, self.op)
    }
}

impl<M: Model> fmt::Display for Violation<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: no linearization of its {} operations", self.partition, self.operations)?;
        if self.linearized == 0 {
            writeln!(f, "  not even a first operation can be linearized")?;
        } else {
            writeln!(
                f,
                "  the longest partial linearization found has {} operations; its last {}, each with the state after it:",
                self.linearized,
                self.tail.len()
            )?;
            for step in &self.tail {
                writeln!(f, "    {}", step.op)?;
                writeln!(f, "            then {:?}", step.state)?;
            }
        }
        match &self.deadline {
            Some(deadline) => writeln!(
                f,
                "  in state {:?}, #{} (client {}) had to take effect by {}, but no operation that may go next leads there:",
                self.state,
                deadline.index + 1,
                deadline.op.client,
                deadline.op.complete.unwrap_or(u64::MAX)
            )?,
            None => writeln!(f, "  in state {:?}, these may go next:", self.state)?,
        }
        for candidate in &self.candidates {
            write!(f, "    {}", candidate.op)?;
            if candidate.fits {
                writeln!(f, "    (fits here, but every continuation fails)")?;
            } else {
                writeln!(f, "    (the model answers: {})", candidate.model_output)?;
            }
        }
        if self.more_candidates > 0 {
            writeln!(f, "    … and {} more that may go next", self.more_candidates)?;
        }
        Ok(())
    }
}

impl<M: Model> fmt::Debug for OpRef<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpRef").field("index", &self.index).field("op", &self.op).finish()
    }
}

impl<M: Model> fmt::Debug for Violation<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The readable form is the useful one, in `assert!` messages too.
        fmt::Display::fmt(self, f)
    }
}
