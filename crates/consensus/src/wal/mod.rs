//! The Raft log and hard state as an append-only, segmented write-ahead log.
//!
//! The state machine lives in redb; the log does not, because a durable redb commit rewrites a
//! copy-on-write path of B-tree pages (~17 pages per commit here) where a log needs one sequential
//! append and one `fdatasync`. Each [`Wal::sync`] writes every record buffered since the last one
//! with a single `write` and makes it durable with a single `fdatasync`.
//!
//! **Files.** `DIR/{seq:016x}.wal`, each starting with a `Start` record that names the entry
//! just before the segment's first one, the data dir's identity and the hard state at that
//! moment. A segment is [`SEGMENT_BYTES`] of zeros written (and synced) before any record goes
//! in, so an `fdatasync` of an append flushes only the data blocks: appending past the end of a
//! file makes every sync also persist the new size, and `fallocate`d space is "unwritten"
//! extents, whose first write makes the sync also persist the extent tree — either way one more
//! synchronous write per sync (measured here: 1.5 block requests per small append + `fdatasync`
//! into a `fallocate`d file, 1.0 into a zero-filled one, ~15 % less time per sync). See
//! [`spare`] for how the zeros are written ahead.
//!
//! **Records** ([`record`]): checksummed, with durability claims that tell a torn tail (dropped:
//! it was never acknowledged) from damage to acknowledged data (the log refuses to open, naming
//! the file and offset). Anywhere but the newest segment, any bad record is damage.
//!
//! **Replay** ([`replay`]): segments in sequence order, records in file order.
//!
//! **Overwrites.** A follower may replace a conflicting suffix of its log, even entries written
//! before the active segment began. Such an append is preceded by a `Truncate` record, and the
//! segments' recorded starts are lowered to the truncation point, so that a segment is deleted
//! only once every entry it holds that is still part of the log is compacted, and the segment
//! that holds the replacement entries says where they start.
//!
//! Segments are deleted only once every entry they hold is below the compaction point, and the
//! caller compacts only entries whose effects are durable in the state machine (see the driver).

pub mod fs;
mod record;
mod replay;
mod spare;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use crate::error::StorageError;
pub use fs::{Disk, Fs, FsFile, StdFs};
use record::*;
pub use replay::Recovered;
use replay::Replay;
use spare::{create_segment, seg_path, Spare, SPARE};

/// Each segment's preallocated size. A segment may exceed it by one batch of records.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

struct Segment {
    seq: u64,
    /// The index of the entry just before this segment's first one (lowered by overwrites that
    /// reach below it).
    start: u64,
}

/// The log, over the file layer `F` (see [`fs`]).
pub struct Wal<F: Fs = StdFs> {
    fs: F,
    dir: PathBuf,
    /// Older segments, oldest first, then the active one (always last).
    segments: Vec<Segment>,
    active: F::File,
    /// Bytes written to the active segment.
    written: u64,
    /// Bytes of the active segment made durable by a completed `fdatasync`.
    synced: u64,
    /// The largest durability claim written into the active segment.
    claimed: u64,
    /// Records not yet written.
    buf: Vec<u8>,
    /// Whether bytes that need a sync were written since the last `fdatasync`.
    unsynced: bool,
    /// The last entry and hard state as replay would see them (for a rollover's header).
    last: (u64, u64),
    hard_state: HardState,
    ident: Option<u128>,
    spare: Spare<F>,
    /// Why the log stopped accepting writes: a write or sync failed (see [`Wal::flush`]).
    failed: Option<String>,
    /// Rollovers that took the prepared spare (the rest `fallocate`d a segment).
    spares_used: u64,
    segment_bytes: u64,
}

fn sync_dir<F: Fs>(fs: &F, dir: &Path) -> Result<(), StorageError> {
    fs.sync_dir(dir).map_err(StorageError::io("cannot sync directory", dir))
}

impl Wal<StdFs> {
    /// Opens (or creates) the log in `dir` and replays it. A torn tail is cut off; damage to
    /// acknowledged records is an error. The log then continues in a fresh segment.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered), StorageError> {
        Self::open_with(dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with segments of `segment_bytes` (small ones make tests roll over often).
    pub fn open_with(dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovered), StorageError> {
        Wal::open_on(StdFs, dir, segment_bytes)
    }
}

impl<F: Fs> Wal<F> {
    /// [`Wal::open_with`] over the file layer `fs`.
    pub fn open_on(fs: F, dir: &Path, segment_bytes: u64) -> Result<(Wal<F>, Recovered), StorageError> {
        fs.create_dir_all(dir).map_err(StorageError::io("cannot create", dir))?;
        let mut seqs = Vec::new();
        for name in fs.list(dir).map_err(StorageError::io("cannot read", dir))? {
            let Some(stem) = name.strip_suffix(".wal") else { continue };
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();

        let mut replay = Replay::default();
        let mut segments: Vec<Segment> = Vec::new();
        let n = seqs.len();
        for (i, &seq) in seqs.iter().enumerate() {
            let path = seg_path(dir, seq);
            let newest = i + 1 == n;
            let data = fs.read(&path).map_err(StorageError::io("cannot read", &path))?;
            let (recs, valid, end) = records(&data);
            let at = path.display().to_string();
            if let End::Bad { at: bad, why } = end {
                // Only the newest segment can have a torn tail, and only past its last claim.
                let claimed = max_claim(&recs).max(max_claim_after(&data, bad)).unwrap_or(0);
                if !newest || claimed > bad as u64 {
                    let detail = if newest {
                        format!("{why}, yet the log had made data up to byte {claimed} durable")
                    } else {
                        format!("{why} in a segment that was complete")
                    };
                    return Err(StorageError::Damaged { file: path, offset: bad as u64, detail });
                }
                tracing::warn!(segment = %at, at = bad, "dropping a torn write at the end of the log ({why})");
            }
            match recs.first() {
                Some(r) if r.kind == K_START => {
                    let (start, _) =
                        unpair(r.payload).ok_or_else(|| StorageError::Corrupt(format!("{at}: bad header")))?;
                    segments.push(Segment { seq, start });
                }
                // A segment whose header never reached the disk: a crash right after creating it.
                None if newest => {
                    fs.remove(&path).map_err(StorageError::io("cannot remove", &path))?;
                    continue;
                }
                _ => return Err(StorageError::Corrupt(format!("{at}: no segment header"))),
            }
            for r in recs {
                if let Some(x) = replay.apply(r.kind, r.payload, &at)? {
                    lower_starts(&mut segments, x);
                }
            }
            if newest {
                // Cut the torn tail and the unused preallocation, so the segment reads the same
                // after any later crash.
                let f = fs.open_write(&path).map_err(StorageError::io("cannot open", &path))?;
                f.set_len(valid as u64)
                    .and_then(|_| f.sync_all())
                    .map_err(StorageError::io("cannot truncate", &path))?;
            }
        }

        // A spare left by an earlier run may be only partly filled: start it over.
        match fs.remove(&dir.join(SPARE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("cannot remove", &dir.join(SPARE))(e)),
        }
        let seq = segments.last().map_or(0, |s| s.seq + 1);
        // The first segment is filled now (~10 ms for 16 MiB here), not fallocated: a node's
        // first minutes of writes go to it. Not under simulation, where it would only cost time.
        let active = create_segment(&fs, dir, seq, !cfg!(madsim), segment_bytes)?;
        let mut wal = Wal {
            fs,
            dir: dir.to_path_buf(),
            segments,
            active,
            written: 0,
            synced: 0,
            claimed: 0,
            buf: Vec::new(),
            unsynced: false,
            last: replay.last(),
            hard_state: replay.r.hard_state.clone(),
            ident: replay.r.ident,
            spare: Spare::default(),
            failed: None,
            spares_used: 0,
            segment_bytes,
        };
        wal.segments.push(Segment { seq, start: wal.last.0 });
        wal.header();
        wal.write_out(true)?;
        sync_dir(&wal.fs, dir)?;
        wal.spare.start(&wal.fs, dir, segment_bytes);
        Ok((wal, replay.r))
    }

    fn header(&mut self) {
        put_record(&mut self.buf, K_START, &pair(self.last.0, self.last.1));
        if let Some(id) = self.ident {
            put_record(&mut self.buf, K_IDENT, &id.to_le_bytes());
        }
        let hs = self.hard_state.write_to_bytes().unwrap_or_default();
        put_record(&mut self.buf, K_HARD_STATE, &hs);
    }

    /// Opens a batch of records: the first record written after a completed sync is a claim
    /// that the bytes before it are durable (see [`record`]).
    fn start_batch(&mut self) {
        if self.buf.is_empty() && self.synced > self.claimed {
            put_record(&mut self.buf, K_SYNCED, &self.synced.to_le_bytes());
            self.claimed = self.synced;
        }
    }

    /// The identity of the data dir this log belongs to; recorded now (durable at the next
    /// sync) and in every later segment.
    pub fn set_ident(&mut self, id: u128) {
        self.start_batch();
        put_record(&mut self.buf, K_IDENT, &id.to_le_bytes());
        self.ident = Some(id);
    }

    pub fn ident(&self) -> Option<u128> {
        self.ident
    }

    /// Buffers entries; `prev_term` is the term of the entry just before the first one. When
    /// they overwrite a suffix, a truncation record goes first.
    pub fn append(&mut self, entries: &[Entry], prev_term: u64) {
        let Some(first) = entries.first() else { return };
        self.start_batch();
        if first.index <= self.last.0 {
            let at = first.index - 1;
            put_record(&mut self.buf, K_TRUNCATE, &pair(at, prev_term));
            lower_starts(&mut self.segments, at);
        }
        for e in entries {
            let b = e.write_to_bytes().unwrap_or_default();
            put_record(&mut self.buf, K_ENTRY, &b);
        }
        if let Some(e) = entries.last() {
            self.last = (e.index, e.term);
        }
    }

    pub fn set_hard_state(&mut self, hs: &HardState) {
        self.start_batch();
        put_record(&mut self.buf, K_HARD_STATE, &hs.write_to_bytes().unwrap_or_default());
        self.hard_state = hs.clone();
    }

    fn active_path(&self) -> PathBuf {
        seg_path(&self.dir, self.segments.last().map_or(0, |s| s.seq))
    }

    /// Writes the buffered records; `fdatasync`s when `durable` and something needs it.
    fn write_out(&mut self, durable: bool) -> Result<(), StorageError> {
        if !self.buf.is_empty() {
            let path = self.active_path();
            self.active.write_at(&self.buf, self.written).map_err(StorageError::io("cannot write", &path))?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        if durable && self.unsynced {
            let path = self.active_path();
            #[cfg(feature = "failpoints")]
            crate::failpoints::wal_sync().map_err(StorageError::io("cannot sync", &path))?;
            self.active.sync_data().map_err(StorageError::io("cannot sync", &path))?;
            self.unsynced = false;
            self.synced = self.written;
        }
        Ok(())
    }

    /// Runs a step that writes to the disk, unless an earlier one failed; a failure stops the
    /// log for good. After a failed `fdatasync` the kernel may have dropped the very pages it
    /// was to write and marked them clean, so a second one would succeed without making them
    /// durable (PostgreSQL's "fsyncgate"); after a failed write, what reached the file is
    /// unknown. Either way nothing written since the last completed sync may be acknowledged:
    /// the node must stop, and its next start replays what the disk really holds.
    fn guarded<T>(&mut self, step: impl FnOnce(&mut Self) -> Result<T, StorageError>) -> Result<T, StorageError> {
        if let Some(why) = &self.failed {
            return Err(StorageError::Failed(format!(
                "the raft log in {} stopped after an earlier failure ({why}); restart the node to replay what \
                 the disk holds",
                self.dir.display()
            )));
        }
        let r = step(self);
        if let Err(e) = &r {
            self.failed = Some(chain(e));
        }
        r
    }

    /// Writes the buffered records; `fdatasync`s when `durable` (or leaves them in the page
    /// cache, where they survive a crash of the process but not of the machine). After any
    /// failure every later call fails too (see [`Self::guarded`]).
    pub fn flush(&mut self, durable: bool) -> Result<(), StorageError> {
        self.guarded(|w| {
            w.write_out(durable)?;
            if w.written >= w.segment_bytes {
                w.roll()?;
            }
            Ok(())
        })
    }

    /// Writes and `fdatasync`s everything buffered.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.flush(true)
    }

    /// Writes a claim for the last completed sync if none covers it yet (without a sync of its
    /// own): called when the log goes idle, so that damage to the last acknowledged records is
    /// told from a torn tail after a crash.
    pub fn seal(&mut self) -> Result<(), StorageError> {
        self.guarded(|w| {
            if !w.buf.is_empty() || w.synced <= w.claimed {
                return Ok(());
            }
            let mut b = Vec::with_capacity(CLAIM_LEN);
            put_record(&mut b, K_SYNCED, &w.synced.to_le_bytes());
            let path = w.active_path();
            w.active.write_at(&b, w.written).map_err(StorageError::io("cannot write", &path))?;
            w.written += b.len() as u64;
            w.claimed = w.synced;
            Ok(())
        })
    }

    /// Segment `seq` for a rollover or a reset: the spare, renamed, when its zeros are written;
    /// else a `fallocate`d file (never waits for the spare). A new spare is started by the caller
    /// once the segment is in use.
    fn next_segment(&mut self, seq: u64) -> Result<F::File, StorageError> {
        if let Some(f) = self.spare.take() {
            let path = seg_path(&self.dir, seq);
            match self.fs.rename(&self.dir.join(SPARE), &path) {
                Ok(()) => {
                    self.spares_used += 1;
                    return Ok(f);
                }
                // Nothing was renamed, so nothing is at `path`: make the segment the slow way.
                Err(e) => tracing::warn!("cannot rename the spare log segment to {}: {e}", path.display()),
            }
        }
        create_segment(&self.fs, &self.dir, seq, false, self.segment_bytes)
    }

    /// Makes segment `seq` (starting after `start`) the active one, its header durable.
    fn begin_segment(&mut self, seq: u64, start: u64) -> Result<(), StorageError> {
        self.active = self.next_segment(seq)?;
        (self.written, self.synced, self.claimed) = (0, 0, 0);
        self.segments.push(Segment { seq, start });
        self.header();
        self.write_out(true)?;
        sync_dir(&self.fs, &self.dir)
    }

    /// Makes every byte written to the active segment durable, the claim [`Wal::seal`] wrote
    /// without a sync of its own included: done before the log moves on to a new segment, as
    /// only the newest segment may have a torn tail (a torn claim in an older one was taken for
    /// damage, and the node never started again).
    fn sync_tail(&mut self) -> Result<(), StorageError> {
        self.write_out(true)?;
        if self.written > self.synced {
            let path = self.active_path();
            self.active.sync_data().map_err(StorageError::io("cannot sync", &path))?;
            self.synced = self.written;
        }
        Ok(())
    }

    /// Starts a new segment (the previous one is complete and durable).
    fn roll(&mut self) -> Result<(), StorageError> {
        self.sync_tail()?;
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        self.begin_segment(seq, self.last.0)?;
        self.spare.start(&self.fs, &self.dir, self.segment_bytes);
        Ok(())
    }

    /// Records, durably, that entries up to `(index, term)` are no longer needed, then deletes
    /// every older segment that holds nothing after `index`.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        self.guarded(|w| {
            w.start_batch();
            put_record(&mut w.buf, K_COMPACT, &pair(index, term));
            w.write_out(true)?;
            // Segment k holds entries (start_k, start_{k+1}]; it can go when start_{k+1} <= index.
            let mut gone = 0;
            while gone + 1 < w.segments.len() && w.segments[gone + 1].start <= index {
                gone += 1;
            }
            for s in w.segments.drain(..gone) {
                let path = seg_path(&w.dir, s.seq);
                w.fs.remove(&path).map_err(StorageError::io("cannot remove", &path))?;
            }
            Ok(())
        })
    }

    /// Replaces the whole log by "empty, after `(index, term)`" (a snapshot was installed):
    /// a new segment saying so is made durable before the old ones are deleted.
    pub fn reset(&mut self, index: u64, term: u64, hs: &HardState) -> Result<(), StorageError> {
        self.guarded(|w| {
            w.buf.clear();
            w.sync_tail()?;
            w.last = (index, term);
            w.hard_state = hs.clone();
            let seq = w.segments.last().map_or(0, |s| s.seq + 1);
            let old: Vec<Segment> = std::mem::take(&mut w.segments);
            w.begin_segment(seq, index)?;
            for s in old {
                let path = seg_path(&w.dir, s.seq);
                w.fs.remove(&path).map_err(StorageError::io("cannot remove", &path))?;
            }
            w.spare.start(&w.fs, &w.dir, w.segment_bytes);
            Ok(())
        })
    }

    /// Segment files on disk (for tests and status).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Whether the next segment's zeros are written (for tests).
    #[doc(hidden)]
    pub fn spare_ready(&self) -> bool {
        self.spare.ready()
    }

    /// Rollovers into a prepared spare so far (for tests).
    #[doc(hidden)]
    pub fn spares_used(&self) -> u64 {
        self.spares_used
    }

    /// Appends raw bytes to the active segment, as a crash in the middle of a write would leave
    /// them. For crash-recovery tests only.
    #[doc(hidden)]
    pub fn write_garbage_for_test(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.write_out(true)?;
        let path = self.active_path();
        self.active.write_at(bytes, self.written).map_err(StorageError::io("cannot write", &path))?;
        self.active.sync_data().map_err(StorageError::io("cannot sync", &path))
    }

    /// The active segment's file (for tests that damage it).
    #[doc(hidden)]
    pub fn active_path_for_test(&self) -> PathBuf {
        self.active_path()
    }
}

/// An error with its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Segments recorded as starting after `at` start there now: an overwrite replaced entries
/// from `at + 1` on.
fn lower_starts(segments: &mut [Segment], at: u64) {
    for s in segments.iter_mut().filter(|s| s.start > at) {
        s.start = at;
    }
}
