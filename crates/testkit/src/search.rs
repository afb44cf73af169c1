//! The search for a linearization of one partition (Wing & Gong, with Lowe's cache).
//!
//! The required operations (those with a known result) become a doubly linked list of call and
//! return events in time order. The search walks it from the front: a call may be linearized
//! now if the model, in the current state, gives the recorded output; it is then cut out of
//! the list with its return ("lifted") and the walk restarts at the front. A
//! return reached before its call was lifted means that operation had to take effect before
//! everything still in the list and could not: undo the last choice and try the next call
//! after it. Lowe's cache of (set of linearized operations, state) prunes a choice that leads
//! to a configuration already explored, which is what keeps the search linear for histories
//! that are mostly sequential.
//!
//! Unknown operations would make that cache useless: each one left out (or used) doubles the
//! sets of linearized operations that lead to the same state, so a partition with 20 unknown
//! puts has a million configurations per point in time. They are kept out of the event list
//! (their returns are at +∞; any unknown operation invoked before the first return left may
//! go next, with whatever output the model gives), and four changes keep the count small:
//! - Dominance: a configuration that used a superset of the unknown operations another one
//!   used, with the same required operations and the same state, can only do less (an unknown
//!   operation may always be left out), so it is pruned too. The cache keys on (required
//!   operations linearized, state) and keeps, per key, the minimal sets of unknown operations
//!   seen.
//! - Order: at each point the search tries the required calls first, and only then the unknown
//!   ones; and it records all the unknown choices of a point in the cache before it explores
//!   any of them. Otherwise it would explore "u1 then u2" before "u2 alone", and every chain
//!   of unknown operations before its shorter forms.
//! - Classes: unknown operations with equal inputs are one choice (see [`Classes`]).
//! - The model's [`Model::simplify`] merges inputs no output can tell apart, so that more
//!   unknown operations are equal (done by the caller, before the search).
//!
//! Pruning against a configuration that is explored later, or is being explored (an
//! ancestor), loses nothing: take the cached configuration with a success that is closest to
//! its end; its next step towards it is either explored, so cached and closer, or pruned by
//! one that dominates it, so also cached and closer.

use std::collections::HashMap;

use crate::model::Model;

/// One operation of a partition, as the search sees it. The partition's operations come in
/// invoke order, which keeps the sets of linearized
/// operations compact (see [`Linearized`]).
pub(crate) struct SearchOp<'h, M: Model> {
    pub input: &'h M::Input,
    /// `None` for an unknown operation: any output fits, and it need not be linearized.
    pub output: Option<&'h M::Output>,
    pub invoke: u64,
    /// `u64::MAX` for an unknown operation.
    pub complete: u64,
}

pub(crate) enum SearchOutcome {
    Linearizable {
        steps: u64,
    },
    /// No linearization: `longest` is the longest partial one found, as indices into the
    /// partition's operations in linearization order.
    Violation {
        steps: u64,
        longest: Vec<usize>,
    },
    GaveUp {
        steps: u64,
    },
}

const NIL: u32 = u32::MAX;
const HEAD: u32 = 0;

/// The event list of the required operations: node 0 is the head sentinel, nodes 1.. are
/// events in time order. Unknown operations are not in it: their returns would sit at the
/// end, and their calls in front of every walk.
struct Events {
    next: Vec<u32>,
    prev: Vec<u32>,
    op: Vec<u32>,
    /// For a call node, its return node; `NIL` for a return node.
    ret: Vec<u32>,
    time: Vec<u64>,
}

impl Events {
    /// Orders events by time; at equal times calls before returns, so an operation invoked at
    /// the instant another completed counts as concurrent with it (the permissive reading,
    /// when two clocks' readings tie).
    fn new<M: Model>(ops: &[SearchOp<'_, M>], required: &[u32]) -> Events {
        let mut events: Vec<(u64, bool, u32)> = Vec::with_capacity(required.len() * 2);
        for &i in required {
            events.push((ops[i as usize].invoke, false, i));
            events.push((ops[i as usize].complete, true, i));
        }
        events.sort_unstable();
        let len = events.len() + 1;
        let mut list = Events {
            next: (1..=len as u32).collect(),
            prev: (0..len as u32).map(|n| n.wrapping_sub(1)).collect(),
            op: vec![NIL; len],
            ret: vec![NIL; len],
            time: vec![0; len],
        };
        list.next[len - 1] = NIL;
        let mut call_node = vec![NIL; ops.len()];
        for (pos, &(time, is_return, op)) in events.iter().enumerate() {
            let node = pos as u32 + 1;
            list.op[node as usize] = op;
            list.time[node as usize] = time;
            if is_return {
                list.ret[call_node[op as usize] as usize] = node;
            } else {
                call_node[op as usize] = node;
            }
        }
        list
    }

    /// The time of the first return left: every operation still to linearize must have been
    /// invoked by then to go next.
    fn deadline(&self) -> u64 {
        let mut node = self.next[HEAD as usize];
        while node != NIL && self.is_call(node) {
            node = self.next[node as usize];
        }
        if node == NIL {
            u64::MAX
        } else {
            self.time[node as usize]
        }
    }

    fn is_call(&self, node: u32) -> bool {
        self.ret[node as usize] != NIL
    }

    fn unlink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = next;
        if next != NIL {
            self.prev[next as usize] = prev;
        }
    }

    /// Undoes `unlink(node)`; undos must come in the reverse order of the unlinks.
    fn relink(&mut self, node: u32) {
        let (prev, next) = (self.prev[node as usize], self.next[node as usize]);
        self.next[prev as usize] = node;
        if next != NIL {
            self.prev[next as usize] = node;
        }
    }

    fn lift(&mut self, call: u32) {
        self.unlink(call);
        self.unlink(self.ret[call as usize]);
    }

    fn unlift(&mut self, call: u32) {
        self.relink(self.ret[call as usize]);
        self.relink(call);
    }
}

/// The set of linearized operations, with a compact canonical form for the cache.
///
/// Because the search lifts calls roughly in time order, the set is a run of all-ones words,
/// a few words with holes (operations concurrent with the front, unknown operations not
/// linearized), then zeros. The cache stores only the words with holes, which keeps an entry
/// small even for a partition of 100,000 operations.
struct Linearized {
    words: Vec<u64>,
    /// Leading words that are all ones.
    full: usize,
    /// One past the last word that is not zero.
    end: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct LinearizedKey {
    full: u32,
    end: u32,
    holes: Vec<(u32, u64)>,
}

impl Linearized {
    fn new(ops: usize) -> Self {
        Linearized { words: vec![0; ops.div_ceil(64)], full: 0, end: 0 }
    }

    fn insert(&mut self, op: usize) {
        let word = op / 64;
        self.words[word] |= 1 << (op % 64);
        self.end = self.end.max(word + 1);
        while self.full < self.words.len() && self.words[self.full] == u64::MAX {
            self.full += 1;
        }
    }

    fn remove(&mut self, op: usize) {
        let word = op / 64;
        self.words[word] &= !(1 << (op % 64));
        self.full = self.full.min(word);
        while self.end > 0 && self.words[self.end - 1] == 0 {
            self.end -= 1;
        }
    }

    fn key(&self) -> LinearizedKey {
        let holes = self.words[self.full..self.end]
            .iter()
            .enumerate()
            .filter(|(_, &word)| word != u64::MAX)
            .map(|(i, &word)| ((self.full + i) as u32, word))
            .collect();
        LinearizedKey { full: self.full as u32, end: self.end as u32, holes }
    }
}

struct Frame<S> {
    /// The operation linearized.
    op: u32,
    /// Its call node, for a required operation; `NIL` for an unknown one.
    call: u32,
    /// The state before this operation was linearized.
    state: S,
    /// This choice's node in `Trail`.
    trail: u32,
}

/// Every choice made, as a tree of (operation, parent): a path from a node to the root is a
/// partial linearization, so remembering the longest one costs one index.
#[derive(Default)]
struct Trail {
    nodes: Vec<(u32, u32)>,
}

impl Trail {
    fn push(&mut self, op: u32, parent: u32) -> u32 {
        self.nodes.push((op, parent));
        self.nodes.len() as u32 - 1
    }

    fn path(&self, mut node: u32) -> Vec<usize> {
        let mut path = Vec::new();
        while node != NIL {
            let (op, parent) = self.nodes[node as usize];
            path.push(op as usize);
            node = parent;
        }
        path.reverse();
        path
    }
}

/// Which unknown operations are linearized, by their number among the unknown ones.
#[derive(Default)]
struct UnknownSet {
    words: Vec<u64>,
}

impl UnknownSet {
    fn insert(&mut self, id: usize) {
        if self.words.len() <= id / 64 {
            self.words.resize(id / 64 + 1, 0);
        }
        self.words[id / 64] |= 1 << (id % 64);
    }

    fn remove(&mut self, id: usize) {
        self.words[id / 64] &= !(1 << (id % 64));
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    /// Whether every member of `self` is in `other`; both are trimmed of trailing zeros.
    fn is_subset(words: &[u64], other: &[u64]) -> bool {
        words.len() <= other.len() && words.iter().zip(other).all(|(a, b)| a & !b == 0)
    }
}

/// Lowe's cache, with dominance over unknown operations: per set of required operations and
/// state, the minimal sets of unknown operations seen.
struct Cache<S> {
    seen: HashMap<LinearizedKey, HashMap<S, Vec<Vec<u64>>>>,
}

impl<S: Eq + std::hash::Hash> Cache<S> {
    /// Records a configuration; false if it (or one that can do all it can) was seen before.
    fn insert(&mut self, required: &LinearizedKey, state: S, unknown: &UnknownSet) -> bool {
        let states = match self.seen.get_mut(required) {
            Some(states) => states,
            None => self.seen.entry(required.clone()).or_default(),
        };
        let minimal = states.entry(state).or_default();
        if minimal.iter().any(|seen| UnknownSet::is_subset(seen, &unknown.words)) {
            return false;
        }
        minimal.retain(|seen| !UnknownSet::is_subset(&unknown.words, seen));
        minimal.push(unknown.words.clone());
        true
    }
}

/// Unknown operations with equal inputs are interchangeable, except that a later one may be
/// placed only later; once both may go next, the earlier can do anything the later can. So
/// the search only ever uses the earliest unused one of each class, and the unknown
/// operations used are a prefix of each class: two unknown deletes of a key are one choice,
/// not two (with twenty of them, a million sets).
struct Classes {
    /// Per unknown operation (by its number among the unknown ones): its class.
    of: Vec<usize>,
    /// Per class: its members (positions in the partition), in invoke order.
    members: Vec<Vec<u32>>,
    /// Per class: how many of its members (the first ones) are linearized.
    used: Vec<usize>,
}

impl Classes {
    fn new<M: Model>(ops: &[SearchOp<'_, M>]) -> Self {
        let mut ids: HashMap<&M::Input, usize> = HashMap::new();
        let mut classes = Classes { of: Vec::new(), members: Vec::new(), used: Vec::new() };
        for (i, op) in ops.iter().enumerate() {
            if op.output.is_none() {
                let next = ids.len();
                let class = *ids.entry(op.input).or_insert(next);
                if class == classes.members.len() {
                    classes.members.push(Vec::new());
                    classes.used.push(0);
                }
                classes.members[class].push(i as u32);
                classes.of.push(class);
            }
        }
        classes
    }

    /// The next unused member of each class invoked by `deadline`: the unknown operations
    /// worth trying next.
    fn next<'a, M: Model>(&'a self, ops: &'a [SearchOp<'_, M>], deadline: u64) -> impl Iterator<Item = u32> + 'a {
        self.members
            .iter()
            .zip(&self.used)
            .filter_map(move |(members, &used)| members.get(used).copied())
            .filter(move |&i| ops[i as usize].invoke <= deadline)
    }

    fn use_one(&mut self, id: usize) {
        self.used[self.of[id]] += 1;
    }

    fn unuse_one(&mut self, id: usize) {
        self.used[self.of[id]] -= 1;
    }
}

/// Unknown calls still to try at one configuration, with the state after each, last first.
type Choices<S> = Vec<(u32, S)>;

pub(crate) fn search<M: Model>(model: &M, ops: &[SearchOp<'_, M>], max_steps: Option<u64>) -> SearchOutcome {
    assert!(ops.len() < (u32::MAX / 2) as usize, "a partition holds fewer than 2^31 operations");
    // Each operation's number among the required or among the unknown ones.
    let mut counts = (0, 0);
    let ids: Vec<usize> = ops
        .iter()
        .map(|op| {
            let count = if op.output.is_some() { &mut counts.0 } else { &mut counts.1 };
            *count += 1;
            *count - 1
        })
        .collect();
    let required_ops: Vec<u32> = (0..ops.len() as u32).filter(|&i| ops[i as usize].output.is_some()).collect();
    let mut required_left = required_ops.len();
    let mut events = Events::new(ops, &required_ops);
    let mut required = Linearized::new(counts.0);
    let mut unknown = UnknownSet::default();
    let mut classes = Classes::new(ops);
    let mut cache = Cache { seen: HashMap::new() };
    let mut state = model.init();
    cache.insert(&required.key(), state.clone(), &unknown);
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    // Per configuration on the path (the root, then one per frame): its unknown choices not
    // explored yet, once its required ones are done.
    let mut unknown_choices: Vec<Option<Choices<M::State>>> = vec![None];
    let mut trail = Trail::default();
    let mut longest = (0usize, NIL);
    let mut steps = 0u64;
    let mut node = events.next[HEAD as usize];

    while required_left > 0 {
        if max_steps.is_some_and(|max| steps >= max) {
            return SearchOutcome::GaveUp { steps };
        }
        steps += 1;
        let choices = unknown_choices.last_mut().and_then(Option::as_mut);
        // The operation to linearize next (with its call node, NIL if unknown) and the state
        // after it, or `None` when nothing is left to try here.
        let chosen = match choices {
            None if node != NIL && events.is_call(node) => {
                // The required pass: try the next call.
                let i = events.op[node as usize];
                let id = ids[i as usize];
                let (next_state, output) = model.step(&state, ops[i as usize].input);
                if ops[i as usize].output != Some(&output) {
                    node = events.next[node as usize];
                    continue;
                }
                required.insert(id);
                if !cache.insert(&required.key(), next_state.clone(), &unknown) {
                    required.remove(id);
                    node = events.next[node as usize];
                    continue;
                }
                required_left -= 1;
                Some((i, node, next_state))
            }
            None => {
                // Required calls done: record every unknown choice here, then explore them.
                let mut found = Vec::new();
                let required_key = required.key();
                for i in classes.next(ops, events.deadline()) {
                    let id = ids[i as usize];
                    steps += 1;
                    let next_state = model.step(&state, ops[i as usize].input).0;
                    unknown.insert(id);
                    if cache.insert(&required_key, next_state.clone(), &unknown) {
                        found.push((i, next_state));
                    }
                    unknown.remove(id);
                }
                found.reverse();
                if let Some(slot) = unknown_choices.last_mut() {
                    *slot = Some(found);
                }
                continue;
            }
            Some(choices) => choices.pop().map(|(i, next_state)| {
                unknown.insert(ids[i as usize]);
                classes.use_one(ids[i as usize]);
                (i, NIL, next_state)
            }),
        };
        if let Some((i, call, next_state)) = chosen {
            let parent = stack.last().map_or(NIL, |frame| frame.trail);
            stack.push(Frame {
                op: i,
                call,
                state: std::mem::replace(&mut state, next_state),
                trail: trail.push(i, parent),
            });
            unknown_choices.push(None);
            if call != NIL {
                events.lift(call);
            }
            node = events.next[HEAD as usize];
            continue;
        }
        // Nothing left to try here: undo the last choice.
        if stack.len() > longest.0 {
            longest = (stack.len(), stack.last().map_or(NIL, |frame| frame.trail));
        }
        let Some(frame) = stack.pop() else {
            return SearchOutcome::Violation { steps, longest: trail.path(longest.1) };
        };
        unknown_choices.pop();
        state = frame.state;
        let id = ids[frame.op as usize];
        if frame.call != NIL {
            events.unlift(frame.call);
            required.remove(id);
            required_left += 1;
            node = events.next[frame.call as usize];
        } else {
            // The parent is in its unknown pass; its next choice is on its list.
            unknown.remove(id);
            classes.unuse_one(id);
        }
    }
    SearchOutcome::Linearizable { steps }
}
