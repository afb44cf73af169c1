//! Room for log segments: each is zeros written (and synced) before any record goes in, so an
//! `fdatasync` of an append flushes only the data blocks (see the module doc of [`super`]). The
//! zeros for the next segment are written by a background thread into `DIR/spare.tmp` while the
//! active one fills; if it is not ready at a rollover the segment is `fallocate`d instead.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::error::StorageError;

pub fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// Where the next segment's zeros are written ahead of time; not a segment until renamed.
pub const SPARE: &str = "spare.tmp";

/// Creates segment `seq` with room for [`SEGMENT_BYTES`]: zeros written now (`zeroed`), or space
/// reserved by `fallocate`.
pub fn create_segment(dir: &Path, seq: u64, zeroed: bool, size: u64) -> Result<File, StorageError> {
    let path = seg_path(dir, seq);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(StorageError::io("cannot create", &path))?;
    if zeroed {
        write_zeros(&f, size).map_err(StorageError::io("cannot fill", &path))?;
    } else {
        preallocate(&f, size).map_err(StorageError::io("cannot preallocate", &path))?;
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
pub struct Spare {
    filling: Option<std::thread::JoinHandle<std::io::Result<File>>>,
}

impl Spare {
    /// Starts filling `DIR/spare.tmp` unless that is already under way. Under simulation the
    /// spare is never made (a thread would race the simulated clock); segments are `fallocate`d.
    pub fn start(&mut self, dir: &Path, size: u64) {
        if self.filling.is_some() || cfg!(madsim) {
            return;
        }
        let path = dir.join(SPARE);
        let spawned = std::thread::Builder::new().name("wal-spare".into()).spawn(move || {
            let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
            write_zeros(&f, size)?;
            Ok(f)
        });
        match spawned {
            Ok(h) => self.filling = Some(h),
            Err(e) => tracing::warn!("cannot start the thread that prepares log segments: {e}"),
        }
    }

    /// Whether the thread filling the spare is done (its result is taken by [`Spare::take`]).
    pub fn ready(&self) -> bool {
        self.filling.as_ref().is_some_and(|h| h.is_finished())
    }

    /// The spare, if it is ready; never waits for it.
    pub fn take(&mut self) -> Option<File> {
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
