//! The KV and VM-by-name models side by side, for histories that mix both (what a chaos run
//! against a whole cluster records, and what `blixard-check` reads).
//!
//! Its inputs and outputs are the union of [`KvInput`]/[`VmInput`] and
//! [`KvOutput`]/[`VmOutput`] under the same JSON names, so a history recorded with
//! [`crate::KvModel`] or [`crate::VmModel`] alone reads as a cluster history too.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{
    kv_answers, kv_step, read_values, vm_answers, vm_step, Key, KvInput, KvOp, KvOutput, Model, VmInput, VmName, VmOp,
    VmOutput,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterModel;

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClusterInput {
    Put { key: String, value: String },
    Get { key: String },
    Delete { key: String },
    VmCreate { name: String },
    VmDelete { name: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterOutput {
    Written,
    Value(Option<String>),
    Existed(bool),
    Created,
    AlreadyExists,
    Deleted,
    NotFound,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPartition {
    Kv(Key),
    Vm(VmName),
}

/// One partition's state: a key's value or whether a VM exists. A partition only ever uses
/// the half of its kind; the other stays at its initial value.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct ClusterState {
    pub value: Option<String>,
    pub vm_exists: bool,
}

/// Reads as the value, `vm exists`, or `absent`, since only one half is in use.
impl fmt::Debug for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.value, self.vm_exists) {
            (Some(value), false) => write!(f, "{value:?}"),
            (None, true) => f.write_str("vm exists"),
            (None, false) => f.write_str("absent"),
            (Some(value), true) => write!(f, "{value:?} and vm exists"),
        }
    }
}

enum Op<'a> {
    Kv(KvOp<'a>),
    Vm(VmOp),
}

impl ClusterInput {
    fn op(&self) -> Op<'_> {
        match self {
            ClusterInput::Put { value, .. } => Op::Kv(KvOp::Put(value)),
            ClusterInput::Get { .. } => Op::Kv(KvOp::Get),
            ClusterInput::Delete { .. } => Op::Kv(KvOp::Delete),
            ClusterInput::VmCreate { .. } => Op::Vm(VmOp::Create),
            ClusterInput::VmDelete { .. } => Op::Vm(VmOp::Delete),
        }
    }
}

impl ClusterOutput {
    fn kv(&self) -> Option<KvOutput> {
        match self {
            ClusterOutput::Written => Some(KvOutput::Written),
            ClusterOutput::Value(value) => Some(KvOutput::Value(value.clone())),
            ClusterOutput::Existed(existed) => Some(KvOutput::Existed(*existed)),
            _ => None,
        }
    }

    fn vm(&self) -> Option<VmOutput> {
        match self {
            ClusterOutput::Created => Some(VmOutput::Created),
            ClusterOutput::AlreadyExists => Some(VmOutput::AlreadyExists),
            ClusterOutput::Deleted => Some(VmOutput::Deleted),
            ClusterOutput::NotFound => Some(VmOutput::NotFound),
            _ => None,
        }
    }
}

impl Model for ClusterModel {
    type Input = ClusterInput;
    type Output = ClusterOutput;
    type State = ClusterState;
    type Partition = ClusterPartition;

    fn partition(&self, input: &ClusterInput) -> ClusterPartition {
        match input {
            ClusterInput::Put { key, .. } | ClusterInput::Get { key } | ClusterInput::Delete { key } => {
                ClusterPartition::Kv(Key(key.clone()))
            }
            ClusterInput::VmCreate { name } | ClusterInput::VmDelete { name } => {
                ClusterPartition::Vm(VmName(name.clone()))
            }
        }
    }

    fn init(&self) -> ClusterState {
        ClusterState::default()
    }

    fn step(&self, state: &ClusterState, input: &ClusterInput) -> (ClusterState, ClusterOutput) {
        match input.op() {
            Op::Kv(op) => {
                let (value, output) = kv_step(&state.value, op);
                let next = ClusterState { value, vm_exists: state.vm_exists };
                (next, output.into())
            }
            Op::Vm(op) => {
                let (vm_exists, output) = vm_step(state.vm_exists, op);
                let next = ClusterState { value: state.value.clone(), vm_exists };
                (next, output.into())
            }
        }
    }

    fn simplify(&self, inputs: &mut [ClusterInput], outputs: &[Option<&ClusterOutput>]) {
        let read = read_values(outputs.iter().filter_map(|output| match output {
            Some(ClusterOutput::Value(Some(value))) => Some(value.as_str()),
            _ => None,
        }));
        for input in inputs {
            if let ClusterInput::Put { value, .. } = input {
                read.replace_unread(value);
            }
        }
    }

    fn answers(&self, input: &ClusterInput, output: &ClusterOutput) -> bool {
        match input.op() {
            Op::Kv(op) => output.kv().is_some_and(|out| kv_answers(op, &out)),
            Op::Vm(op) => output.vm().is_some_and(|out| vm_answers(op, out)),
        }
    }
}

impl From<KvInput> for ClusterInput {
    fn from(input: KvInput) -> Self {
        match input {
            KvInput::Put { key, value } => ClusterInput::Put { key, value },
            KvInput::Get { key } => ClusterInput::Get { key },
            KvInput::Delete { key } => ClusterInput::Delete { key },
        }
    }
}

impl From<VmInput> for ClusterInput {
    fn from(input: VmInput) -> Self {
        match input {
            VmInput::Create { name } => ClusterInput::VmCreate { name },
            VmInput::Delete { name } => ClusterInput::VmDelete { name },
        }
    }
}

impl From<KvOutput> for ClusterOutput {
    fn from(output: KvOutput) -> Self {
        match output {
            KvOutput::Written => ClusterOutput::Written,
            KvOutput::Value(value) => ClusterOutput::Value(value),
            KvOutput::Existed(existed) => ClusterOutput::Existed(existed),
        }
    }
}

impl From<VmOutput> for ClusterOutput {
    fn from(output: VmOutput) -> Self {
        match output {
            VmOutput::Created => ClusterOutput::Created,
            VmOutput::AlreadyExists => ClusterOutput::AlreadyExists,
            VmOutput::Deleted => ClusterOutput::Deleted,
            VmOutput::NotFound => ClusterOutput::NotFound,
        }
    }
}

impl fmt::Display for ClusterInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.clone() {
            ClusterInput::Put { key, value } => KvInput::Put { key, value }.fmt(f),
            ClusterInput::Get { key } => KvInput::Get { key }.fmt(f),
            ClusterInput::Delete { key } => KvInput::Delete { key }.fmt(f),
            ClusterInput::VmCreate { name } => VmInput::Create { name }.fmt(f),
            ClusterInput::VmDelete { name } => VmInput::Delete { name }.fmt(f),
        }
    }
}

impl fmt::Display for ClusterOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterOutput::Written => KvOutput::Written.fmt(f),
            ClusterOutput::Value(value) => KvOutput::Value(value.clone()).fmt(f),
            ClusterOutput::Existed(existed) => KvOutput::Existed(*existed).fmt(f),
            ClusterOutput::Created => VmOutput::Created.fmt(f),
            ClusterOutput::AlreadyExists => VmOutput::AlreadyExists.fmt(f),
            ClusterOutput::Deleted => VmOutput::Deleted.fmt(f),
            ClusterOutput::NotFound => VmOutput::NotFound.fmt(f),
        }
    }
}

impl fmt::Display for ClusterPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPartition::Kv(key) => key.fmt(f),
            ClusterPartition::Vm(name) => name.fmt(f),
        }
    }
}
