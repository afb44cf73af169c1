//! The pipeline stage by stage (exact reasons and choices), and properties over random
//! clusters: never oversubscribe, never two members of a hard group on one node, the same input
//! gives the same plan.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::placement::{Constraint, PlacementSpec, Strategy as Pack};
use crate::spec::PortForward;

fn node(id: NodeId, vcpus: u32, memory_mib: u64) -> NodeRecord {
    NodeRecord {
        id,
        vcpus,
        memory_mib,
        disk_gib: 100,
        accel: "tcg".into(),
        backend: "qemu".into(),
        eligible: true,
        ..Default::default()
    }
}

fn spec(vcpus: u32, memory_mib: u32) -> VmSpec {
    VmSpec { name: "x".into(), vcpus, memory_mib, ..Default::default() }
}

fn with(mut s: VmSpec, p: PlacementSpec) -> VmSpec {
    s.placement = p;
    s
}

fn reason(p: &Plan, id: NodeId) -> String {
    match p.nodes.iter().find(|(n, _)| *n == id).map(|(_, v)| v) {
        Some(Verdict::Rejected(r)) => r.to_string(),
        other => panic!("node {id}: {other:?}"),
    }
}

#[test]
fn binpack_fills_the_fullest_node_that_fits_and_spread_the_emptiest() {
    let mut nodes = [node(1, 8, 4096), node(2, 8, 4096)];
    nodes[1].add(&spec(1, 2048));
    assert_eq!(plan(&nodes[..], &spec(1, 512), None, 1, true).chosen, Some(2));
    let spread = with(spec(1, 512), PlacementSpec { strategy: Pack::Spread, ..Default::default() });
    assert_eq!(plan(&nodes[..], &spread, None, 1, true).chosen, Some(1));
    // Ties go to the lowest id, whatever the visiting order.
    let fresh = [node(3, 8, 4096), node(1, 8, 4096), node(2, 8, 4096)];
    for seed in 0..20 {
        assert_eq!(plan(&fresh[..], &spec(1, 512), None, seed, false).chosen, Some(1));
    }
}

#[test]
fn each_stage_rejects_with_its_reason() {
    let mut nodes: Vec<NodeRecord> = (1..=7).map(|i| node(i, 4, 2048)).collect();
    nodes[0].state = NodeState::Down;
    nodes[1].eligible = false;
    nodes[2].labels.insert("zone".into(), "b".into());
    nodes[3].labels.insert("zone".into(), "a".into());
    nodes[3].ports.insert(8080);
    nodes[4].labels.insert("zone".into(), "a".into());
    nodes[4].used.memory_mib = 2000;
    nodes[5].labels.insert("zone".into(), "a".into());
    nodes[5].groups.insert("web".into(), 1);
    nodes[6].labels.insert("zone".into(), "a".into());
    let mut s = with(
        spec(1, 256),
        PlacementSpec {
            constraints: vec![Constraint::parse("zone=a").unwrap()],
            group: Some("web".into()),
            hard: true,
            ..Default::default()
        },
    );
    s.ports = vec![PortForward { host: 8080, guest: 80 }];
    let p = plan(&nodes[..], &s, None, 9, true);
    assert_eq!(reason(&p, 1), "node is down");
    assert_eq!(reason(&p, 2), "node is not eligible for new work");
    assert_eq!(reason(&p, 3), "constraint zone=a does not hold");
    assert_eq!(reason(&p, 4), "host port 8080 is taken by another VM");
    assert_eq!(reason(&p, 5), "needs 256 MiB memory, 48 MiB free");
    assert_eq!(reason(&p, 6), "a VM of group \"web\" is already there (hard anti-affinity)");
    assert_eq!(p.chosen, Some(7));
    let kvm = with(spec(1, 64), PlacementSpec { require: vec!["kvm".into()], ..Default::default() });
    assert_eq!(reason(&plan(&nodes[6..][..], &kvm, None, 0, true), 7), "needs kvm, the node has none");
    nodes[6].drain = Some(record::Drain { deadline_ms: 0, parallel: 1, started_ms: 0 });
    assert_eq!(reason(&plan(&nodes[6..][..], &spec(1, 64), None, 0, true), 7), "node is draining");
}

#[test]
fn a_pinned_node_is_used_or_its_reason_given() {
    let nodes = [node(1, 8, 4096), node(2, 8, 512)];
    assert_eq!(plan(&nodes[..], &spec(1, 256), Some(2), 0, false).chosen, Some(2));
    let p = plan(&nodes[..], &spec(1, 1024), Some(2), 0, false);
    assert_eq!(p.chosen, None);
    assert_eq!(p.why_not(), "node 2: needs 1024 MiB memory, 512 MiB free");
}

#[test]
fn soft_groups_and_label_spread_steer_the_choice() {
    let mut nodes = [node(1, 8, 4096), node(2, 8, 4096), node(3, 8, 4096)];
    for (n, z) in nodes.iter_mut().zip(["a", "a", "b"]) {
        n.labels.insert("zone".into(), z.into());
    }
    let web = |spread: bool| {
        with(
            spec(1, 256),
            PlacementSpec { group: Some("web".into()), spread: spread.then(|| "zone".into()), ..Default::default() },
        )
    };
    nodes[0].add(&web(false));
    // Soft anti-affinity: not on node 1 though it is the fullest.
    assert_eq!(plan(&nodes[..], &web(false), None, 0, true).chosen, Some(2));
    // Spread over zones: zone a holds one of the group already, so zone b.
    assert_eq!(plan(&nodes[..], &web(true), None, 0, true).chosen, Some(3));
}

#[test]
fn with_many_nodes_a_sample_is_ranked() {
    let nodes: Vec<NodeRecord> = (1..=1000).map(|i| node(i, 8, 4096)).collect();
    let p = plan(&nodes[..], &spec(1, 128), None, 42, false);
    assert!(p.nodes.is_empty(), "a placement that succeeds records no verdicts");
    assert_eq!(sample_size(1000), 10);
    assert_eq!(p.unvisited, 1000 - 10);
    assert!(p.chosen.is_some());
    let all = plan(&nodes[..], &spec(1, 128), None, 42, true);
    assert_eq!(all.nodes.len(), 1000);
}

#[test]
fn the_visiting_order_covers_every_node_once() {
    for n in [0usize, 1, 2, 7, 12, 100, 1024] {
        for seed in 0..10 {
            let mut seen: Vec<usize> = order(n, seed).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n {n} seed {seed}");
        }
    }
}

#[test]
fn the_visiting_order_is_start_plus_i_strides_as_every_version_computes_it() {
    // The order decides the choice inside `apply`: it must not change between versions.
    for n in [0usize, 1, 2, 3, 10, 97, 1000, 10_000] {
        for seed in [0u64, 1, 42, 1 << 40, u64::MAX] {
            let (start, stride) = start_stride(n, seed);
            let want: Vec<usize> = (0..n).map(|i| (start + i * stride) % n).collect();
            assert_eq!(order(n, seed).collect::<Vec<_>>(), want, "n {n} seed {seed}");
        }
    }
    assert_eq!(start_stride(10_000, 7), (3_533, 4_561), "the order of stop 20");
}

#[test]
fn nothing_registered_says_so() {
    let p = plan(&[][..], &spec(1, 64), None, 0, false);
    assert_eq!((p.chosen, p.why_not()), (None, "no node has registered its capacity yet".to_string()));
    assert!(could_ever_fit(&[][..], &spec(1, 64)));
    assert!(!could_ever_fit(&[node(1, 2, 512)][..], &spec(4, 64)));
}

fn arb_nodes() -> impl Strategy<Value = Vec<NodeRecord>> {
    proptest::collection::vec((1u32..16, 256u64..8192, prop::bool::ANY), 1..12).prop_map(|ns| {
        ns.into_iter()
            .enumerate()
            .map(|(i, (c, m, z))| {
                let mut n = node(i as u64 + 1, c, m);
                n.labels = BTreeMap::from([("zone".to_string(), if z { "a" } else { "b" }.to_string())]);
                n
            })
            .collect()
    })
}

fn arb_spec() -> impl Strategy<Value = VmSpec> {
    const CONSTRAINTS: [&str; 5] = ["zone=a", "zone!=b", "zone in (a,c)", "zone not in (c)", "gpu exists"];
    (
        1u32..6,
        64u32..3000,
        prop::option::of(0u8..7),
        prop::bool::ANY,
        prop::option::of(1u16..6),
        prop::bool::ANY,
        prop::option::of(0..CONSTRAINTS.len()),
    )
        .prop_map(|(c, m, g, hard, port, spread, k)| {
            let mut s = spec(c, m);
            s.placement.constraints = k.map(|k| Constraint::parse(CONSTRAINTS[k]).unwrap()).into_iter().collect();
            s.placement.group = g.map(|g| format!("g{g}"));
            s.placement.hard = hard && s.placement.group.is_some();
            s.placement.spread = spread.then(|| "zone".into());
            s.ports = port.map(|p| vec![PortForward { host: 9000 + p, guest: 80 }]).unwrap_or_default();
            s
        })
}

proptest! {
    #[test]
    fn placements_never_oversubscribe_or_share_hard_groups_or_ports(
        mut nodes in arb_nodes(),
        specs in proptest::collection::vec(arb_spec(), 1..60),
        seed in any::<u64>(),
    ) {
        for (i, s) in specs.iter().enumerate() {
            let p = plan(&nodes[..], s, None, seed.wrapping_add(i as u64), false);
            prop_assert_eq!(&p, &plan(&nodes[..], s, None, seed.wrapping_add(i as u64), false), "deterministic");
            let Some(id) = p.chosen else { continue };
            let n = nodes.iter_mut().find(|n| n.id == id).unwrap();
            if let (Some(g), true) = (&s.placement.group, s.placement.hard) {
                prop_assert!(!n.groups.contains_key(g), "two members of hard group {} on node {}", g, id);
            }
            for pf in &s.ports {
                prop_assert!(!n.ports.contains(&pf.host), "port {} twice on node {}", pf.host, id);
            }
            n.add(s);
            prop_assert!(n.used.vcpus <= n.vcpus && n.used.memory_mib <= n.memory_mib, "node {} oversubscribed", id);
        }
    }
}

proptest! {
    /// The interned views of a [`Cluster`] and the views built per query from the records
    /// choose alike and give the same reasons, placement after placement.
    #[test]
    fn a_cluster_in_memory_plans_as_the_records_do(
        nodes in arb_nodes(),
        specs in proptest::collection::vec(arb_spec(), 1..60),
        seed in any::<u64>(),
    ) {
        let mut nodes = nodes;
        let mut cluster = Cluster::new(nodes.clone());
        for (i, s) in specs.iter().enumerate() {
            let seed = seed.wrapping_add(i as u64);
            for explain in [false, true] {
                prop_assert_eq!(plan(&cluster, s, None, seed, explain), plan(&nodes[..], s, None, seed, explain));
            }
            let Some(id) = plan(&nodes[..], s, None, seed, false).chosen else { continue };
            nodes.iter_mut().find(|n| n.id == id).unwrap().add(s);
            prop_assert!(cluster.add(id, s));
            // Now and then a VM leaves again.
            if i % 3 == 2 {
                nodes.iter_mut().find(|n| n.id == id).unwrap().release(s);
                prop_assert!(cluster.release(id, s));
            }
            prop_assert_eq!(cluster.records(), &nodes[..]);
        }
    }
}

#[test]
fn constraints_on_labels_no_node_has_hold_or_not_exactly() {
    let mut nodes = vec![node(1, 8, 4096), node(2, 8, 4096)];
    nodes[0].labels.insert("zone".into(), "a".into());
    nodes[1].labels.insert("rack".into(), "zone".into());
    let cluster = Cluster::new(nodes.clone());
    for (c, want) in [
        ("zone=b", None),
        ("zone!=b", Some(1)),
        ("zone in (b,c)", None),
        ("zone not in (b,c)", Some(1)),
        ("gpu exists", None),
        ("gpu missing", Some(1)),
        ("rack=zone", Some(2)),
        ("zone=zone", None),
    ] {
        let s =
            with(spec(1, 64), PlacementSpec { constraints: vec![Constraint::parse(c).unwrap()], ..Default::default() });
        assert_eq!(plan(&nodes[..], &s, None, 0, false).chosen, want, "{c} on records");
        assert_eq!(plan(&cluster, &s, None, 0, false).chosen, want, "{c} in a cluster");
    }
}

#[test]
fn binary_gcd_is_euclids() {
    fn euclid(mut a: usize, mut b: usize) -> usize {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }
    for a in 0..200 {
        for b in 0..200 {
            assert_eq!(gcd(a, b), euclid(a, b), "gcd({a}, {b})");
        }
    }
    assert_eq!(gcd(10_000, 4_560), euclid(10_000, 4_560));
}

#[test]
fn many_constraints_compile_beyond_the_inline_symbols_alike() {
    // 16 constraints of up to 3 values: more symbols than a query holds inline.
    let mut nodes: Vec<NodeRecord> = (1..=6).map(|i| node(i, 8, 4096)).collect();
    for (i, n) in nodes.iter_mut().enumerate() {
        for k in 0..5 {
            n.labels.insert(format!("k{k}"), format!("v{}", (i + k) % 3));
        }
    }
    let cluster = Cluster::new(nodes.clone());
    let mut constraints: Vec<Constraint> =
        (0..5).map(|k| Constraint::parse(&format!("k{k} exists")).unwrap()).collect();
    constraints.extend((0..5).map(|k| Constraint::parse(&format!("k{k} in (v0,v1,v2)")).unwrap()));
    constraints.extend((0..5).map(|k| Constraint::parse(&format!("k{k} != v9")).unwrap()));
    constraints.push(Constraint::parse("k4 in (v0,v1)").unwrap());
    let s = with(spec(1, 64), PlacementSpec { constraints, ..Default::default() });
    for seed in 0..10 {
        let p = plan(&nodes[..], &s, None, seed, true);
        assert_eq!(plan(&cluster, &s, None, seed, true), p);
        // k4 = v((i + 4) % 3): v2 on nodes 2 and 5 (indexes 1 and 4).
        assert_eq!(reason(&p, 2), "constraint k4 in (v0,v1) does not hold");
        assert_eq!(reason(&p, 5), "constraint k4 in (v0,v1) does not hold");
        assert!(matches!(p.chosen, Some(1 | 3 | 4 | 6)));
    }
}

#[test]
fn a_cluster_built_from_records_with_groups_counts_them() {
    // Node 1 carries six groups (more than a view holds inline), node 2 none.
    let mut nodes = vec![node(1, 64, 65536), node(2, 8, 4096)];
    for g in 0..6 {
        for _ in 0..=g {
            nodes[0].add(&with(spec(1, 64), PlacementSpec { group: Some(format!("g{g}")), ..Default::default() }));
        }
    }
    let mut cluster = Cluster::new(nodes.clone());
    for g in 0..7 {
        let hard = with(spec(1, 64), PlacementSpec { group: Some(format!("g{g}")), hard: true, ..Default::default() });
        let p = plan(&cluster, &hard, None, 0, true);
        assert_eq!(p, plan(&nodes[..], &hard, None, 0, true), "g{g}");
        let want = if g < 6 { Some(2) } else { Some(1) };
        assert_eq!(p.chosen, want, "g{g}: node 1 is the fuller, but holds the group");
    }
    // The one VM of g0 on node 1 leaves: node 1 takes g0 again.
    let g0 = with(spec(1, 64), PlacementSpec { group: Some("g0".into()), hard: true, ..Default::default() });
    assert!(cluster.release(1, &g0));
    nodes[0].release(&g0);
    assert_eq!(cluster.records(), &nodes[..]);
    assert_eq!(plan(&cluster, &g0, None, 0, false).chosen, Some(1));
    assert_eq!(plan(&nodes[..], &g0, None, 0, false).chosen, Some(1));
}
