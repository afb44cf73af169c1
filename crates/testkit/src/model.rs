//! Sequential specifications: what one operation does to the state of one partition when the
//! operations run one at a time.
//!
//! A model is deterministic (`step` returns the one output it allows), which is what lets the
//! checker give an `Unknown` operation "whatever the model says" instead of enumerating
//! outputs. A model whose real outputs have a nondeterministic part (a node chosen by the
//! scheduler, say) keeps that part out of its `Output` type.

use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Serialize};

/// A sequential specification, split into independent partitions (P-compositionality): an
/// operation reads and writes only the state of the partition its input names, so a history
/// is linearizable if and only if each partition's sub-history is.
pub trait Model {
    /// `Eq + Hash`: unknown operations with equal inputs are interchangeable to the search.
    type Input: Clone + Eq + Hash + fmt::Debug + fmt::Display;
    type Output: Clone + fmt::Debug + fmt::Display + PartialEq;
    /// The state of one partition. Hashed into the checker's cache, so keep it small.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// Names a partition in reports (a key, a VM name); `Ord` keeps reports in a stable order.
    type Partition: Clone + Ord + fmt::Debug + fmt::Display;

    fn partition(&self, input: &Self::Input) -> Self::Partition;

    /// The state every partition starts in.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`: the next state and the output a correct system returns.
    fn step(&self, state: &Self::State, input: &Self::Input) -> (Self::State, Self::Output);

    /// Whether `output` is of the kind `input` can return at all (a get answers with a value,
    /// not with "existed"). A history where it is not is malformed, not a violation.
    fn answers(&self, input: &Self::Input, output: &Self::Output) -> bool {
        let _ = (input, output);
        true
    }

    /// Rewrites one partition's inputs before the search into inputs that no recorded output
    /// can tell from the originals (`outputs[i]` is `inputs[i]`'s, `None` when unknown), so
    /// that configurations the outputs cannot distinguish become equal. The default changes
    /// nothing.
    ///
    /// Why it matters: the KV model gives every value that no get ever returned one
    /// placeholder. Otherwise each unknown put of a value never read is a different choice,
    /// and a delete that found the key could be explained by any of them: with twenty such
    /// puts, a million combinations to rule out before a violation can be reported.
    fn simplify(&self, inputs: &mut [Self::Input], outputs: &[Option<&Self::Output>]) {
        let _ = (inputs, outputs);
    }
}

/// A key-value store: per key, `Option<value>`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvModel;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KvInput {
    Put { key: String, value: String },
    Get { key: String },
    Delete { key: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KvOutput {
    /// A put's answer.
    Written,
    /// A get's answer: the value, or none when the key is absent.
    Value(Option<String>),
    /// A delete's answer: whether the key was there.
    Existed(bool),
}

/// A KV partition: one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub String);

/// What one KV operation does, borrowed from whichever input type carries it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum KvOp<'a> {
    Put(&'a str),
    Get,
    Delete,
}

/// The KV specification for one key, shared by [`KvModel`] and the cluster model.
pub(crate) fn kv_step(state: &Option<String>, op: KvOp<'_>) -> (Option<String>, KvOutput) {
    match op {
        KvOp::Put(value) => (Some(value.to_owned()), KvOutput::Written),
        KvOp::Get => (state.clone(), KvOutput::Value(state.clone())),
        KvOp::Delete => (None, KvOutput::Existed(state.is_some())),
    }
}

impl KvInput {
    pub fn key(&self) -> &str {
        match self {
            KvInput::Put { key, .. } | KvInput::Get { key } | KvInput::Delete { key } => key,
        }
    }

    pub(crate) fn op(&self) -> KvOp<'_> {
        match self {
            KvInput::Put { value, .. } => KvOp::Put(value),
            KvInput::Get { .. } => KvOp::Get,
            KvInput::Delete { .. } => KvOp::Delete,
        }
    }
}

pub(crate) fn kv_answers(op: KvOp<'_>, output: &KvOutput) -> bool {
    matches!(
        (op, output),
        (KvOp::Put(_), KvOutput::Written) | (KvOp::Get, KvOutput::Value(_)) | (KvOp::Delete, KvOutput::Existed(_))
    )
}

impl Model for KvModel {
    type Input = KvInput;
    type Output = KvOutput;
    type State = Option<String>;
    type Partition = Key;

    fn partition(&self, input: &KvInput) -> Key {
        Key(input.key().to_owned())
    }

    fn init(&self) -> Option<String> {
        None
    }

    fn step(&self, state: &Option<String>, input: &KvInput) -> (Option<String>, KvOutput) {
        kv_step(state, input.op())
    }

    fn answers(&self, input: &KvInput, output: &KvOutput) -> bool {
        kv_answers(input.op(), output)
    }

    fn simplify(&self, inputs: &mut [KvInput], outputs: &[Option<&KvOutput>]) {
        let read = read_values(outputs.iter().filter_map(|output| match output {
            Some(KvOutput::Value(Some(value))) => Some(value.as_str()),
            _ => None,
        }));
        for input in inputs {
            if let KvInput::Put { value, .. } = input {
                read.replace_unread(value);
            }
        }
    }
}

/// The values some get returned: the only ones a KV history can tell apart.
pub(crate) struct ReadValues {
    read: std::collections::HashSet<String>,
    placeholder: String,
}

pub(crate) fn read_values<'a>(values: impl Iterator<Item = &'a str>) -> ReadValues {
    let read: std::collections::HashSet<String> = values.map(str::to_owned).collect();
    let mut placeholder = String::from("(a value no get returned)");
    while read.contains(&placeholder) {
        placeholder.push('\'');
    }
    ReadValues { read, placeholder }
}

impl ReadValues {
    pub(crate) fn replace_unread(&self, value: &mut String) {
        if !self.read.contains(value.as_str()) {
            value.clone_from(&self.placeholder);
        }
    }
}

/// VMs by name: per name, whether a VM of that name exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmModel;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum VmInput {
    #[serde(rename = "vm_create")]
    Create { name: String },
    #[serde(rename = "vm_delete")]
    Delete { name: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmOutput {
    Created,
    AlreadyExists,
    Deleted,
    NotFound,
}

/// A VM partition: one name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VmName(pub String);

#[derive(Clone, Copy, Debug)]
pub(crate) enum VmOp {
    Create,
    Delete,
}

/// The VM-by-name specification for one name, shared by [`VmModel`] and the cluster model.
pub(crate) fn vm_step(exists: bool, op: VmOp) -> (bool, VmOutput) {
    match (op, exists) {
        (VmOp::Create, false) => (true, VmOutput::Created),
        (VmOp::Create, true) => (true, VmOutput::AlreadyExists),
        (VmOp::Delete, true) => (false, VmOutput::Deleted),
        (VmOp::Delete, false) => (false, VmOutput::NotFound),
    }
}

pub(crate) fn vm_answers(op: VmOp, output: VmOutput) -> bool {
    matches!(
        (op, output),
        (VmOp::Create, VmOutput::Created | VmOutput::AlreadyExists)
            | (VmOp::Delete, VmOutput::Deleted | VmOutput::NotFound)
    )
}

impl VmInput {
    pub fn name(&self) -> &str {
        match self {
            VmInput::Create { name } | VmInput::Delete { name } => name,
        }
    }

    pub(crate) fn op(&self) -> VmOp {
        match self {
            VmInput::Create { .. } => VmOp::Create,
            VmInput::Delete { .. } => VmOp::Delete,
        }
    }
}

impl Model for VmModel {
    type Input = VmInput;
    type Output = VmOutput;
    type State = bool;
    type Partition = VmName;

    fn partition(&self, input: &VmInput) -> VmName {
        VmName(input.name().to_owned())
    }

    fn init(&self) -> bool {
        false
    }

    fn step(&self, exists: &bool, input: &VmInput) -> (bool, VmOutput) {
        vm_step(*exists, input.op())
    }

    fn answers(&self, input: &VmInput, output: &VmOutput) -> bool {
        vm_answers(input.op(), *output)
    }
}

impl fmt::Display for KvInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvInput::Put { key, value } => write!(f, "put {key:?} = {value:?}"),
            KvInput::Get { key } => write!(f, "get {key:?}"),
            KvInput::Delete { key } => write!(f, "delete {key:?}"),
        }
    }
}

impl fmt::Display for KvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvOutput::Written => f.write_str("written"),
            KvOutput::Value(Some(value)) => write!(f, "value {value:?}"),
            KvOutput::Value(None) => f.write_str("no value"),
            KvOutput::Existed(true) => f.write_str("existed"),
            KvOutput::Existed(false) => f.write_str("did not exist"),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key {:?}", self.0)
    }
}

impl fmt::Display for VmInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmInput::Create { name } => write!(f, "create vm {name:?}"),
            VmInput::Delete { name } => write!(f, "delete vm {name:?}"),
        }
    }
}

impl fmt::Display for VmOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VmOutput::Created => "created",
            VmOutput::AlreadyExists => "already exists",
            VmOutput::Deleted => "deleted",
            VmOutput::NotFound => "not found",
        })
    }
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vm {:?}", self.0)
    }
}
