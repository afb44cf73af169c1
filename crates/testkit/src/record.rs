//! Recording a history while clients run: the recorder stamps invoke and complete times from
//! one clock, so they are comparable across clients.
//!
//! Read the clock as close to the request as possible: invoke just before sending, complete
//! just after the answer arrived. A wider interval only makes the check more permissive; a
//! narrower one (stamping invoke after the request left) can report a violation that is not
//! there. Concurrent clients share one recorder behind a mutex.

use crate::history::{History, OpResult, Operation};
use crate::model::Model;

/// A source of times. Any `FnMut() -> u64` is one (MadSim's elapsed nanoseconds, say); it
/// must not go backwards.
pub trait Clock {
    fn now(&mut self) -> u64;
}

impl<F: FnMut() -> u64> Clock for F {
    fn now(&mut self) -> u64 {
        self()
    }
}

/// A logical clock: 0, 1, 2, … one tick per reading, so no two events share a time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ticks {
    next: u64,
}

impl Clock for Ticks {
    fn now(&mut self) -> u64 {
        let now = self.next;
        self.next += 1;
        now
    }
}

/// An invoked operation awaiting its result. Dropping it leaves the operation `Unknown`,
/// which is the truth when a client dies mid-request.
#[must_use = "an operation that is never completed stays unknown"]
#[derive(Debug, PartialEq, Eq)]
pub struct Pending {
    index: usize,
}

pub struct Recorder<M: Model, C: Clock = Ticks> {
    clock: C,
    history: History<M>,
}

impl<M: Model> Default for Recorder<M, Ticks> {
    fn default() -> Self {
        Recorder::new(Ticks::default())
    }
}

impl<M: Model, C: Clock> Recorder<M, C> {
    pub fn new(clock: C) -> Self {
        Recorder { clock, history: History::new() }
    }

    /// Records that `client` is about to send `input`.
    pub fn invoke(&mut self, client: u64, input: M::Input) -> Pending {
        let invoke = self.clock.now();
        let index = self.history.len();
        self.history.push(Operation::unknown(client, input, invoke, None));
        Pending { index }
    }

    /// Records the result of an operation this recorder's [`Recorder::invoke`] returned.
    pub fn complete(&mut self, pending: Pending, result: OpResult<M::Output>) {
        let complete = self.clock.now();
        if let Some(op) = self.history.op_mut(pending.index) {
            op.complete = Some(complete);
            op.result = result;
        }
    }

    pub fn ok(&mut self, pending: Pending, output: M::Output) {
        self.complete(pending, OpResult::Ok(output));
    }

    pub fn fail(&mut self, pending: Pending) {
        self.complete(pending, OpResult::Fail);
    }

    pub fn unknown(&mut self, pending: Pending) {
        self.complete(pending, OpResult::Unknown);
    }

    pub fn history(&self) -> &History<M> {
        &self.history
    }

    /// The history so far; operations still pending are `Unknown`.
    pub fn finish(self) -> History<M> {
        self.history
    }
}
