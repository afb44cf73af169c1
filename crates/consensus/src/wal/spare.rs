//! Room for log segments: each is zeros written (and synced) before any record goes in, so an
//! `fdatasync` of an append flushes only the data blocks (see the module doc of [`super`]). The
//! zeros for the next segment are written by a background thread into `DIR/spare.tmp` while the
//! active one fills; if it is not ready at a rollover the segment is `fallocate`d instead.

use std::path::{Path, PathBuf};

use super::fs::{Fs, FsFile};
use crate::error::StorageError;

pub fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// Where the next segment's zeros are written ahead of time; not a segment until renamed.
pub const SPARE: &str = "spare.tmp";

/// Creates segment `seq` with room for [`SEGMENT_BYTES`]: zeros written now (`zeroed`), or space
/// reserved by `fallocate`.
pub fn create_segment<F: Fs>(fs: &F, dir: &Path, seq: u64, zeroed: bool, size: u64) -> Result<F::File, StorageError> {
    let path = seg_path(dir, seq);
    let f = fs.create_new(&path).map_err(StorageError::io("cannot create", &path))?;
    if zeroed {
        write_zeros(&f, size).map_err(StorageError::io("cannot fill", &path))?;
    } else {
        f.allocate(size).map_err(StorageError::io("cannot preallocate", &path))?;
    }
    Ok(f)
}

/// Writes `len` zero bytes from offset 0 and makes them durable, one MiB per `fdatasync`: the
/// disk then never holds a long queue of zeros ahead of the log's own syncs.
fn write_zeros(f: &impl FsFile, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = zeros.len().min((len - at) as usize);
        f.write_at(&zeros[..n], at)?;
        f.sync_data()?;
        at += n as u64;
    }
    f.sync_all()
}

/// The next segment's file, being filled with zeros by a thread of its own (or, on a file
/// layer that allows no background writes, a simulated disk, filled at once).
pub struct Spare<F: Fs> {
    filling: Option<Filling<F::File>>,
}

enum Filling<T> {
    Thread(std::thread::JoinHandle<std::io::Result<T>>),
    Done(std::io::Result<T>),
}

impl<F: Fs> Default for Spare<F> {
    fn default() -> Self {
        Spare { filling: None }
    }
}

impl<F: Fs> Spare<F> {
    /// Starts filling `DIR/spare.tmp` unless that is already under way. Under simulation the
    /// spare is never made (a thread would race the simulated clock); segments are `fallocate`d.
    pub fn start(&mut self, fs: &F, dir: &Path, size: u64) {
        if self.filling.is_some() || cfg!(madsim) {
            return;
        }
        let path = dir.join(SPARE);
        let background = fs.background();
        let fs = fs.clone();
        let fill = move || {
            let f = fs.create(&path)?;
            write_zeros(&f, size)?;
            Ok(f)
        };
        if !background {
            self.filling = Some(Filling::Done(fill()));
            return;
        }
        match std::thread::Builder::new().name("wal-spare".into()).spawn(fill) {
            Ok(h) => self.filling = Some(Filling::Thread(h)),
            Err(e) => tracing::warn!("cannot start the thread that prepares log segments: {e}"),
        }
    }

    /// Whether the spare is done (its result is taken by [`Spare::take`]).
    pub fn ready(&self) -> bool {
        match &self.filling {
            Some(Filling::Thread(h)) => h.is_finished(),
            Some(Filling::Done(_)) => true,
            None => false,
        }
    }

    /// The spare, if it is ready; never waits for it.
    pub fn take(&mut self) -> Option<F::File> {
        if !self.ready() {
            return None;
        }
        let r = match self.filling.take()? {
            Filling::Thread(h) => match h.join() {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!("the thread preparing the next log segment panicked");
                    return None;
                }
            },
            Filling::Done(r) => r,
        };
        match r {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!("cannot prepare the next log segment: {e}");
                None
            }
        }
    }
}

impl<F: Fs> Drop for Spare<F> {
    /// Waits for the filling thread (a few ms at most), so nothing writes into the directory
    /// after the log is closed.
    fn drop(&mut self) {
        if let Some(Filling::Thread(h)) = self.filling.take() {
            let _ = h.join();
        }
    }
}
