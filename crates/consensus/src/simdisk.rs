//! A disk that lies, in memory: the simulated implementation of the log's file layer
//! ([`crate::wal::fs::Fs`]) and of redb's `StorageBackend`, for tests and the simulation.
//!
//! Each file keeps what is **durable** (made so by a completed `fsync`/`fdatasync`), the writes
//! made since (**pending**, in order), and what reads see now (the page cache). Directory
//! entries (create, rename, remove) are durable once the directory is synced. Faults:
//!
//! - [`SimDisk::crash`]: the machine loses power. Per file, any subset of the pending writes that
//!   POSIX allows reaches the disk, chosen from the disk's seed by the [`Crash`] mode: a prefix of
//!   them with the next one torn at any byte ([`Crash::Prefix`]); each 4 KiB page of each write
//!   independently, i.e. in any order ([`Crash::Pages`]); none ([`Crash::LoseAll`]). Per
//!   directory, a prefix of its unsynced entry changes. Files opened before the crash answer
//!   every later call with an error (their process is gone).
//! - [`SimDisk::flip_bit`]: a bit of a file rots, synced data included.
//! - [`SimDisk::set_space`]: the disk holds so many bytes; a write past it fails with ENOSPC.
//! - [`SimDisk::fail_sync`]: a later `fsync` fails with EIO, and — as Linux does ("fsyncgate") —
//!   the writes it was to make durable are dropped from the disk but stay in the page cache,
//!   marked clean: the *next* `fsync` succeeds although they never reached the disk.
//!
//! Directories themselves are created durably at once (the log creates its directory once).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::wal::fs::{Fs, FsFile};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;
const PAGE: u64 = 4096;

/// Which of the unsynced writes survive a [`SimDisk::crash`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// A prefix of each file's pending writes, the next one possibly torn at any byte.
    Prefix,
    /// Each 4 KiB page of each pending write, independently (any order of reaching the disk).
    Pages,
    /// None.
    LoseAll,
    /// All of them but the last write of each file, which is cut short at a byte strictly
    /// inside it (a torn last write).
    TornLast,
}

/// File contents: `data`, then zeros up to `len`.
#[derive(Clone, Debug, Default)]
struct Content {
    data: Vec<u8>,
    len: u64,
}

impl Content {
    fn write(&mut self, at: u64, buf: &[u8]) {
        let end = at as usize + buf.len();
        if self.data.len() < end {
            self.data.resize(end, 0);
        }
        self.data[at as usize..end].copy_from_slice(buf);
        self.len = self.len.max(end as u64);
    }

    fn set_len(&mut self, len: u64) {
        self.data.truncate(len as usize);
        self.len = len;
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = self.data.clone();
        v.resize(self.len as usize, 0);
        v
    }

    fn apply(&mut self, p: &Pending) {
        match p {
            Pending::Write { at, data } => self.write(*at, data),
            Pending::SetLen(l) => self.set_len(*l),
        }
    }
}

#[derive(Clone, Debug)]
enum Pending {
    Write { at: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Inode {
    durable: Content,
    pending: Vec<Pending>,
    current: Content,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename { from: String, to: String, ino: u64 },
}

#[derive(Debug, Default)]
struct Dir {
    current: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
}

impl Dir {
    fn apply_durable(&mut self, op: &DirOp) {
        match op {
            DirOp::Link(n, i) => {
                self.durable.insert(n.clone(), *i);
            }
            DirOp::Unlink(n) => {
                self.durable.remove(n);
            }
            DirOp::Rename { from, to, ino } => {
                self.durable.remove(from);
                self.durable.insert(to.clone(), *ino);
            }
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every crash: files opened before it are dead.
    gen: u64,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    rng: u64,
    space: Option<u64>,
    /// Syncs to let succeed before one fails (`Some(0)`: the next one fails), of files whose
    /// name ends with `fail_sync_of`.
    fail_sync_in: Option<u64>,
    fail_sync_of: String,
    /// Syncs failed by [`SimDisk::fail_sync`] so far.
    failed_syncs: u64,
    /// Changes to let through before the machine stops (`Some(0)`: stopped).
    ops_left: Option<u64>,
    /// Changes made so far (writes, syncs, lengths, creations, renames, removals).
    ops: u64,
    crashes: u64,
    /// Bytes of unsynced writes crashes did not let reach the disk.
    lost: u64,
}

impl State {
    /// Counts a change, or refuses it once the machine has stopped (see [`SimDisk::stop_after`]).
    fn change(&mut self) -> io::Result<()> {
        match self.ops_left {
            Some(0) => return Err(io::Error::other("the simulated machine stopped here (a crash point)")),
            Some(n) => self.ops_left = Some(n - 1),
            None => {}
        }
        self.ops += 1;
        Ok(())
    }

    fn next(&mut self) -> u64 {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=n`.
    fn upto(&mut self, n: u64) -> u64 {
        self.next() % (n + 1)
    }

    fn used(&self) -> u64 {
        self.inodes.values().map(|i| i.current.len).sum()
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let (dir, name) = split(path)?;
        self.dirs
            .get(dir)
            .and_then(|d| d.current.get(name))
            .copied()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file", path.display())))
    }

    fn dir(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs
            .get_mut(dir)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{}: no such directory", dir.display())))
    }

    fn link(&mut self, path: &Path, truncate_existing: bool, exclusive: bool) -> io::Result<u64> {
        self.change()?;
        if let Ok(ino) = self.lookup(path) {
            if exclusive {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{} exists", path.display())));
            }
            if truncate_existing {
                let i = self.inodes.get_mut(&ino).expect("linked inode");
                i.current.set_len(0);
                i.pending.push(Pending::SetLen(0));
            }
            return Ok(ino);
        }
        let (dir, name) = split(path)?;
        let ino = self.next_ino;
        let d = self.dir(dir)?;
        d.current.insert(name.to_string(), ino);
        d.pending.push(DirOp::Link(name.to_string(), ino));
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::default());
        Ok(ino)
    }

    fn grow_to(&self, ino: u64, len: u64) -> io::Result<()> {
        let have = self.inodes.get(&ino).map_or(0, |i| i.current.len);
        if let Some(space) = self.space {
            if len > have && self.used() - have + len > space {
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
        }
        Ok(())
    }

    fn sync(&mut self, ino: u64) -> io::Result<()> {
        self.change()?;
        let named = self
            .dirs
            .values()
            .flat_map(|d| d.current.iter())
            .any(|(n, i)| *i == ino && n.ends_with(&self.fail_sync_of));
        let fail = match self.fail_sync_in {
            _ if !named => false,
            Some(0) => {
                self.fail_sync_in = None;
                self.failed_syncs += 1;
                true
            }
            Some(n) => {
                self.fail_sync_in = Some(n - 1);
                false
            }
            None => false,
        };
        let i = self.inodes.get_mut(&ino).ok_or_else(|| io::Error::from_raw_os_error(EIO))?;
        if fail {
            // The writes are lost to the disk but their pages are marked clean.
            i.pending.clear();
            return Err(io::Error::from_raw_os_error(EIO));
        }
        for p in std::mem::take(&mut i.pending) {
            i.durable.apply(&p);
        }
        Ok(())
    }
}

fn split(path: &Path) -> io::Result<(&Path, &str)> {
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(d), Some(n)) => Ok((d, n)),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{}: not a file path", path.display()))),
    }
}

/// A simulated disk (cheap to clone: clones share it).
#[derive(Clone, Debug, Default)]
pub struct SimDisk(Arc<Mutex<State>>);

/// An open file of a [`SimDisk`].
#[derive(Debug)]
pub struct SimFile {
    disk: SimDisk,
    ino: u64,
    gen: u64,
}

impl SimDisk {
    /// An empty disk whose crashes draw from `seed`.
    pub fn new(seed: u64) -> SimDisk {
        let d = SimDisk::default();
        d.lock().rng = seed;
        d
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The machine loses power and comes back: see the module doc. Files opened before fail
    /// from now on.
    pub fn crash(&self, how: Crash) {
        let mut s = self.lock();
        s.gen += 1;
        s.crashes += 1;
        s.fail_sync_in = None;
        s.ops_left = None;
        let dirs: Vec<PathBuf> = s.dirs.keys().cloned().collect();
        for dir in dirs {
            let n = s.dirs[&dir].pending.len() as u64;
            let keep = match how {
                Crash::LoseAll => 0,
                Crash::TornLast => n as usize,
                _ => s.upto(n) as usize,
            };
            let d = s.dirs.get_mut(&dir).expect("dir");
            let ops = std::mem::take(&mut d.pending);
            for op in &ops[..keep] {
                d.apply_durable(op);
            }
            d.current = d.durable.clone();
        }
        let inos: Vec<u64> = s.inodes.keys().copied().collect();
        for ino in inos {
            let pending = std::mem::take(&mut s.inodes.get_mut(&ino).expect("inode").pending);
            let mut keep: Vec<Pending> = Vec::new();
            match how {
                Crash::LoseAll => {}
                Crash::TornLast => {
                    let last = pending.iter().rposition(|p| matches!(p, Pending::Write { .. }));
                    for (k, p) in pending.iter().enumerate() {
                        match p {
                            Pending::Write { at, data } if Some(k) == last => {
                                if data.len() > 1 {
                                    let cut = 1 + s.upto(data.len() as u64 - 2) as usize;
                                    keep.push(Pending::Write { at: *at, data: data[..cut].to_vec() });
                                }
                            }
                            _ => keep.push(p.clone()),
                        }
                    }
                }
                Crash::Prefix => {
                    let k = s.upto(pending.len() as u64) as usize;
                    keep.extend(pending[..k].iter().cloned());
                    if let Some(Pending::Write { at, data }) = pending.get(k) {
                        let torn = s.upto(data.len() as u64) as usize;
                        keep.push(Pending::Write { at: *at, data: data[..torn].to_vec() });
                    }
                }
                Crash::Pages => {
                    for p in &pending {
                        match p {
                            Pending::SetLen(_) => {
                                if s.next() & 1 == 0 {
                                    keep.push(p.clone());
                                }
                            }
                            Pending::Write { at, data } => {
                                let mut off = *at;
                                let end = at + data.len() as u64;
                                while off < end {
                                    let page_end = ((off / PAGE) + 1) * PAGE;
                                    let to = page_end.min(end);
                                    if s.next() & 1 == 0 {
                                        let piece = data[(off - at) as usize..(to - at) as usize].to_vec();
                                        keep.push(Pending::Write { at: off, data: piece });
                                    }
                                    off = to;
                                }
                            }
                        }
                    }
                }
            }
            let bytes = |ps: &[Pending]| -> u64 {
                ps.iter().map(|p| if let Pending::Write { data, .. } = p { data.len() as u64 } else { 0 }).sum()
            };
            s.lost += bytes(&pending).saturating_sub(bytes(&keep));
            let i = s.inodes.get_mut(&ino).expect("inode");
            for p in &keep {
                i.durable.apply(p);
            }
            i.current = i.durable.clone();
        }
        // Files no name reaches any more are gone.
        let live: std::collections::BTreeSet<u64> = s.dirs.values().flat_map(|d| d.durable.values().copied()).collect();
        s.inodes.retain(|ino, _| live.contains(ino));
    }

    /// Crashes so far.
    pub fn crashes(&self) -> u64 {
        self.lock().crashes
    }

    /// Bytes of written but unsynced data that crashes so far kept from reaching the disk.
    pub fn lost_bytes(&self) -> u64 {
        self.lock().lost
    }

    /// Flips bit `bit` (0..8) of byte `offset` of `path`, on the disk and in the page cache.
    pub fn flip_bit(&self, path: &Path, offset: u64, bit: u8) -> io::Result<()> {
        let mut s = self.lock();
        let ino = s.lookup(path)?;
        let i = s.inodes.get_mut(&ino).expect("inode");
        for c in [&mut i.durable, &mut i.current] {
            if offset >= c.len {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "flip past the end of the file"));
            }
            if c.data.len() <= offset as usize {
                c.data.resize(offset as usize + 1, 0);
            }
            c.data[offset as usize] ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// The disk holds at most `bytes` (file lengths summed); `None`: unlimited.
    pub fn set_space(&self, bytes: Option<u64>) {
        self.lock().space = bytes;
    }

    /// Bytes the files take now.
    pub fn used(&self) -> u64 {
        self.lock().used()
    }

    /// After `after` more successful syncs of files whose name ends with `suffix`, one fails
    /// with EIO (see the module doc).
    pub fn fail_sync(&self, after: u64, suffix: &str) {
        let mut s = self.lock();
        s.fail_sync_in = Some(after);
        s.fail_sync_of = suffix.to_string();
    }

    /// Syncs that [`SimDisk::fail_sync`] made fail so far.
    pub fn failed_syncs(&self) -> u64 {
        self.lock().failed_syncs
    }

    /// Lets `n` more changes through, then refuses every change until the next crash: the
    /// machine stops at that point. Counting with [`SimDisk::ops`] lets a test crash at every step
    /// of an operation in turn.
    pub fn stop_after(&self, n: u64) {
        self.lock().ops_left = Some(n);
    }

    /// Changes made so far (writes, syncs, lengths, creations, renames, removals).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// The durable contents of `path` (what a crash with [`Crash::LoseAll`] would leave).
    pub fn durable(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let ino = s.lookup(path)?;
        Ok(s.inodes[&ino].durable.bytes())
    }

    /// A file for redb's state store at `path` (created if missing; its name made durable).
    pub fn backend(&self, path: &Path) -> io::Result<SimBackend> {
        if let Some(d) = path.parent() {
            self.create_dir_all(d)?;
        }
        let f = self.open_or_create(path)?;
        if let Some(d) = path.parent() {
            self.sync_dir(d)?;
        }
        Ok(SimBackend(f))
    }

    fn open_or_create(&self, path: &Path) -> io::Result<SimFile> {
        let mut s = self.lock();
        let ino = s.link(path, false, false)?;
        Ok(SimFile { disk: self.clone(), ino, gen: s.gen })
    }
}

impl SimFile {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.disk.lock();
        if s.gen != self.gen || !s.inodes.contains_key(&self.ino) {
            return Err(io::Error::other("the simulated machine crashed since this file was opened"));
        }
        f(&mut s)
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|s| Ok(s.inodes[&self.ino].current.len))
    }

    fn read_at(&self, at: u64, out: &mut [u8]) -> io::Result<()> {
        self.with(|s| {
            let c = &s.inodes[&self.ino].current;
            let end = at + out.len() as u64;
            if end > c.len {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the file"));
            }
            for (k, b) in out.iter_mut().enumerate() {
                *b = c.data.get(at as usize + k).copied().unwrap_or(0);
            }
            Ok(())
        })
    }
}

impl Fs for SimDisk {
    type File = SimFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.lock().dirs.entry(dir.to_path_buf()).or_default();
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut s = self.lock();
        Ok(s.dir(dir)?.current.keys().cloned().collect())
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let ino = s.lookup(path)?;
        Ok(s.inodes[&ino].current.bytes())
    }

    fn create_new(&self, path: &Path) -> io::Result<SimFile> {
        let mut s = self.lock();
        let ino = s.link(path, false, true)?;
        Ok(SimFile { disk: self.clone(), ino, gen: s.gen })
    }

    fn create(&self, path: &Path) -> io::Result<SimFile> {
        let mut s = self.lock();
        let ino = s.link(path, true, false)?;
        Ok(SimFile { disk: self.clone(), ino, gen: s.gen })
    }

    fn open_write(&self, path: &Path) -> io::Result<SimFile> {
        let s = self.lock();
        let ino = s.lookup(path)?;
        Ok(SimFile { disk: self.clone(), ino, gen: s.gen })
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        let ino = s.lookup(from)?;
        let ((fd, fname), (td, tname)) = (split(from)?, split(to)?);
        if fd != td {
            return Err(io::Error::other("the simulated disk renames within one directory only"));
        }
        let d = s.dir(fd)?;
        d.current.remove(fname);
        d.current.insert(tname.to_string(), ino);
        d.pending.push(DirOp::Rename { from: fname.to_string(), to: tname.to_string(), ino });
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        s.lookup(path)?;
        let (dir, name) = split(path)?;
        let d = s.dir(dir)?;
        d.current.remove(name);
        d.pending.push(DirOp::Unlink(name.to_string()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.change()?;
        let d = s.dir(dir)?;
        for op in std::mem::take(&mut d.pending) {
            d.apply_durable(&op);
        }
        Ok(())
    }

    fn background(&self) -> bool {
        false
    }
}

impl FsFile for SimFile {
    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        self.with(|s| {
            s.change()?;
            s.grow_to(self.ino, at + buf.len() as u64)?;
            let i = s.inodes.get_mut(&self.ino).expect("inode");
            i.current.write(at, buf);
            i.pending.push(Pending::Write { at, data: buf.to_vec() });
            Ok(())
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|s| s.sync(self.ino))
    }

    fn sync_all(&self) -> io::Result<()> {
        self.with(|s| s.sync(self.ino))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.with(|s| {
            s.change()?;
            s.grow_to(self.ino, len)?;
            let i = s.inodes.get_mut(&self.ino).expect("inode");
            i.current.set_len(len);
            i.pending.push(Pending::SetLen(len));
            Ok(())
        })
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        self.with(|s| {
            s.change()?;
            s.grow_to(self.ino, len)?;
            let i = s.inodes.get_mut(&self.ino).expect("inode");
            if len > i.current.len {
                i.current.len = len;
                i.pending.push(Pending::SetLen(len));
            }
            Ok(())
        })
    }
}

/// redb's storage over a [`SimDisk`] file: the state store under the same crashes and faults.
#[derive(Debug)]
pub struct SimBackend(SimFile);

impl redb::StorageBackend for SimBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read_at(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        FsFile::set_len(&self.0, len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        FsFile::sync_data(&self.0)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write_at(data, offset)
    }
}
