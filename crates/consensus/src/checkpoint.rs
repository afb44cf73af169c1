//! Checkpoints off the Ready loop: the state machine is made durable (so the log before it can
//! be compacted) by a thread of its own, while the loop goes on applying into an overlay (see
//! [`crate::overlay`] for why and how).

use std::time::Instant;

use redb::Durability;

use crate::driver::{Driver, OpenTxn};
use crate::error::StorageError;
use crate::overlay::Overlay;
use crate::sm::{ReadView, TxnStore};
use crate::storage::DiskStorage;
use crate::transport::Transport;

/// Most changes the overlay holds; past it the loop waits for the checkpoint (a disk so slow
/// that a checkpoint outlasts this many writes should slow writers down, not grow memory).
pub(crate) const MAX_OVERLAY: usize = 200_000;

pub(crate) struct Checkpoint {
    /// Makes everything committed before it durable: an empty durable commit.
    durable: Option<std::thread::JoinHandle<Result<(), StorageError>>>,
    pub base: ReadView,
    pub overlay: Overlay,
    /// The log is compacted to here once the checkpoint is durable.
    compact_to: u64,
    /// The last applied entry in the overlay that changed more than the key/value table.
    pub version: Option<u64>,
    started: Instant,
}

impl<T: Transport> Driver<T> {
    /// Starts a checkpoint, after which the log before `to` may go. Under simulation it is made
    /// in place (a thread would race the simulated clock).
    pub(crate) fn start_checkpoint(&mut self, to: u64) -> Result<(), StorageError> {
        if cfg!(madsim) {
            self.commit_state(true)?;
            self.raw.mut_store().compact_log(to)?;
            self.observed.with(|o| o.compacted());
            return Ok(());
        }
        self.commit_state(false)?;
        let db = self.db.clone();
        let durable = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let mut txn = db.begin_write().map_err(StorageError::db)?;
                txn.set_durability(Durability::Immediate).map_err(StorageError::db)?;
                txn.commit().map_err(StorageError::db)
            })
            .map_err(|e| StorageError::Corrupt(format!("cannot start the checkpoint thread: {e}")))?;
        let base = ReadView::begin(&self.db)?;
        self.checkpoint = Some(Checkpoint {
            durable: Some(durable),
            base,
            overlay: Overlay::default(),
            compact_to: to,
            version: None,
            started: Instant::now(),
        });
        Ok(())
    }

    /// Whether a checkpoint is under way.
    pub(crate) fn checkpointing(&self) -> bool {
        self.checkpoint.is_some()
    }

    /// Completes a checkpoint whose durable commit is done, without waiting for one that is not.
    pub(crate) fn poll_checkpoint(&mut self) -> Result<(), StorageError> {
        let done = self.checkpoint.as_ref().is_some_and(|c| c.durable.as_ref().is_none_or(|h| h.is_finished()));
        if done {
            self.finish_checkpoint()?;
        }
        Ok(())
    }

    /// Waits for the durable commit, compacts the log, and writes the overlay into a new open
    /// transaction.
    pub(crate) fn finish_checkpoint(&mut self) -> Result<(), StorageError> {
        let Some(mut cp) = self.checkpoint.take() else { return Ok(()) };
        if let Some(h) = cp.durable.take() {
            h.join().map_err(|_| StorageError::Corrupt("the checkpoint thread panicked".into()))??;
        }
        let durable_ms = cp.started.elapsed().as_secs_f64() * 1e3;
        let changes = cp.overlay.len();
        drop(cp.base);
        self.raw.mut_store().compact_log(cp.compact_to)?;
        self.observed.with(|o| o.compacted());
        if changes > 0 || cp.overlay.applied.is_some() {
            let open = OpenTxn::begin(&self.db)?;
            {
                let mut st = TxnStore::new(&open.txn);
                for ((table, key), v) in std::mem::take(&mut cp.overlay.writes) {
                    match v {
                        Some(v) => blixard_core::Store::put(&mut st, table, &key, &v)?,
                        None => {
                            blixard_core::Store::delete(&mut st, table, &key)?;
                        }
                    }
                }
                if let Some((i, t)) = cp.overlay.applied {
                    DiskStorage::stage_applied(&open.txn, i, t)?;
                }
            }
            self.open = Some(OpenTxn { entries: changes, version: cp.version, ..open });
        }
        tracing::debug!(to = cp.compact_to, durable_ms, changes, "checkpoint durable; log compacted");
        Ok(())
    }
}
