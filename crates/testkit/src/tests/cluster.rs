//! The cluster model: KV keys and VM names side by side.

use super::*;
use crate::{ClusterInput, ClusterModel, ClusterOutput, ClusterPartition, VmName};

fn cluster(op: KvOp) -> Operation<ClusterInput, ClusterOutput> {
    Operation {
        client: op.client,
        invoke: op.invoke,
        complete: op.complete,
        input: op.input.into(),
        result: match op.result {
            crate::OpResult::Ok(output) => crate::OpResult::Ok(output.into()),
            crate::OpResult::Fail => crate::OpResult::Fail,
            crate::OpResult::Unknown => crate::OpResult::Unknown,
        },
    }
}

fn cluster_vm(op: VmOp) -> Operation<ClusterInput, ClusterOutput> {
    Operation {
        client: op.client,
        invoke: op.invoke,
        complete: op.complete,
        input: op.input.into(),
        result: match op.result {
            crate::OpResult::Ok(output) => crate::OpResult::Ok(output.into()),
            crate::OpResult::Fail => crate::OpResult::Fail,
            crate::OpResult::Unknown => crate::OpResult::Unknown,
        },
    }
}

#[test]
fn a_key_and_a_vm_of_the_same_name_are_different_partitions() {
    let report = run(
        &ClusterModel,
        vec![
            cluster(put(1, "web", "1", 0, 10)),
            cluster_vm(create(1, "web", 0, 10, VmOutput::Created)),
            cluster(get(2, "web", 20, 30, Some("1"))),
            cluster_vm(create(2, "web", 20, 30, VmOutput::Created)),
        ],
    );
    assert_eq!(report.partitions, 2);
    assert_eq!(report.violations.len(), 1, "{report}");
    assert_eq!(report.violations[0].partition, ClusterPartition::Vm(VmName("web".into())));
    assert!(report.to_string().contains("vm \"web\""), "{report}");
}

#[test]
fn a_vm_answer_to_a_kv_input_is_malformed() {
    let op = Operation::ok(1, ClusterInput::Get { key: "a".into() }, 0, 1, ClusterOutput::Created);
    let error = check(&ClusterModel, &History::from(vec![op])).unwrap_err();
    assert_eq!((error.index, error.field), (0, "result"));
}
