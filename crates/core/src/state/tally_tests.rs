//! The scheduler's counts while commands apply: placements by outcome and rejections by stage,
//! collected by a store that keeps a tally (the node's metrics), and nothing of them stored.

use super::tests::member_node;
use super::*;
use crate::scheduler::{Tally, STAGES};
use crate::spec::VmSpec;
use crate::store::{KvPairs, MemStore, Page, PageLimit};

/// A memory store that keeps a tally, as the node's write transaction does.
#[derive(Default)]
struct Counting {
    s: MemStore,
    t: Tally,
}

impl ReadStore for Counting {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.s.get(table, key)
    }
    fn scan(&self, table: Table, prefix: &[u8], limit: usize) -> Result<KvPairs, StoreError> {
        self.s.scan(table, prefix, limit)
    }
    fn scan_page(&self, t: Table, p: &[u8], a: Option<&[u8]>, l: PageLimit) -> Result<Page, StoreError> {
        self.s.scan_page(t, p, a, l)
    }
}

impl Store for Counting {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.s.put(table, key, value)
    }
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<bool, StoreError> {
        self.s.delete(table, key)
    }
    fn clear(&mut self, table: Table) -> Result<(), StoreError> {
        self.s.clear(table)
    }
    fn tally(&mut self) -> Option<&mut Tally> {
        Some(&mut self.t)
    }
}

fn run(s: &mut Counting, index: u64, command: Command) -> crate::command::Outcome {
    apply(s, index, &Envelope { session: None, now_ms: 5_000, command }).unwrap().outcome
}

fn create(s: &mut Counting, index: u64, name: &str, memory_mib: u32) -> crate::command::Outcome {
    let spec = VmSpec { name: name.into(), vcpus: 1, memory_mib, ..Default::default() };
    run(s, index, Command::VmCreate { spec, node: None, start: true, queue: true })
}

fn resources(t: &Tally) -> u64 {
    t.rejections[STAGES.iter().position(|s| *s == "resources").unwrap()]
}

#[test]
fn placements_are_counted_by_outcome_and_rejections_by_stage() {
    let mut s = Counting { s: member_node(1, 4, 1024), t: Tally::default() };
    assert!(create(&mut s, 2, "a", 512).is_ok());
    assert_eq!(s.t.placements[0], [1, 0, 0], "placed");
    assert_eq!(resources(&s.t), 0);
    // No room left: it waits; node 1 was rejected for its resources.
    assert!(create(&mut s, 3, "b", 768).is_ok());
    assert_eq!(s.t.placements[0], [1, 1, 0]);
    assert_eq!(resources(&s.t), 1);
    // No node could ever hold it: refused.
    assert!(create(&mut s, 4, "huge", 4096).is_err());
    assert_eq!(s.t.placements[0], [1, 1, 1]);
    assert_eq!(resources(&s.t), 2);
    // Deleting "a" frees room: the pending one is placed.
    run(&mut s, 5, Command::VmDelete { name: "a".into() }).unwrap();
    assert_eq!(s.t.placements[0], [2, 1, 1]);
    // A node that is not eligible is rejected at the status stage.
    run(&mut s, 6, Command::NodeEligibility { id: 1, eligible: false }).unwrap();
    assert!(create(&mut s, 7, "c", 64).is_ok());
    assert_eq!(s.t.rejections[0], 1, "{:?}", s.t);
    assert_eq!(s.t.placements[1], [0, 0, 0], "no task was placed");
    // The counts are not state: the same commands into a plain store give the same tables.
    let mut plain = member_node(1, 4, 1024);
    for (i, c) in [
        Command::VmCreate {
            spec: VmSpec { name: "a".into(), vcpus: 1, memory_mib: 512, ..Default::default() },
            node: None,
            start: true,
            queue: true,
        },
        Command::VmCreate {
            spec: VmSpec { name: "b".into(), vcpus: 1, memory_mib: 768, ..Default::default() },
            node: None,
            start: true,
            queue: true,
        },
        Command::VmCreate {
            spec: VmSpec { name: "huge".into(), vcpus: 1, memory_mib: 4096, ..Default::default() },
            node: None,
            start: true,
            queue: true,
        },
        Command::VmDelete { name: "a".into() },
        Command::NodeEligibility { id: 1, eligible: false },
        Command::VmCreate {
            spec: VmSpec { name: "c".into(), vcpus: 1, memory_mib: 64, ..Default::default() },
            node: None,
            start: true,
            queue: true,
        },
    ]
    .into_iter()
    .enumerate()
    {
        apply(&mut plain, i as u64 + 2, &Envelope { session: None, now_ms: 5_000, command: c }).unwrap();
    }
    assert_eq!(plain, s.s);
}

#[test]
fn tallies_add_up() {
    let mut a = Tally::default();
    let mut b = Tally::default();
    b.placements[1][2] = 3;
    b.rejections[5] = 7;
    a.add(&b);
    a.add(&b);
    assert_eq!((a.placements[1][2], a.rejections[5]), (6, 14));
    assert!(!a.is_empty() && Tally::default().is_empty());
}
