//! `apply` is deterministic, and a snapshot taken midway plus the rest of the log equals the
//! straight replay: random command sequences (KV, VM create/delete/start/stop, node register
//! and down) applied to two stores give equal states and equal answers; a third store restored
//! from a snapshot of the first at a random point and fed the remaining commands ends equal.

use blixard_core::state::{apply, export, import, vms, vms_on};
use blixard_core::{Command, Envelope, MemStore, NodeState, PowerState, Registration, Session, VmSpec};
use proptest::prelude::*;

fn command() -> impl Strategy<Value = Command> {
    let name = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
    let node = 1u64..4;
    prop_oneof![
        (0u8..4, any::<u8>()).prop_map(|(k, v)| Command::KvPut { key: vec![b'k', k], value: vec![v] }),
        (0u8..4).prop_map(|k| Command::KvDelete { key: vec![b'k', k] }),
        (name.clone(), prop::option::of(node.clone()), any::<bool>(), any::<bool>(), 1u32..4, 1u32..3).prop_map(
            |(name, node, start, queue, vcpus, mem)| Command::VmCreate {
                spec: VmSpec { name, vcpus, memory_mib: mem * 256, ..Default::default() },
                node,
                start,
                queue,
            }
        ),
        name.clone().prop_map(|name| Command::VmDelete { name }),
        (name.clone(), any::<bool>()).prop_map(|(name, run)| Command::VmSetDesired {
            name,
            desired: if run { PowerState::Running } else { PowerState::Stopped },
        }),
        (node.clone(), 1u32..8, 1u64..8).prop_map(|(id, vcpus, gib)| Command::NodeRegister {
            node: Registration {
                id,
                vcpus,
                memory_mib: gib * 1024,
                disk_gib: 100,
                accel: "tcg".into(),
                ..Default::default()
            },
        }),
        (node.clone(), any::<bool>()).prop_map(|(id, down)| Command::NodeSetState {
            id,
            state: if down { NodeState::Down } else { NodeState::Ready },
        }),
        (node, any::<bool>()).prop_map(|(id, eligible)| Command::NodeEligibility { id, eligible }),
    ]
}

/// Envelopes as a leader would propose them: one client session, time moving forward.
fn envelopes(commands: Vec<Command>) -> Vec<Envelope> {
    let boot = Envelope { session: None, now_ms: 1_000, command: Command::Bootstrap { id: 1, addr: "h:1".into() } };
    let mut out = vec![boot];
    for (i, command) in commands.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let session = Some(Session { client: 7, seq, first_unanswered: seq });
        out.push(Envelope { session, now_ms: 1_000 + 250 * seq, command });
    }
    out
}

fn run(store: &mut MemStore, from: u64, envs: &[Envelope]) -> Vec<String> {
    envs.iter()
        .enumerate()
        .map(|(i, e)| format!("{:?}", apply(store, from + i as u64, e).expect("mem store never fails")))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn apply_is_deterministic_and_snapshot_plus_replay_equals_replay(
        commands in prop::collection::vec(command(), 1..60),
        cut in any::<prop::sample::Index>(),
    ) {
        let envs = envelopes(commands);
        let (mut a, mut b) = (MemStore::default(), MemStore::default());
        let answers_a = run(&mut a, 1, &envs);
        let answers_b = run(&mut b, 1, &envs);
        prop_assert_eq!(&answers_a, &answers_b);
        prop_assert_eq!(&a, &b);
        // The per-node index the reconcilers read is exactly the VMs whose record names the node.
        let all = vms(&a).expect("vms");
        for node in 0..=4 {
            let scanned: Vec<_> = all.iter().filter(|v| v.node == Some(node)).cloned().collect();
            prop_assert_eq!(vms_on(&a, node).expect("vms_on"), scanned, "node {}", node);
        }

        let cut = cut.index(envs.len() + 1);
        let mut first = MemStore::default();
        let mut answers = run(&mut first, 1, &envs[..cut]);
        let snapshot = export(&first).expect("export");
        let mut restored = MemStore::default();
        import(&mut restored, &snapshot).expect("import");
        prop_assert_eq!(export(&restored).expect("export"), snapshot);
        answers.extend(run(&mut restored, cut as u64 + 1, &envs[cut..]));
        prop_assert_eq!(&answers, &answers_a);
        prop_assert_eq!(export(&restored).expect("export"), export(&a).expect("export"));
    }
}
