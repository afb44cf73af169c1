//! What clients saw: each operation's input, when it was invoked, when (and how) it completed.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Model;

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpResult<O> {
    /// It took effect once, between invoke and complete, and returned this.
    Ok(O),
    /// It is known not to have taken effect (refused before it was proposed, say). The checker
    /// drops it: it can neither help nor hurt.
    Fail,
    /// It may or may not have taken effect, at any time after its invoke (a timeout, a lost
    /// connection, a client killed mid-request).
    Unknown,
}

/// One client operation. Times are in whatever unit the recorder's clock uses (ticks, ns), from
/// one clock for the whole history: only their order matters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation<I, O> {
    /// The client (process) that issued it; each client runs one operation at a time.
    pub client: u64,
    pub invoke: u64,
    /// When the client saw the result. Required for `Ok`; for `Unknown` only informative (the
    /// checker treats an unknown operation as never completing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete: Option<u64>,
    #[serde(rename = "op")]
    pub input: I,
    pub result: OpResult<O>,
}

impl<I, O> Operation<I, O> {
    pub fn ok(client: u64, input: I, invoke: u64, complete: u64, output: O) -> Self {
        Operation { client, invoke, complete: Some(complete), input, result: OpResult::Ok(output) }
    }

    pub fn fail(client: u64, input: I, invoke: u64, complete: u64) -> Self {
        Operation { client, invoke, complete: Some(complete), input, result: OpResult::Fail }
    }

    /// An operation whose outcome the client never learned; `complete`, when known, is when it
    /// gave up.
    pub fn unknown(client: u64, input: I, invoke: u64, complete: Option<u64>) -> Self {
        Operation { client, invoke, complete, input, result: OpResult::Unknown }
    }

    /// The output the checker must match, or `None` when any output (or no effect) will do.
    pub fn output(&self) -> Option<&O> {
        match &self.result {
            OpResult::Ok(output) => Some(output),
            OpResult::Fail | OpResult::Unknown => None,
        }
    }
}

impl<I: fmt::Display, O: fmt::Display> fmt::Display for Operation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {:<3} {:>6} ..", self.client, self.invoke)?;
        match (&self.result, self.complete) {
            (OpResult::Unknown, _) | (_, None) => write!(f, " {:<6}", "?")?,
            (_, Some(complete)) => write!(f, " {complete:<6}")?,
        }
        write!(f, "  {} -> ", self.input)?;
        match (&self.result, self.complete) {
            (OpResult::Ok(output), _) => write!(f, "{output}"),
            (OpResult::Fail, _) => f.write_str("failed"),
            (OpResult::Unknown, Some(at)) => write!(f, "unknown (gave up at {at})"),
            (OpResult::Unknown, None) => f.write_str("unknown"),
        }
    }
}

/// A recorded history: operations in any order (the checker orders them by time). An
/// operation's number in reports is its position here, from 1 (its line in a JSON-lines file).
pub struct History<M: Model> {
    ops: Vec<Operation<M::Input, M::Output>>,
}

impl<M: Model> History<M> {
    pub fn new() -> Self {
        History { ops: Vec::new() }
    }

    pub fn push(&mut self, op: Operation<M::Input, M::Output>) {
        self.ops.push(op);
    }

    pub fn ops(&self) -> &[Operation<M::Input, M::Output>] {
        &self.ops
    }

    pub(crate) fn op_mut(&mut self, index: usize) -> Option<&mut Operation<M::Input, M::Output>> {
        self.ops.get_mut(index)
    }

    pub fn into_ops(self) -> Vec<Operation<M::Input, M::Output>> {
        self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks what the checker relies on: every `Ok` operation has a completion no earlier than
    /// its invoke, and an output of the kind its input returns.
    pub fn validate(&self, model: &M) -> Result<(), HistoryError> {
        for (index, op) in self.ops.iter().enumerate() {
            let error = |field, rule| HistoryError { index, field, rule };
            match (&op.result, op.complete) {
                (OpResult::Ok(_), None) => return Err(error("complete", Rule::MissingComplete)),
                (_, Some(complete)) if complete < op.invoke => {
                    return Err(error("complete", Rule::CompleteBeforeInvoke { invoke: op.invoke, complete }))
                }
                _ => {}
            }
            if let OpResult::Ok(output) = &op.result {
                if !model.answers(&op.input, output) {
                    return Err(error(
                        "result",
                        Rule::WrongKind { input: op.input.to_string(), output: output.to_string() },
                    ));
                }
            }
        }
        Ok(())
    }
}

impl<M: Model> Default for History<M> {
    fn default() -> Self {
        History::new()
    }
}

impl<M: Model> Clone for History<M> {
    fn clone(&self) -> Self {
        History { ops: self.ops.clone() }
    }
}

impl<M: Model> fmt::Debug for History<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History").field("ops", &self.ops).finish()
    }
}

impl<M: Model> From<Vec<Operation<M::Input, M::Output>>> for History<M> {
    fn from(ops: Vec<Operation<M::Input, M::Output>>) -> Self {
        History { ops }
    }
}

impl<M: Model> FromIterator<Operation<M::Input, M::Output>> for History<M> {
    fn from_iter<T: IntoIterator<Item = Operation<M::Input, M::Output>>>(iter: T) -> Self {
        History { ops: iter.into_iter().collect() }
    }
}

/// A malformed history: which operation (0-based `index`; reports say `#index+1`, its line in
/// a JSON-lines file), which field, which rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("operation #{}: field `{field}`: {rule}", .index + 1)]
pub struct HistoryError {
    pub index: usize,
    pub field: &'static str,
    pub rule: Rule,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error("required when the result is ok")]
    MissingComplete,
    #[error("{complete} is earlier than invoke {invoke}")]
    CompleteBeforeInvoke { invoke: u64, complete: u64 },
    #[error("`{output}` is not an answer to `{input}`")]
    WrongKind { input: String, output: String },
}
