//! Client sessions: what makes every write exactly-once (Raft thesis §6.3, LogCabin).
//!
//! Each mutating request carries its client's id, a sequence number, and the lowest sequence
//! number the client still waits for (every lower one it has seen answered). The replicated
//! state keeps, per client, the outcome of each sequence number it has applied and the client
//! has not yet seen; a command that arrives again (a retry, a proposal re-forwarded after a
//! leader change, a duplicate entry in the log) is answered with the recorded outcome instead
//! of being applied twice. Everything here is a function of the replicated state and the
//! command, so every node decides the same.
//!
//! **Bounds.** A session keeps at most [`MAX_OUTSTANDING`] unseen outcomes (more in flight is
//! refused, nothing applied). A session idle for [`SESSION_TTL_MS`] of cluster time expires; at
//! most [`MAX_SESSIONS`] exist, and a new one evicts the least recently active only if that one
//! is idle for at least [`MIN_IDLE_EVICT_MS`] (otherwise the new one is refused). Cluster time
//! is the largest proposer clock seen in the log (`Envelope::now_ms`), so expiry is
//! deterministic. A few expired sessions are swept per applied command.
//!
//! **What an expired session means.** A command of an unknown client is applied as the start
//! of a new session only if the client has never seen an answer (`first_unanswered == 1`);
//! otherwise its session expired and the command is refused as [`crate::CommandError::SessionExpired`]:
//! its outcome, if it was applied earlier, is no longer known. A retry therefore stays
//! exactly-once as long as it comes within the session's idle time (10 minutes, and at least
//! one minute when the session table is full).

use serde::{Deserialize, Serialize};

use crate::command::{CommandError, Outcome};
use crate::store::{Store, StoreError, Table};

/// How long a client session survives without a command, in cluster time.
pub const SESSION_TTL_MS: u64 = 10 * 60 * 1000;
/// Most sessions kept.
pub const MAX_SESSIONS: u64 = 100_000;
/// A full table evicts only sessions idle at least this long.
pub const MIN_IDLE_EVICT_MS: u64 = 60 * 1000;
/// Most outcomes a session keeps that its client has not seen yet (requests in flight).
pub const MAX_OUTSTANDING: usize = 256;
/// Expired sessions removed at most each time cluster time enters a new
/// [`TIME_BUCKET_MS`] bucket (see [`advance`]).
const SWEEP_PER_BUCKET: usize = 256;
/// Activity is recorded in the time index at this granularity.
const TIME_BUCKET_MS: u64 = 1000;

/// Which client sent a command, and which of its commands it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Session {
    pub client: u128,
    /// 1, 2, 3, ... per client.
    pub seq: u64,
    /// The lowest `seq` whose answer the client has not seen (every lower one it has).
    pub first_unanswered: u64,
}

impl Session {
    pub fn key(&self) -> SessionKey {
        SessionKey { client: self.client, seq: self.seq }
    }
}

/// What identifies one client command, whichever node or entry carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionKey {
    pub client: u128,
    pub seq: u64,
}

/// One client's session in the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Row {
    /// Cluster time of the last command, rounded down to [`TIME_BUCKET_MS`].
    active_bucket: u64,
    /// Every `seq` below this was answered to the client.
    acked: u64,
    /// `(seq, index, outcome)` of applied commands the client may not have seen, by `seq`.
    results: Vec<(u64, u64, Outcome)>,
}

/// What [`check`] read of the client's session, handed to [`record`] so that a command reads
/// and decodes its session row once.
#[derive(Debug, Default)]
pub struct Prior {
    row: Option<Row>,
}

/// What the session table says about a command before it is applied.
pub enum Check {
    /// Apply it (and [`record`] the outcome with this).
    Apply(Prior),
    /// Already applied at `index`: answer with the recorded outcome.
    Duplicate { index: u64, outcome: Outcome },
    /// Refuse it without applying.
    Refuse(CommandError),
}

fn client_key(client: u128) -> [u8; 16] {
    client.to_be_bytes()
}

fn time_key(bucket: u64, client: u128) -> [u8; 24] {
    let mut k = [0; 24];
    k[..8].copy_from_slice(&bucket.to_be_bytes());
    k[8..].copy_from_slice(&client.to_be_bytes());
    k
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

fn row(store: &impl Store, client: u128) -> Result<Option<Row>, StoreError> {
    match store.get(Table::Sessions, &client_key(client))? {
        None => Ok(None),
        Some(b) => postcard::from_bytes(&b)
            .map(Some)
            .map_err(|e| StoreError(format!("undecodable session {client:032x}: {e}"))),
    }
}

const META_CLOCK: &[u8] = b"clock";
const META_SESSIONS: &[u8] = b"sessions";

fn meta_u64(store: &impl Store, key: &[u8]) -> Result<u64, StoreError> {
    Ok(store.get(Table::Meta, key)?.and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok()).map_or(0, u64::from_be_bytes))
}

fn set_meta_u64(store: &mut impl Store, key: &[u8], v: u64) -> Result<(), StoreError> {
    store.put(Table::Meta, key, &v.to_be_bytes())
}

/// Cluster time: the largest proposer clock seen so far (it never goes back).
pub fn advance_clock(store: &mut impl Store, now_ms: u64) -> Result<u64, StoreError> {
    let clock = meta_u64(store, META_CLOCK)?;
    if now_ms > clock {
        set_meta_u64(store, META_CLOCK, now_ms)?;
        return Ok(now_ms);
    }
    Ok(clock)
}

/// Cluster time advanced by a command's proposer clock, and, the first time it enters a new
/// second ([`TIME_BUCKET_MS`]), a sweep of expired sessions. Sweeping on every command scanned
/// the session time index once per command (about 3 % of a node's CPU under a write load);
/// once per second of cluster time removes up to [`SWEEP_PER_BUCKET`] a second, far more
/// than clients can open, and is as deterministic (cluster time is replicated state).
pub fn advance(store: &mut impl Store, now_ms: u64) -> Result<u64, StoreError> {
    let clock = meta_u64(store, META_CLOCK)?;
    if now_ms <= clock {
        return Ok(clock);
    }
    set_meta_u64(store, META_CLOCK, now_ms)?;
    if now_ms / TIME_BUCKET_MS > clock / TIME_BUCKET_MS {
        sweep(store, now_ms)?;
    }
    Ok(now_ms)
}

/// How many sessions exist.
pub fn count(store: &impl Store) -> Result<u64, StoreError> {
    meta_u64(store, META_SESSIONS)
}

fn remove(store: &mut impl Store, client: u128, bucket: u64) -> Result<(), StoreError> {
    if store.delete(Table::Sessions, &client_key(client))? {
        store.delete(Table::SessionTimes, &time_key(bucket, client))?;
        let n = count(store)?;
        set_meta_u64(store, META_SESSIONS, n.saturating_sub(1))?;
    }
    Ok(())
}

/// The least recently active session: its bucket and client.
fn oldest(store: &impl Store) -> Result<Option<(u64, u128)>, StoreError> {
    let Some((k, _)) = store.scan(Table::SessionTimes, b"", 1)?.into_iter().next() else { return Ok(None) };
    // A damaged store (or an imported snapshot) may hold any key here: check its length
    // before slicing it.
    let k: [u8; 24] = k
        .as_slice()
        .try_into()
        .map_err(|_| StoreError(format!("bad session time key of {} bytes (must be 24)", k.len())))?;
    let mut bucket = [0; 8];
    bucket.copy_from_slice(&k[..8]);
    let mut client = [0; 16];
    client.copy_from_slice(&k[8..]);
    Ok(Some((u64::from_be_bytes(bucket), u128::from_be_bytes(client))))
}

/// Removes sessions idle past their time to live, up to [`SWEEP_PER_BUCKET`].
fn sweep(store: &mut impl Store, now_ms: u64) -> Result<(), StoreError> {
    for _ in 0..SWEEP_PER_BUCKET {
        match oldest(store)? {
            Some((bucket, client)) if bucket.saturating_add(TIME_BUCKET_MS + SESSION_TTL_MS) <= now_ms => {
                remove(store, client, bucket)?
            }
            _ => break,
        }
    }
    Ok(())
}

/// Decides what to do with a command of session `s` at cluster time `now_ms`.
pub fn check(store: &mut impl Store, s: &Session, now_ms: u64) -> Result<Check, StoreError> {
    let Some(r) = row(store, s.client)? else {
        if s.first_unanswered > 1 {
            return Ok(Check::Refuse(CommandError::SessionExpired));
        }
        if count(store)? >= MAX_SESSIONS {
            match oldest(store)? {
                Some((bucket, client)) if bucket.saturating_add(MIN_IDLE_EVICT_MS) <= now_ms => {
                    remove(store, client, bucket)?
                }
                _ => {
                    return Ok(Check::Refuse(CommandError::Exhausted(format!(
                        "too many client sessions (at most {MAX_SESSIONS}, all active within a minute)"
                    ))))
                }
            }
        }
        return Ok(Check::Apply(Prior { row: None }));
    };
    if s.seq < r.acked {
        return Ok(Check::Refuse(CommandError::FailedPrecondition(format!(
            "request {} of this client was already answered",
            s.seq
        ))));
    }
    if let Some((_, index, outcome)) = r.results.iter().find(|(q, _, _)| *q == s.seq) {
        return Ok(Check::Duplicate { index: *index, outcome: outcome.clone() });
    }
    let still_kept = r.results.iter().filter(|(q, _, _)| *q >= s.first_unanswered).count();
    if still_kept >= MAX_OUTSTANDING {
        return Ok(Check::Refuse(CommandError::Exhausted(format!(
            "too many requests in flight for one client session (at most {MAX_OUTSTANDING})"
        ))));
    }
    Ok(Check::Apply(Prior { row: Some(r) }))
}

/// Records the outcome of a command of session `s` applied at `index`, and forgets the outcomes
/// the client has seen. `prior` is what [`check`] read of the session (nothing but the command
/// itself ran since, and commands never touch sessions).
pub fn record(
    store: &mut impl Store,
    s: &Session,
    index: u64,
    outcome: &Outcome,
    now_ms: u64,
    prior: Prior,
) -> Result<(), StoreError> {
    let bucket = now_ms - now_ms % TIME_BUCKET_MS;
    let mut r = match prior.row {
        Some(r) => r,
        None => {
            set_meta_u64(store, META_SESSIONS, count(store)? + 1)?;
            store.put(Table::SessionTimes, &time_key(bucket, s.client), &[])?;
            Row { active_bucket: bucket, ..Row::default() }
        }
    };
    if bucket > r.active_bucket {
        store.delete(Table::SessionTimes, &time_key(r.active_bucket, s.client))?;
        store.put(Table::SessionTimes, &time_key(bucket, s.client), &[])?;
        r.active_bucket = bucket;
    }
    r.acked = r.acked.max(s.first_unanswered);
    let acked = r.acked;
    r.results.retain(|(q, _, _)| *q >= acked);
    let at = r.results.partition_point(|(q, _, _)| *q < s.seq);
    r.results.insert(at, (s.seq, index, outcome.clone()));
    store.put(Table::Sessions, &client_key(s.client), &encode(&r))
}

/// The recorded outcome of `key`, if the session table still has it (for a node that learned
/// the state from a snapshot instead of applying the entry itself).
pub fn lookup(store: &impl crate::ReadStore, key: SessionKey) -> Result<Option<(u64, Outcome)>, StoreError> {
    let Some(b) = store.get(Table::Sessions, &client_key(key.client))? else { return Ok(None) };
    let r: Row = postcard::from_bytes(&b).map_err(|e| StoreError(format!("undecodable session: {e}")))?;
    Ok(r.results.into_iter().find(|(q, _, _)| *q == key.seq).map(|(_, i, o)| (i, o)))
}

/// A client's side of a session: hands out sequence numbers and knows which answers it has
/// seen. Used by every client (the CLI, the benchmark, a node's own proposals).
#[derive(Debug)]
pub struct ClientSession {
    client: u128,
    next: u64,
    /// Sequence numbers handed out and not yet answered.
    outstanding: std::collections::BTreeSet<u64>,
}

impl ClientSession {
    /// A session with the given random id (never reuse one across processes).
    pub fn new(client: u128) -> Self {
        ClientSession { client, next: 1, outstanding: Default::default() }
    }

    pub fn client(&self) -> u128 {
        self.client
    }

    /// The session for the next command. Retrying that command reuses the returned value.
    pub fn begin(&mut self) -> Session {
        let seq = self.next;
        self.next += 1;
        self.outstanding.insert(seq);
        Session { client: self.client, seq, first_unanswered: self.first_unanswered() }
    }

    /// The command with `seq` got its answer (or will never be retried).
    pub fn end(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
    }

    /// The lowest sequence number not yet answered.
    pub fn first_unanswered(&self) -> u64 {
        self.outstanding.first().copied().unwrap_or(self.next)
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
