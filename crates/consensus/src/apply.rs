//! Applying committed entries to the state machine, in the open redb transaction.
//!
//! A normal entry carries an envelope; a configuration-change entry carries a Raft
//! `ConfChangeV2` with the membership command as its context. Whatever an entry holds, every
//! node does the same with it: an entry that does not decode is reported and skipped (never a
//! node that stops, or cannot restart, because of one entry); a configuration change is applied
//! to raft-rs only if the state machine's membership rules accept its command and the change is
//! the one the command describes, so raft's configuration and the member table never disagree.

use blixard_core::state::{self, Begun};
use blixard_core::{Applied, ChangeKind, CommandError, Envelope, MembershipChange, SessionKey};
use protobuf::Message as _;
use raft::eraftpb::{ConfChangeTransition, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::RawNode;
use redb::WriteTransaction;

use crate::error::StorageError;
use crate::overlay::OverlayStore;
use crate::sm::TxnStore;
use crate::storage::DiskStorage;

/// What committed entries are applied into: the open transaction, or, while a checkpoint is
/// made durable, the overlay (see [`crate::overlay`]).
pub(crate) trait Sink: blixard_core::Store {
    /// Records the last applied entry, atomically with the state.
    fn set_applied(&mut self, index: u64, term: u64) -> Result<(), StorageError>;
    /// The transaction a configuration change's conf state is recorded in (only a transaction
    /// sink has one; the driver finishes a checkpoint before it applies a configuration change).
    fn txn(&self) -> Option<&WriteTransaction>;
}

impl Sink for TxnStore<'_> {
    fn set_applied(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        DiskStorage::stage_applied(TxnStore::txn(self), index, term)
    }

    fn txn(&self) -> Option<&WriteTransaction> {
        Some(TxnStore::txn(self))
    }
}

impl Sink for OverlayStore<'_> {
    fn set_applied(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        self.overlay.applied = Some((index, term));
        Ok(())
    }

    fn txn(&self) -> Option<&WriteTransaction> {
        None
    }
}

/// Whether any of `entries` is a configuration change.
pub(crate) fn has_conf_change(entries: &[Entry]) -> bool {
    entries.iter().any(|e| e.get_entry_type() != EntryType::EntryNormal)
}

/// What applying a batch of entries did.
#[derive(Default)]
pub(crate) struct Batch {
    /// The outcome of every entry that carried a client command.
    pub answers: Vec<(SessionKey, Applied)>,
    /// The last entry that changed more than the key/value table.
    pub touched: Option<u64>,
    /// Entries skipped because they do not decode.
    pub undecodable: u64,
    /// The scheduler's counts of these entries.
    pub tally: blixard_core::scheduler::Tally,
}

/// The one change a configuration-change entry makes, or why it is not one Blixard makes.
fn single_change(cc: &ConfChangeV2) -> Result<MembershipChange, String> {
    if cc.get_transition() != ConfChangeTransition::Auto || cc.changes.len() != 1 {
        return Err("joint configuration changes are not supported".into());
    }
    let c = &cc.changes[0];
    let kind = match c.get_change_type() {
        ConfChangeType::AddNode => ChangeKind::AddVoter,
        ConfChangeType::AddLearnerNode => ChangeKind::AddLearner,
        ConfChangeType::RemoveNode => ChangeKind::Remove,
    };
    Ok(MembershipChange { kind, id: c.node_id })
}

/// The Raft configuration change that carries a membership command.
pub(crate) fn conf_change_for(change: MembershipChange) -> ConfChangeV2 {
    let mut single = raft::prelude::ConfChangeSingle::default();
    single.set_change_type(match change.kind {
        ChangeKind::AddLearner => ConfChangeType::AddLearnerNode,
        ChangeKind::AddVoter => ConfChangeType::AddNode,
        ChangeKind::Remove => ConfChangeType::RemoveNode,
    });
    single.node_id = change.id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    cc
}

fn decode_conf_change(e: &Entry) -> Result<ConfChangeV2, String> {
    use raft::prelude::ConfChange;
    use raft_proto::ConfChangeI;
    if e.get_entry_type() == EntryType::EntryConfChange {
        ConfChange::parse_from_bytes(&e.data).map(|cc| cc.into_v2()).map_err(|e| e.to_string())
    } else {
        ConfChangeV2::parse_from_bytes(&e.data).map_err(|e| e.to_string())
    }
}

/// Applies entries after `applied` into `st`, advancing `applied`; raft-rs learns configuration
/// changes through `raw`.
pub(crate) fn apply_entries(
    raw: &mut RawNode<DiskStorage>,
    st: &mut impl Sink,
    entries: Vec<Entry>,
    applied: &mut u64,
) -> Result<Batch, StorageError> {
    let mut out = Batch::default();
    let Some(last) = entries.last() else { return Ok(out) };
    let (last_index, last_term) = (last.index, last.term);
    let me = raw.raft.id;
    for e in entries {
        if e.index <= *applied {
            continue;
        }
        *applied = e.index;
        let conf = e.get_entry_type() != EntryType::EntryNormal;
        if !conf && e.data.is_empty() {
            continue; // a new leader's empty entry
        }
        let raw_env = if conf { &e.context } else { &e.data };
        let env = match Envelope::decode(raw_env) {
            Ok(env) => env,
            Err(err) => {
                // Every node decodes the same bytes the same way: skipping stays deterministic.
                tracing::error!(index = e.index, "skipping an entry that does not decode: {err}");
                out.undecodable += 1;
                continue;
            }
        };
        if !matches!(env.command, blixard_core::Command::KvPut { .. } | blixard_core::Command::KvDelete { .. }) {
            out.touched = Some(e.index);
        }
        let result = if conf { apply_conf(raw, st, &e, &env, me)? } else { state::apply(st, e.index, &env)? };
        if conf && decode_conf_change(&e).is_err() {
            out.undecodable += 1;
        }
        if let Some(s) = env.session {
            out.answers.push((s.key(), result));
        }
    }
    if let Some(t) = st.tally() {
        out.tally = std::mem::take(t);
    }
    // Keep "commit >= applied" true even for commits learned from a light ready.
    raw.mut_store().set_commit(last_index);
    st.set_applied(last_index, last_term)?;
    Ok(out)
}

fn apply_conf(
    raw: &mut RawNode<DiskStorage>,
    st: &mut impl Sink,
    e: &Entry,
    env: &Envelope,
    me: u64,
) -> Result<Applied, StorageError> {
    let refused =
        |why: String| Applied { index: e.index, outcome: Err(CommandError::FailedPrecondition(why)), duplicate: false };
    let cc = match decode_conf_change(e) {
        Ok(cc) => cc,
        Err(err) => {
            tracing::error!(index = e.index, "skipping a configuration change that does not decode: {err}");
            return Ok(refused(format!("undecodable configuration change: {err}")));
        }
    };
    let change = match single_change(&cc) {
        Ok(c) => c,
        Err(why) => return Ok(refused(why)),
    };
    match state::begin(st, e.index, env, Some(&change))? {
        Begun::Done(a) => Ok(a),
        Begun::Go(pending) => {
            let txn = st.txn().ok_or_else(|| {
                StorageError::Corrupt("a configuration change cannot be applied during a checkpoint".into())
            })?;
            let outcome = match raw.apply_conf_change(&cc) {
                Ok(cs) => {
                    raw.mut_store().stage_conf_state(txn, &cs)?;
                    if !cs.voters.contains(&me) && !cs.learners.contains(&me) {
                        tracing::warn!(id = me, "this node was removed from the cluster");
                    }
                    state::run(st, e.index, env)?
                }
                // raft-rs refuses the same way on every node.
                Err(err) => Err(CommandError::FailedPrecondition(format!("membership change refused: {err}"))),
            };
            Ok(state::finish(st, e.index, env, pending, outcome)?)
        }
    }
}
