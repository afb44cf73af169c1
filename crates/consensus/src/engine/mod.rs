//! The driver's policy, without IO: which client writes and reads are waiting, what to propose
//! when, and what to answer. The Ready loop ([`crate::driver`]) feeds it what happened (a
//! request, a leader change, an applied entry, a read index, the time) and carries out the
//! [`Effect`]s it returns.
//!
//! Every write is a client command with a session key (see `blixard_core::session`), and the
//! state machine answers a repeated command with its recorded outcome. That is what lets this
//! engine be simple and safe: a write whose fate is unclear is proposed again — whenever a new
//! leader becomes known, after a snapshot replaced the log, and when it was not applied within
//! [`EngineConfig::retry_ms`] (a forwarded proposal lost on the way) — and it is answered only
//! with the outcome its entry produced, or, at its deadline, "unknown outcome" (when it was
//! ever proposed) or "not applied" (when it never was). Nothing is ever answered "dropped".
//!
//! Reads (ReadIndex) are idempotent: those that arrive in one turn share one read request;
//! they wait for a leader, are asked again of a new one, and are answered once the read index
//! is applied.

use std::collections::BTreeMap;

use blixard_core::{Applied, SessionKey};

use crate::types::ProposeError;

/// Identifies one waiting caller; the driver maps it to its reply channel.
pub type Token = u64;

/// What is proposed for one write: the encoded envelope, and for a membership change the
/// encoded Raft configuration change that carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub data: Vec<u8>,
    pub conf: Option<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Propose these as one Raft message (the leader appends them; a follower forwards them).
    Propose(Vec<Proposal>),
    /// Ask Raft for a read index with this context.
    ReadIndex(u64),
    Write(Token, Result<Applied, ProposeError>),
    /// A read may be served once the state applied so far is visible to readers.
    Read(Token, Result<u64, ProposeError>),
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// A write not applied this long after it was proposed is proposed again.
    pub retry_ms: u64,
    /// Most writes waiting at once; beyond it new ones are refused (back-pressure).
    pub max_pending: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig { retry_ms: 2_000, max_pending: 65_536 }
    }
}

struct Pending {
    proposal: Proposal,
    waiters: Vec<Token>,
    deadline: u64,
    /// When it was last handed to Raft; `None` if never (no leader was known).
    proposed_at: Option<u64>,
}

struct ReadWait {
    tokens: Vec<(Token, u64)>,
}

pub struct Engine {
    cfg: EngineConfig,
    pending: BTreeMap<SessionKey, Pending>,
    /// Submitted this turn, proposed together at [`Engine::flush`].
    fresh: Vec<SessionKey>,
    leader: Option<u64>,
    term: u64,
    /// Reads that arrived this turn (asked together at [`Engine::flush`]), or that wait for a
    /// leader: `(token, deadline)`.
    unasked: Vec<(Token, u64)>,
    /// Reads asked of Raft, by request context.
    asked: BTreeMap<u64, ReadWait>,
    /// Reads that know their index and wait for it to be applied: `(index, token)`.
    ready: Vec<(u64, Token)>,
    next_ctx: u64,
    effects: Vec<Effect>,
}

impl Engine {
    pub fn new(cfg: EngineConfig, first_ctx: u64) -> Self {
        Engine {
            cfg,
            pending: BTreeMap::new(),
            fresh: Vec::new(),
            leader: None,
            term: 0,
            unasked: Vec::new(),
            asked: BTreeMap::new(),
            ready: Vec::new(),
            next_ctx: first_ctx,
            effects: Vec::new(),
        }
    }

    /// Effects produced since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// A client write. The same key submitted again (a client retry through this node while the
    /// first attempt waits) joins the waiting one.
    pub fn submit(&mut self, token: Token, key: SessionKey, proposal: Proposal, deadline: u64) {
        if let Some(p) = self.pending.get_mut(&key) {
            p.waiters.push(token);
            p.deadline = p.deadline.max(deadline);
            return;
        }
        if self.pending.len() >= self.cfg.max_pending {
            let e = ProposeError::Exhausted(format!(
                "too many writes waiting on this node (at most {})",
                self.cfg.max_pending
            ));
            self.effects.push(Effect::Write(token, Err(e)));
            return;
        }
        self.pending.insert(key, Pending { proposal, waiters: vec![token], deadline, proposed_at: None });
        self.fresh.push(key);
    }

    /// A linearizable read barrier.
    pub fn read(&mut self, token: Token, deadline: u64) {
        self.unasked.push((token, deadline));
    }

    /// End of a turn's intake: proposes this turn's writes as one message and asks one read
    /// index for this turn's reads, if a leader is known.
    pub fn flush(&mut self, now: u64) {
        if self.leader.is_none() {
            self.fresh.clear();
            return;
        }
        let keys = std::mem::take(&mut self.fresh);
        self.propose(now, keys);
        self.ask_reads();
    }

    fn propose(&mut self, now: u64, keys: Vec<SessionKey>) {
        let mut batch = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(p) = self.pending.get_mut(&k) {
                p.proposed_at = Some(now);
                batch.push(p.proposal.clone());
            }
        }
        if !batch.is_empty() {
            self.effects.push(Effect::Propose(batch));
        }
    }

    fn propose_all(&mut self, now: u64) {
        self.fresh.clear();
        let keys: Vec<SessionKey> = self.pending.keys().copied().collect();
        self.propose(now, keys);
    }

    fn ask_reads(&mut self) {
        if self.unasked.is_empty() {
            return;
        }
        self.next_ctx += 1;
        let ctx = self.next_ctx;
        self.asked.insert(ctx, ReadWait { tokens: std::mem::take(&mut self.unasked) });
        self.effects.push(Effect::ReadIndex(ctx));
    }

    /// What Raft says about leadership after a turn. A new leader (or a new term) means every
    /// waiting write is proposed to it and every waiting read asked of it: whatever was sent to
    /// the old one may be lost, and a repeat is harmless.
    pub fn on_leader(&mut self, now: u64, leader: Option<u64>, term: u64) {
        if (leader, term) == (self.leader, self.term) {
            return;
        }
        self.leader = leader;
        self.term = term;
        for (_, w) in std::mem::take(&mut self.asked) {
            self.unasked.extend(w.tokens);
        }
        if leader.is_some() {
            self.propose_all(now);
            self.ask_reads();
        }
    }

    /// Raft answered a read request.
    pub fn on_read_state(&mut self, ctx: u64, index: u64) {
        if let Some(w) = self.asked.remove(&ctx) {
            self.ready.extend(w.tokens.into_iter().map(|(t, _)| (index, t)));
        }
    }

    /// An entry carrying `key` was applied here (its outcome, or a duplicate's recorded one).
    pub fn on_applied(&mut self, key: SessionKey, applied: &Applied) {
        if let Some(p) = self.pending.remove(&key) {
            for t in p.waiters {
                self.effects.push(Effect::Write(t, Ok(applied.clone())));
            }
        }
    }

    /// Everything up to `applied` is applied: the reads waiting for it may go.
    pub fn on_applied_index(&mut self, applied: u64) {
        if !self.ready.iter().any(|(i, _)| *i <= applied) {
            return;
        }
        let (done, wait): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.ready).into_iter().partition(|(i, _)| *i <= applied);
        self.ready = wait;
        for (i, t) in done {
            self.effects.push(Effect::Read(t, Ok(i)));
        }
    }

    /// A snapshot replaced the log: entries of waiting writes may be inside it and will never be
    /// applied here. `lookup` reads a key's recorded outcome from the installed state; writes
    /// found there are answered, the others proposed again.
    pub fn on_snapshot(&mut self, now: u64, lookup: impl Fn(SessionKey) -> Option<Applied>) {
        let keys: Vec<SessionKey> = self.pending.keys().copied().collect();
        let mut again = Vec::new();
        for k in keys {
            match lookup(k) {
                Some(a) => self.on_applied(k, &a),
                None => again.push(k),
            }
        }
        if self.leader.is_some() {
            self.propose(now, again);
        }
    }

    /// Deadlines and retries.
    pub fn tick(&mut self, now: u64) {
        let expired: Vec<SessionKey> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(k, _)| *k).collect();
        for k in expired {
            let Some(p) = self.pending.remove(&k) else { continue };
            let e = match p.proposed_at {
                Some(_) => ProposeError::Unknown("not seen applied before the deadline".into()),
                None => ProposeError::Unavailable { leader_id: self.leader },
            };
            for t in p.waiters {
                self.effects.push(Effect::Write(t, Err(e.clone())));
            }
        }
        if self.leader.is_some() {
            let retry = self.cfg.retry_ms;
            let due: Vec<SessionKey> = self
                .pending
                .iter()
                .filter(|(_, p)| p.proposed_at.is_none_or(|at| at + retry <= now))
                .map(|(k, _)| *k)
                .collect();
            self.propose(now, due);
        }
        let leader = self.leader;
        let timeout = |t: Token| Effect::Read(t, Err(ProposeError::Unavailable { leader_id: leader }));
        let (late, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.unasked).into_iter().partition(|(_, d)| *d <= now);
        self.unasked = keep;
        self.effects.extend(late.into_iter().map(|(t, _)| timeout(t)));
        for w in self.asked.values_mut() {
            let (late, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut w.tokens).into_iter().partition(|(_, d)| *d <= now);
            w.tokens = keep;
            self.effects.extend(late.into_iter().map(|(t, _)| timeout(t)));
        }
        self.asked.retain(|_, w| !w.tokens.is_empty());
    }

    /// The node stops: everyone waiting is answered.
    pub fn stop(&mut self) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let e = match p.proposed_at {
                Some(_) => ProposeError::Unknown("the node is shutting down".into()),
                None => ProposeError::Stopped,
            };
            for t in p.waiters {
                self.effects.push(Effect::Write(t, Err(e.clone())));
            }
        }
        let reads = std::mem::take(&mut self.unasked)
            .into_iter()
            .chain(std::mem::take(&mut self.asked).into_values().flat_map(|w| w.tokens))
            .map(|(t, _)| t)
            .chain(std::mem::take(&mut self.ready).into_iter().map(|(_, t)| t))
            .collect::<Vec<_>>();
        for t in reads {
            self.effects.push(Effect::Read(t, Err(ProposeError::Stopped)));
        }
        self.fresh.clear();
    }
}

#[cfg(test)]
mod tests;
