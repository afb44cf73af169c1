//! VMs per (group, node) for a whole in-memory node set ([`super::Cluster`]), in one flat
//! open-addressing table: the count of a VM's group on a node is one probe at an address
//! computed from the two numbers, independent of the node's view, so the search can look it up
//! for several nodes at once (their cache misses overlap). A node's own view would hold a
//! sorted list behind pointers (a chain of dependent misses), and with a hundred VMs a node
//! carries tens of groups.
//!
//! Linear probing with backward-shift deletion (no tombstones): the table holds exactly the
//! pairs with a count above zero, at most half full.

/// A (group, slot) pair's count; `count == 0` marks an empty entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    key: u64,
    count: u32,
}

#[derive(Clone, Debug, Default)]
pub struct GroupCounts {
    entries: Vec<Entry>,
    len: usize,
}

fn key(group: u32, slot: u32) -> u64 {
    (u64::from(group) << 32) | u64::from(slot)
}

impl GroupCounts {
    fn home(&self, k: u64) -> usize {
        // Fibonacci hashing: the top bits of the product, as many as the table's size has.
        let bits = self.entries.len().trailing_zeros();
        (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    fn find(&self, k: u64) -> Result<usize, usize> {
        let mask = self.entries.len() - 1;
        let mut i = self.home(k);
        loop {
            let e = self.entries[i];
            if e.count == 0 {
                return Err(i);
            }
            if e.key == k {
                return Ok(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// VMs of `group` on the node in `slot`.
    pub fn get(&self, group: u32, slot: u32) -> u32 {
        if self.len == 0 {
            return 0;
        }
        self.find(key(group, slot)).map_or(0, |i| self.entries[i].count)
    }

    /// Counts `n` more VMs of `group` on the node in `slot`.
    pub fn add(&mut self, group: u32, slot: u32, n: u32) {
        if n == 0 {
            return;
        }
        if (self.len + 1) * 2 > self.entries.len() {
            self.grow();
        }
        let k = key(group, slot);
        match self.find(k) {
            Ok(i) => self.entries[i].count += n,
            Err(i) => {
                self.entries[i] = Entry { key: k, count: n };
                self.len += 1;
            }
        }
    }

    /// Takes one VM of `group` away from the node in `slot` (the pair goes at zero).
    pub fn release(&mut self, group: u32, slot: u32) {
        if self.len == 0 {
            return;
        }
        let Ok(mut hole) = self.find(key(group, slot)) else { return };
        self.entries[hole].count -= 1;
        if self.entries[hole].count > 0 {
            return;
        }
        self.len -= 1;
        // Backward shift: later entries of the run move into the hole when their home allows.
        let mask = self.entries.len() - 1;
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let e = self.entries[j];
            if e.count == 0 {
                break;
            }
            let home = self.home(e.key);
            // `e` may move to `hole` unless its home lies cyclically in (hole, j].
            if (j.wrapping_sub(home) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.entries[hole] = e;
                hole = j;
            }
        }
        self.entries[hole] = Entry::default();
    }

    fn grow(&mut self) {
        let size = (self.entries.len() * 2).max(16);
        let old = std::mem::replace(&mut self.entries, vec![Entry::default(); size]);
        self.len = 0;
        for e in old.into_iter().filter(|e| e.count > 0) {
            let Err(i) = self.find(e.key) else { unreachable!("a key is in the table once") };
            self.entries[i] = e;
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The table counts as a map does, through additions and releases (the releases empty
        /// pairs often, so backward shifts run over every kind of run).
        #[test]
        fn counts_as_a_map_does(ops in proptest::collection::vec((0u32..6, 0u32..40, prop::bool::ANY), 1..600)) {
            let mut t = GroupCounts::default();
            let mut m: BTreeMap<(u32, u32), u32> = BTreeMap::new();
            for (g, s, add) in ops {
                if add {
                    t.add(g, s, 1);
                    *m.entry((g, s)).or_default() += 1;
                } else {
                    t.release(g, s);
                    if let Some(c) = m.get_mut(&(g, s)) {
                        *c -= 1;
                        if *c == 0 {
                            m.remove(&(g, s));
                        }
                    }
                }
                prop_assert_eq!(t.len, m.len());
                for g in 0..6 {
                    for s in 0..40 {
                        prop_assert_eq!(t.get(g, s), m.get(&(g, s)).copied().unwrap_or(0), "group {} slot {}", g, s);
                    }
                }
            }
        }
    }

    #[test]
    fn empty_and_unknown_pairs_count_zero() {
        let mut t = GroupCounts::default();
        assert_eq!(t.get(1, 2), 0);
        t.release(1, 2);
        t.add(1, 2, 3);
        assert_eq!((t.get(1, 2), t.get(2, 1), t.get(1, 3)), (3, 0, 0));
    }
}
