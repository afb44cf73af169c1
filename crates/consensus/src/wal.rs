//! The Raft log and hard state as an append-only, segmented write-ahead log.
//!
//! The state machine lives in redb; the log does not, because a durable redb commit rewrites a
//! copy-on-write path of B-tree pages (~17 pages per commit here) where a log needs one sequential
//! append and one `fdatasync`. Each [`Wal::sync`] writes every record buffered since the last one
//! with a single `write` and makes it durable with a single `fdatasync`.
//!
//! **Files.** `DIR/{seq:016x}.wal`, each starting with a [`Record::Start`] header that names the
//! entry just before the segment's first one, followed by the hard state at that moment.
//! A segment is [`SEGMENT_BYTES`] of zeros written (and synced) before any record goes in, so an
//! `fdatasync` of an append flushes only the data blocks: appending past the end of a file makes
//! every sync also persist the new size, and `fallocate`d space is "unwritten" extents, whose
//! first write makes the sync also persist the extent tree — either way one more synchronous
//! write per sync (measured here: 1.5 block requests per small append + `fdatasync` into a
//! `fallocate`d file, 1.0 into a zero-filled one, ~15 % less time per sync). The zeros for the
//! next segment are written by a background thread into `DIR/spare.tmp` while the active one
//! fills, and renamed into place when it is full, so a rollover never waits for them; if the spare
//! is not ready the new segment is `fallocate`d instead (correct, only slower to sync).
//!
//! **Records.** `len: u32 LE | crc32(kind ++ payload): u32 LE | kind: u8 | payload`. A record of
//! length 0 (the preallocated zeros) ends a segment. In the newest segment, a record cut short or
//! failing its checksum is a write torn by a crash: everything from it on is dropped (it was never
//! synced, so never acknowledged). Anywhere else it is corruption and opening fails.
//!
//! **Replay.** Segments in sequence order, records in file order:
//! - `Start(i, t)`: if the log so far ends at exactly `(i, t)`, nothing changes (a segment
//!   rollover); otherwise the log is reset to "empty, after `(i, t)`" (the first segment after
//!   older ones were deleted, or the segment written when a snapshot replaced the log);
//! - `Entry(e)`: removes every entry at or after `e.index` (a conflicting suffix), then appends `e`;
//! - `HardState(hs)`: the newest one wins;
//! - `Compact(i, t)`: entries up to `i` are dropped; the log now starts after `(i, t)`.
//!
//! Segments are deleted only once every entry they hold is below the compaction point, and the
//! caller compacts only entries whose effects are durable in the state machine (see the driver).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState};

use crate::error::StorageError;

/// Each segment's preallocated size. A segment may exceed it by one batch of records.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

const K_START: u8 = 1;
const K_ENTRY: u8 = 2;
const K_HARD_STATE: u8 = 3;
const K_COMPACT: u8 = 4;
/// Largest record accepted when reading (an entry is at most a few MiB; anything larger is junk).
const MAX_RECORD: usize = 256 * 1024 * 1024;

/// What the log held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
    /// `(index, term)` of the entry just before the first one held.
    pub truncated: (u64, u64),
}

struct Segment {
    seq: u64,
    /// The index of the entry just before this segment's first one.
    start: u64,
}

pub struct Wal {
    dir: PathBuf,
    /// Older segments, oldest first, then the active one (always last).
    segments: Vec<Segment>,
    active: File,
    /// Bytes written to the active segment.
    written: u64,
    /// Records not yet written.
    buf: Vec<u8>,
    /// Whether bytes were written since the last `fdatasync`.
    unsynced: bool,
    /// The last entry and hard state as replay would see them (for a rollover's header).
    last: (u64, u64),
    hard_state: HardState,
    spare: Spare,
    /// Rollovers that took the prepared spare (the rest `fallocate`d a segment).
    spares_used: u64,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Corrupt(format!("{what} {}: {e}", path.display()))
}

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

fn pair(a: u64, b: u64) -> [u8; 16] {
    let mut p = [0; 16];
    p[..8].copy_from_slice(&a.to_le_bytes());
    p[8..].copy_from_slice(&b.to_le_bytes());
    p
}

fn unpair(p: &[u8]) -> Option<(u64, u64)> {
    let p: &[u8; 16] = p.try_into().ok()?;
    Some((u64::from_le_bytes(p[..8].try_into().ok()?), u64::from_le_bytes(p[8..].try_into().ok()?)))
}

fn put_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut h = crc32fast::Hasher::new();
    h.update(&[kind]);
    h.update(payload);
    buf.extend_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    buf.extend_from_slice(&h.finalize().to_le_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Splits a segment's bytes into records; returns them with the length of the valid prefix and
/// whether it stopped at something other than the zero end marker (a torn or corrupt record).
fn records(data: &[u8]) -> (Vec<(u8, &[u8])>, usize, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &data[pos..];
        if rest.len() < 8 {
            return (out, pos, rest.iter().any(|&b| b != 0));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 {
            return (out, pos, false);
        }
        if len > MAX_RECORD || rest.len() < 8 + len {
            return (out, pos, true);
        }
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let body = &rest[8..8 + len];
        if crc32fast::hash(body) != crc {
            return (out, pos, true);
        }
        out.push((body[0], &body[1..]));
        pos += 8 + len;
    }
}

/// The log as replay rebuilds it.
struct Replay {
    r: Recovered,
}

impl Replay {
    fn last(&self) -> (u64, u64) {
        self.r.entries.last().map(|e| (e.index, e.term)).unwrap_or(self.r.truncated)
    }

    fn apply(&mut self, kind: u8, payload: &[u8], at: &str) -> Result<(), StorageError> {
        let bad = |what: &str| StorageError::Corrupt(format!("{at}: {what}"));
        match kind {
            K_START => {
                let (i, t) = unpair(payload).ok_or_else(|| bad("bad segment header"))?;
                if self.last() != (i, t) {
                    self.r.entries.clear();
                    self.r.truncated = (i, t);
                }
            }
            K_ENTRY => {
                let e = Entry::parse_from_bytes(payload).map_err(|e| bad(&format!("bad entry: {e}")))?;
                let (last, _) = self.last();
                if e.index <= self.r.truncated.0 || e.index > last + 1 {
                    return Err(bad(&format!(
                        "entry {} does not follow the log ({}..={last})",
                        e.index,
                        self.r.truncated.0 + 1
                    )));
                }
                let keep = (e.index - self.r.truncated.0 - 1) as usize;
                self.r.entries.truncate(keep);
                self.r.entries.push(e);
            }
            K_HARD_STATE => {
                self.r.hard_state =
                    HardState::parse_from_bytes(payload).map_err(|e| bad(&format!("bad hard state: {e}")))?;
            }
            K_COMPACT => {
                let (i, t) = unpair(payload).ok_or_else(|| bad("bad compaction record"))?;
                if i > self.r.truncated.0 {
                    let drop = ((i - self.r.truncated.0) as usize).min(self.r.entries.len());
                    self.r.entries.drain(..drop);
                    self.r.truncated = (i, t);
                }
            }
            k => return Err(bad(&format!("unknown record kind {k}"))),
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("cannot sync directory", dir, e))
}

/// Where the next segment's zeros are written ahead of time; not a segment until renamed.
const SPARE: &str = "spare.tmp";

/// Creates segment `seq` with room for [`SEGMENT_BYTES`]: zeros written now (`zeroed`), or space
/// reserved by `fallocate`.
fn create_segment(dir: &Path, seq: u64, zeroed: bool) -> Result<File, StorageError> {
    let path = seg_path(dir, seq);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| io("cannot create", &path, e))?;
    if zeroed {
        write_zeros(&f, SEGMENT_BYTES).map_err(|e| io("cannot fill", &path, e))?;
    } else {
        preallocate(&f, SEGMENT_BYTES).map_err(|e| io("cannot preallocate", &path, e))?;
    }
    Ok(f)
}

/// Writes `len` zero bytes from offset 0 and makes them durable, one MiB per `fdatasync`: the
/// disk then never holds a long queue of zeros ahead of the log's own syncs.
fn write_zeros(f: &File, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = zeros.len().min((len - at) as usize);
        f.write_all_at(&zeros[..n], at)?;
        f.sync_data()?;
        at += n as u64;
    }
    f.sync_all()
}

/// The next segment's file, being filled with zeros by a thread of its own.
#[derive(Default)]
struct Spare {
    filling: Option<std::thread::JoinHandle<std::io::Result<File>>>,
}

impl Spare {
    /// Starts filling `DIR/spare.tmp` unless that is already under way. Under simulation the
    /// spare is never made (a thread would race the simulated clock); segments are `fallocate`d.
    fn start(&mut self, dir: &Path) {
        if self.filling.is_some() || cfg!(madsim) {
            return;
        }
        let path = dir.join(SPARE);
        let spawned = std::thread::Builder::new().name("wal-spare".into()).spawn(move || {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
            write_zeros(&f, SEGMENT_BYTES)?;
            Ok(f)
        });
        match spawned {
            Ok(h) => self.filling = Some(h),
            Err(e) => tracing::warn!("cannot start the thread that prepares log segments: {e}"),
        }
    }

    /// Whether the thread filling the spare is done (its result is taken by [`Spare::take`]).
    fn ready(&self) -> bool {
        self.filling.as_ref().is_some_and(|h| h.is_finished())
    }

    /// The spare, if it is ready; never waits for it.
    fn take(&mut self) -> Option<File> {
        if !self.ready() {
            return None;
        }
        match self.filling.take()?.join() {
            Ok(Ok(f)) => Some(f),
            Ok(Err(e)) => {
                tracing::warn!("cannot prepare the next log segment: {e}");
                None
            }
            Err(_) => {
                tracing::warn!("the thread preparing the next log segment panicked");
                None
            }
        }
    }
}

impl Drop for Spare {
    /// Waits for the filling thread (a few ms at most), so nothing writes into the directory
    /// after the log is closed.
    fn drop(&mut self) {
        if let Some(h) = self.filling.take() {
            let _ = h.join();
        }
    }
}

#[cfg(target_os = "linux")]
fn preallocate(f: &File, len: u64) -> std::io::Result<()> {
    use rustix::fs::{fallocate, FallocateFlags};
    match fallocate(f, FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        // A file system without fallocate: a sparse file is correct, only slower to sync.
        Err(rustix::io::Errno::OPNOTSUPP) => f.set_len(len),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(target_os = "linux"))]
fn preallocate(f: &File, len: u64) -> std::io::Result<()> {
    f.set_len(len)
}

impl Wal {
    /// Opens (or creates) the log in `dir` and replays it. A torn tail is cut off; the log then
    /// continues in a fresh segment.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered), StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
        let mut seqs = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, e))? {
            let item = item.map_err(|e| io("cannot read", dir, e))?;
            let name = item.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else { continue };
            if let Ok(seq) = u64::from_str_radix(stem, 16) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();

        let mut replay = Replay { r: Recovered::default() };
        let mut segments = Vec::new();
        let n = seqs.len();
        for (i, &seq) in seqs.iter().enumerate() {
            let path = seg_path(dir, seq);
            let newest = i + 1 == n;
            let mut data = Vec::new();
            File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| io("cannot read", &path, e))?;
            let (recs, valid, torn) = records(&data);
            let at = path.display().to_string();
            if torn && !newest {
                return Err(StorageError::Corrupt(format!("{at}: corrupt record at byte {valid}")));
            }
            match recs.first() {
                Some((K_START, p)) => {
                    let (start, _) = unpair(p).ok_or_else(|| StorageError::Corrupt(format!("{at}: bad header")))?;
                    segments.push(Segment { seq, start });
                }
                // A segment whose header never reached the disk: a crash right after creating it.
                None if newest => {
                    std::fs::remove_file(&path).map_err(|e| io("cannot remove", &path, e))?;
                    continue;
                }
                _ => return Err(StorageError::Corrupt(format!("{at}: no segment header"))),
            }
            for (kind, payload) in recs {
                replay.apply(kind, payload, &at)?;
            }
            if torn {
                tracing::warn!(segment = %at, valid, "dropping a torn write at the end of the log");
            }
            if newest {
                // Cut the torn tail and the unused preallocation, so the segment reads the same
                // after any later crash.
                let f = OpenOptions::new().write(true).open(&path).map_err(|e| io("cannot open", &path, e))?;
                f.set_len(valid as u64).and_then(|_| f.sync_all()).map_err(|e| io("cannot truncate", &path, e))?;
            }
        }

        // A spare left by an earlier run may be only partly filled: start it over.
        match std::fs::remove_file(dir.join(SPARE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot remove", &dir.join(SPARE), e)),
        }
        let seq = segments.last().map_or(0, |s| s.seq + 1);
        // The first segment is filled now (~10 ms for 16 MiB here), not fallocated: a node's
        // first minutes of writes go to it. Not under simulation, where it would only cost time.
        let active = create_segment(dir, seq, !cfg!(madsim))?;
        let mut wal = Wal {
            dir: dir.to_path_buf(),
            segments,
            active,
            written: 0,
            buf: Vec::new(),
            unsynced: false,
            last: replay.last(),
            hard_state: replay.r.hard_state.clone(),
            spare: Spare::default(),
            spares_used: 0,
        };
        wal.segments.push(Segment { seq, start: wal.last.0 });
        wal.header();
        wal.sync()?;
        sync_dir(dir)?;
        wal.spare.start(dir);
        Ok((wal, replay.r))
    }

    fn header(&mut self) {
        put_record(&mut self.buf, K_START, &pair(self.last.0, self.last.1));
        let hs = self.hard_state.write_to_bytes().unwrap_or_default();
        put_record(&mut self.buf, K_HARD_STATE, &hs);
    }

    /// Buffers entries (a conflicting suffix is replaced on replay).
    pub fn append(&mut self, entries: &[Entry]) {
        for e in entries {
            let b = e.write_to_bytes().unwrap_or_default();
            put_record(&mut self.buf, K_ENTRY, &b);
        }
        if let Some(e) = entries.last() {
            self.last = (e.index, e.term);
        }
    }

    pub fn set_hard_state(&mut self, hs: &HardState) {
        put_record(&mut self.buf, K_HARD_STATE, &hs.write_to_bytes().unwrap_or_default());
        self.hard_state = hs.clone();
    }

    /// Writes the buffered records; `fdatasync`s when `durable` (or leaves them in the page
    /// cache, where they survive a crash of the process but not of the machine).
    pub fn flush(&mut self, durable: bool) -> Result<(), StorageError> {
        if !self.buf.is_empty() {
            let path = || seg_path(&self.dir, self.segments.last().map_or(0, |s| s.seq));
            self.active.write_all(&self.buf).map_err(|e| io("cannot write", &path(), e))?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        if durable && self.unsynced {
            let path = seg_path(&self.dir, self.segments.last().map_or(0, |s| s.seq));
            self.active.sync_data().map_err(|e| io("cannot sync", &path, e))?;
            self.unsynced = false;
        }
        if self.written >= SEGMENT_BYTES {
            self.roll()?;
        }
        Ok(())
    }

    /// Writes and `fdatasync`s everything buffered.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.flush(true)
    }

    /// Segment `seq` for a rollover or a reset: the spare, renamed, when its zeros are written;
    /// else a `fallocate`d file (never waits for the spare). A new spare is started by the caller
    /// once the segment is in use.
    fn next_segment(&mut self, seq: u64) -> Result<File, StorageError> {
        if let Some(f) = self.spare.take() {
            let path = seg_path(&self.dir, seq);
            match std::fs::rename(self.dir.join(SPARE), &path) {
                Ok(()) => {
                    self.spares_used += 1;
                    return Ok(f);
                }
                // Nothing was renamed, so nothing is at `path`: make the segment the slow way.
                Err(e) => tracing::warn!("cannot rename the spare log segment to {}: {e}", path.display()),
            }
        }
        create_segment(&self.dir, seq, false)
    }

    /// Starts a new segment (the previous one is complete and durable).
    fn roll(&mut self) -> Result<(), StorageError> {
        self.flush_without_roll()?;
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        self.active = self.next_segment(seq)?;
        self.written = 0;
        self.segments.push(Segment { seq, start: self.last.0 });
        self.header();
        self.flush_without_roll()?;
        sync_dir(&self.dir)?;
        self.spare.start(&self.dir);
        Ok(())
    }

    fn flush_without_roll(&mut self) -> Result<(), StorageError> {
        let path = seg_path(&self.dir, self.segments.last().map_or(0, |s| s.seq));
        if !self.buf.is_empty() {
            self.active.write_all(&self.buf).map_err(|e| io("cannot write", &path, e))?;
            self.written += self.buf.len() as u64;
            self.buf.clear();
            self.unsynced = true;
        }
        if self.unsynced {
            self.active.sync_data().map_err(|e| io("cannot sync", &path, e))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Records that entries up to `(index, term)` are no longer needed and deletes every older
    /// segment that holds nothing after `index`.
    pub fn compact(&mut self, index: u64, term: u64) -> Result<(), StorageError> {
        put_record(&mut self.buf, K_COMPACT, &pair(index, term));
        // Segment k holds entries (start_k, start_{k+1}]; it can go when start_{k+1} <= index.
        let mut gone = 0;
        while gone + 1 < self.segments.len() && self.segments[gone + 1].start <= index {
            gone += 1;
        }
        for s in self.segments.drain(..gone) {
            let path = seg_path(&self.dir, s.seq);
            std::fs::remove_file(&path).map_err(|e| io("cannot remove", &path, e))?;
        }
        Ok(())
    }

    /// Replaces the whole log by "empty, after `(index, term)`" (a snapshot was installed):
    /// a new segment saying so is made durable before the old ones are deleted.
    pub fn reset(&mut self, index: u64, term: u64, hs: &HardState) -> Result<(), StorageError> {
        self.buf.clear();
        self.flush_without_roll()?;
        self.last = (index, term);
        self.hard_state = hs.clone();
        let seq = self.segments.last().map_or(0, |s| s.seq + 1);
        self.active = self.next_segment(seq)?;
        self.written = 0;
        let old: Vec<Segment> = std::mem::take(&mut self.segments);
        self.segments.push(Segment { seq, start: index });
        self.header();
        self.flush_without_roll()?;
        sync_dir(&self.dir)?;
        for s in old {
            let path = seg_path(&self.dir, s.seq);
            std::fs::remove_file(&path).map_err(|e| io("cannot remove", &path, e))?;
        }
        self.spare.start(&self.dir);
        Ok(())
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
        self.flush_without_roll()?;
        self.active.seek(SeekFrom::Start(self.written)).map_err(|e| io("cannot seek", &self.dir, e))?;
        self.active.write_all(bytes).map_err(|e| io("cannot write", &self.dir, e))?;
        self.active.sync_data().map_err(|e| io("cannot sync", &self.dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = format!("e{index}").into_bytes().into();
        e
    }

    fn idx(r: &Recovered) -> Vec<(u64, u64)> {
        r.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn replays_entries_hard_state_and_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, r) = Wal::open(dir.path()).unwrap();
            assert!(r.entries.is_empty());
            w.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
            w.append(&[entry(3, 2), entry(4, 2)]);
            let mut hs = HardState::default();
            hs.term = 2;
            hs.vote = 3;
            hs.commit = 2;
            w.set_hard_state(&hs);
            w.sync().unwrap();
        }
        let (_w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(idx(&r), [(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!((r.hard_state.term, r.hard_state.vote, r.hard_state.commit), (2, 3, 2));
        assert_eq!(r.truncated, (0, 0));
    }

    #[test]
    fn unsynced_but_written_records_survive_a_process_crash_and_unwritten_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap();
            w.append(&[entry(1, 1)]);
            w.flush(false).unwrap();
            w.append(&[entry(2, 1)]);
            // Dropped without a flush: entry 2 was never written.
        }
        let (_w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(idx(&r), [(1, 1)]);
    }

    #[test]
    fn a_torn_tail_is_dropped_and_the_log_continues() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap();
            w.append(&[entry(1, 1), entry(2, 1)]);
            w.sync().unwrap();
            // Half a record: a length that promises more than follows.
            w.write_garbage_for_test(&[200, 0, 0, 0, 1, 2, 3, 4, K_ENTRY, 9, 9]).unwrap();
        }
        {
            let (mut w, r) = Wal::open(dir.path()).unwrap();
            assert_eq!(idx(&r), [(1, 1), (2, 1)]);
            w.append(&[entry(3, 1)]);
            w.sync().unwrap();
        }
        let (_w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(idx(&r), [(1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn a_bad_checksum_in_an_older_segment_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap();
            w.append(&[entry(1, 1), entry(2, 1)]);
            w.sync().unwrap();
        }
        // Reopening starts a new segment; flip a byte of an entry in the first.
        let (w, _) = Wal::open(dir.path()).unwrap();
        drop(w);
        let first = seg_path(dir.path(), 0);
        let mut data = std::fs::read(&first).unwrap();
        let n = data.len();
        data[n - 3] ^= 0xff;
        std::fs::write(&first, data).unwrap();
        let e = Wal::open(dir.path()).err().expect("must fail");
        assert!(e.to_string().contains("corrupt record"), "{e}");
    }

    #[test]
    fn compaction_deletes_whole_segments_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap(); // segment 0: entries 1..=3
            w.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]);
            w.sync().unwrap();
        }
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap(); // segment 1: 4..=5
            w.append(&[entry(4, 2), entry(5, 2)]);
            w.sync().unwrap();
        }
        let (mut w, r) = Wal::open(dir.path()).unwrap(); // segment 2 (active)
        assert_eq!(idx(&r), [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2)]);
        assert_eq!(w.segment_count(), 3);
        w.compact(3, 1).unwrap(); // segment 0 holds nothing after 3
        assert_eq!(w.segment_count(), 2);
        w.compact(4, 2).unwrap(); // segment 1 still holds 5
        assert_eq!(w.segment_count(), 2);
        w.sync().unwrap();
        drop(w);
        let (_w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(idx(&r), [(5, 2)]);
        assert_eq!(r.truncated, (4, 2));
    }

    #[test]
    fn reset_replaces_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap();
            w.append(&[entry(1, 1), entry(2, 1)]);
            w.sync().unwrap();
            let mut hs = HardState::default();
            hs.term = 7;
            hs.commit = 20;
            w.reset(20, 6, &hs).unwrap();
            assert_eq!(w.segment_count(), 1);
            w.append(&[entry(21, 7)]);
            w.sync().unwrap();
        }
        let (_w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(r.truncated, (20, 6));
        assert_eq!(idx(&r), [(21, 7)]);
        assert_eq!(r.hard_state.commit, 20);
    }

    #[test]
    fn large_logs_roll_over_into_new_segments() {
        let dir = tempfile::tempdir().unwrap();
        let big = |i: u64| {
            let mut e = entry(i, 1);
            e.data = vec![7u8; 1024 * 1024].into();
            e
        };
        let n = SEGMENT_BYTES / (1024 * 1024) + 3;
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap();
            for i in 1..=n {
                w.append(&[big(i)]);
                w.sync().unwrap();
            }
            assert_eq!(w.segment_count(), 2);
        }
        let (_w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(r.entries.len() as u64, n);
        assert_eq!(r.entries.last().unwrap().index, n);
    }

    /// Polls `cond` every millisecond for up to 10 s.
    fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn a_full_segment_rolls_into_the_prepared_spare_and_a_stale_spare_is_not_a_segment() {
        let dir = tempfile::tempdir().unwrap();
        let big = |i: u64| {
            let mut e = entry(i, 1);
            e.data = vec![i as u8; 1024 * 1024].into();
            e
        };
        let n = SEGMENT_BYTES / (1024 * 1024) + 2;
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap();
            eventually("the spare", || w.spare_ready());
            assert_eq!(std::fs::metadata(dir.path().join(SPARE)).unwrap().len(), SEGMENT_BYTES);
            for i in 1..=n {
                w.append(&[big(i)]);
                w.sync().unwrap();
            }
            assert_eq!((w.segment_count(), w.spares_used()), (2, 1));
            // The spare became segment 1 (full size, zeros past its records) and the next one is
            // being prepared.
            assert!(std::fs::metadata(seg_path(dir.path(), 1)).unwrap().len() >= SEGMENT_BYTES);
            eventually("the next spare", || w.spare_ready());
        }
        // A crash while a spare was half written leaves junk in it: it is discarded, not replayed.
        std::fs::write(dir.path().join(SPARE), b"not a segment").unwrap();
        let (w, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(r.entries.len() as u64, n);
        assert!(r.entries.iter().all(|e| e.data.len() == 1024 * 1024 && e.data[0] == e.index as u8));
        assert_eq!(w.segment_count(), 3);
        drop(w);
        // Dropping the log waited for its new spare (~10 ms of writes): it is complete, and
        // nothing writes into the directory any more.
        assert_eq!(std::fs::metadata(dir.path().join(SPARE)).unwrap().len(), SEGMENT_BYTES);
    }
}
