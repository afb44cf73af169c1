//! Handling one raft-rs Ready, in the order raft-rs requires: send the leader's messages
//! (replication runs in parallel with the leader's own write), install a snapshot, apply the
//! entries already committed, append new entries and hard state to the write-ahead log with one
//! write and one `fdatasync`, then send the messages that depended on that write, then advance.

use blixard_core::{Applied, Command, Envelope};
use raft::eraftpb::{ConfChangeV2, Entry};
use raft::StateRole;

use crate::driver::{Driver, OpenTxn, MAX_OPEN_ENTRIES};
use crate::error::StorageError;
use crate::hot::HotStore;
use crate::overlay::OverlayStore;
use crate::sm::{ReadView, TxnStore};
use crate::transport::Transport;
use crate::types::{NodeStatus, Role};

impl<T: Transport> Driver<T> {
    pub(crate) fn on_ready(&mut self) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut rd = self.raw.ready();
        // Entries committed here are already durable (on a majority, ours included), so their
        // order against the rest of the Ready is free. The leader applies them before it waits
        // for the fsync of new entries, so their clients do not wait for it either; with no new
        // entries to replicate, even before sending its messages (then only commit-index updates
        // and heartbeats, which no client waits for). A follower persists and acknowledges new
        // entries first: the leader's next commit, and so every client, waits on that
        // acknowledgement; its own apply does not.
        let leader = self.raw.raft.state == StateRole::Leader;
        let mut committed = rd.take_committed_entries();
        if leader && rd.entries().is_empty() && rd.snapshot().is_empty() {
            self.apply_committed(std::mem::take(&mut committed), None)?;
        }
        if !rd.messages().is_empty() {
            self.transport.send(rd.take_messages());
        }
        for rs in rd.take_read_states() {
            let ctx = u64::from_be_bytes(rs.request_ctx.as_slice().try_into().unwrap_or_default());
            self.engine.on_read_state(ctx, rs.index);
        }

        if !rd.snapshot().is_empty() {
            // The state first, durably; then the log restarts at it.
            self.commit_state(false)?;
            let meta = rd.snapshot().get_metadata();
            tracing::info!(index = meta.index, term = meta.term, "installing snapshot");
            self.raw.mut_store().install_snapshot(rd.snapshot())?;
            self.observed.with(|o| o.snapshot_installed());
            self.applied = meta.index;
            self.known.reset();
            self.state_version_tx.send_replace(self.applied);
            // Writes waiting here may be inside the snapshot: their outcomes are in its session
            // table (answered now), or they are proposed again.
            let now = self.now();
            let view = ReadView::begin(&self.db)?;
            self.engine.on_snapshot(now, |k| {
                blixard_core::session::lookup(&view, k).ok().flatten().map(|(index, outcome)| Applied {
                    index,
                    outcome,
                    duplicate: true,
                })
            });
        }
        if leader {
            self.apply_committed(std::mem::take(&mut committed), None)?;
        }

        self.last_append = rd.entries().len();
        if !rd.entries().is_empty() || rd.hs().is_some() {
            self.appended_bytes += rd.entries().iter().map(|e| e.data.len() as u64).sum::<u64>();
            self.known.appended(rd.entries());
            // raft-rs says when durability is required (new entries, term or vote); a commit
            // index alone can be relearned after a crash, so it is written without an fsync.
            let start = std::time::Instant::now();
            // A failure (a full disk, a failed fsync) stops the loop, and the node with it: the
            // error names the file and the cause, never "corrupt".
            self.raw.mut_store().persist_log(rd.entries(), rd.hs(), rd.must_sync())?;
            let n = rd.entries().len();
            self.observed.with(|o| o.wal_persist(start.elapsed(), n, rd.must_sync()));
        }
        self.transport.send(rd.take_persisted_messages());
        self.apply_committed(committed, None)?;

        let mut light = self.raw.advance(rd);
        self.transport.send(light.take_messages());
        self.apply_committed(light.take_committed_entries(), light.commit_index())?;
        self.raw.advance_apply();
        let now = self.now();
        let (leader, term) = (self.leader_id(), self.raw.raft.term);
        self.engine.on_leader(now, leader, term);
        self.engine.on_applied_index(self.applied);
        self.effects()?;
        self.publish();
        Ok(())
    }

    /// Applies committed entries in the open state transaction and hands their outcomes to the
    /// engine (see [`OpenTxn`] for when it is committed); `commit` records a commit index learned
    /// from a light ready.
    fn apply_committed(&mut self, entries: Vec<Entry>, commit: Option<u64>) -> Result<(), StorageError> {
        if let Some(c) = commit {
            self.raw.mut_store().set_commit(c);
        }
        if entries.is_empty() {
            return Ok(());
        }
        let n = entries.len();
        self.observed.with(|o| o.applied_batch(n));
        // A configuration change goes into a transaction (with raft's conf state); and the
        // overlay does not grow without bound.
        let too_big = self.checkpoint.as_ref().is_some_and(|c| c.overlay.len() >= crate::checkpoint::MAX_OVERLAY);
        if self.checkpointing() && (too_big || crate::apply::has_conf_change(&entries)) {
            self.finish_checkpoint()?;
        }
        let batch = if let Some(cp) = self.checkpoint.as_mut() {
            let mut st = OverlayStore { base: &cp.base, overlay: &mut cp.overlay, tally: Default::default() };
            let batch = crate::apply::apply_entries(&mut self.raw, &mut st, entries, &mut self.applied)?;
            cp.version = batch.touched.or(cp.version);
            if batch.touched.is_some() {
                self.commit_state(false)?;
            }
            batch
        } else {
            let mut open = match self.open.take() {
                Some(o) => o,
                None => OpenTxn::begin(&self.db)?,
            };
            open.entries += entries.len();
            let mut st = HotStore::new(TxnStore::new(&open.txn), &mut open.hot);
            let result = crate::apply::apply_entries(&mut self.raw, &mut st, entries, &mut self.applied);
            drop(st);
            let full = open.entries >= MAX_OPEN_ENTRIES;
            let touched = result.as_ref().ok().and_then(|b| b.touched);
            open.version = touched.or(open.version);
            self.open = Some(open);
            let batch = result?;
            if let Some(to) = self.compaction_due() {
                // A durable commit (a checkpoint) makes the log before `to` redundant.
                self.start_checkpoint(to)?;
                self.appended_bytes = 0;
            } else if touched.is_some() || full {
                self.commit_state(false)?;
            }
            batch
        };
        self.known.applied(self.applied);
        if batch.undecodable > 0 {
            self.undecodable.fetch_add(batch.undecodable, std::sync::atomic::Ordering::Relaxed);
        }
        if !batch.tally.is_empty() {
            self.observed.with(|o| o.scheduled(&batch.tally));
        }
        for (key, applied) in &batch.answers {
            self.engine.on_applied(*key, applied);
        }
        // Answered at once: a leader applies before it waits for its own fsync.
        self.effects()
    }

    /// Where to compact the log to, once past the configured thresholds. The state itself is
    /// the snapshot: a follower that needs compacted entries gets the applied state instead.
    fn compaction_due(&mut self) -> Option<u64> {
        if self.checkpointing() {
            return None;
        }
        let first = self.raw.store().first_index_cached();
        let in_log = self.applied.saturating_sub(first) + 1;
        if in_log <= self.cfg.compact_entries && self.appended_bytes <= self.cfg.compact_bytes {
            return None;
        }
        let to = self.applied.saturating_sub(self.cfg.keep_entries) + 1;
        if to > first {
            Some(to)
        } else {
            self.appended_bytes = 0;
            None
        }
    }

    /// On the leader: a learner whose log has caught up becomes a voter, one change at a time.
    /// The proposal needs no answer (a repeat is refused by the membership rules).
    pub(crate) fn promote_learners(&mut self) {
        if self.raw.raft.state != StateRole::Leader || self.raw.raft.has_pending_conf() {
            return;
        }
        // Caught up: it acknowledged entries past our first index (so it holds the snapshot or
        // the whole log) and is within a few entries of our last one.
        let last = self.raw.raft.raft_log.last_index();
        let first = self.raw.store().first_index_cached();
        let learners = self.raw.store().conf_state().learners.clone();
        let Some(id) = learners
            .into_iter()
            .find(|id| self.raw.raft.prs().get(*id).is_some_and(|pr| pr.matched >= first && pr.matched + 16 >= last))
        else {
            return;
        };
        let change = blixard_core::MembershipChange { kind: blixard_core::ChangeKind::AddVoter, id };
        let cc: ConfChangeV2 = crate::apply::conf_change_for(change);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let env = Envelope { session: None, now_ms, command: Command::PromoteVoter { id } };
        match self.raw.propose_conf_change(env.encode(), cc) {
            Ok(()) => tracing::info!(id, "promoting caught-up learner to voter"),
            Err(e) => tracing::debug!(id, "cannot promote learner yet: {e}"),
        }
    }

    pub(crate) fn publish(&mut self) {
        let r = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let s = NodeStatus {
            id: self.cfg.id,
            role: Role::of(r.state),
            term: r.term,
            leader_id: self.leader_id(),
            commit: r.raft_log.committed,
            applied: self.applied,
            last_index: r.raft_log.last_index(),
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
        };
        self.status_tx.send_if_modified(|old| {
            if *old != s {
                *old = s;
                true
            } else {
                false
            }
        });
    }
}
