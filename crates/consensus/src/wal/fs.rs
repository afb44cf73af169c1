//! The file layer under the log: every file operation the log makes, as a trait with two
//! implementations — [`StdFs`], the real file system (`std::fs`, what a node runs on), and
//! [`crate::simdisk::SimDisk`], a simulated disk that keeps, per file, what is durable and what is
//! only written, so a test can crash it (losing any subset of the unsynced writes POSIX allows),
//! flip a bit in synced data, fill it up or fail an `fsync` (see that module).
//!
//! The log is generic over it ([`super::Wal`]`<F: Fs>`); the node's store holds a [`Disk`], an
//! enum of the two: one `match` per system call, never per byte.

use std::io;
use std::path::Path;

use crate::simdisk::{SimDisk, SimFile};

/// The file operations of the log.
pub trait Fs: Clone + Send + Sync + 'static {
    type File: FsFile;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// A whole file's contents.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates a file that must not exist yet, for reading and writing.
    fn create_new(&self, path: &Path) -> io::Result<Self::File>;
    /// Creates a file, or empties it if it exists.
    fn create(&self, path: &Path) -> io::Result<Self::File>;
    /// Opens an existing file for writing.
    fn open_write(&self, path: &Path) -> io::Result<Self::File>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Whether a helper thread may write files ahead of time (the spare segment). A simulated
    /// disk says no: its spare is written in line, so a run is a function of its seed.
    fn background(&self) -> bool;
}

/// An open file of an [`Fs`].
pub trait FsFile: Send + 'static {
    /// Writes all of `buf` at offset `at` (`pwrite`).
    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()>;
    /// `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// `fsync`.
    fn sync_all(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves room for `len` bytes (`fallocate`; a sparse length where that is unsupported).
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdFs;

impl Fs for StdFs {
    type File = std::fs::File;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for item in std::fs::read_dir(dir)? {
            if let Some(n) = item?.file_name().to_str() {
                out.push(n.to_string());
            }
        }
        Ok(out)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(path)
    }

    fn create(&self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)
    }

    fn open_write(&self, path: &Path) -> io::Result<std::fs::File> {
        std::fs::OpenOptions::new().write(true).open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn background(&self) -> bool {
        true
    }
}

impl FsFile for std::fs::File {
    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(self, buf, at)
    }

    fn sync_data(&self) -> io::Result<()> {
        std::fs::File::sync_data(self)
    }

    fn sync_all(&self) -> io::Result<()> {
        std::fs::File::sync_all(self)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }

    #[cfg(target_os = "linux")]
    fn allocate(&self, len: u64) -> io::Result<()> {
        use rustix::fs::{fallocate, FallocateFlags};
        match fallocate(self, FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // A file system without fallocate: a sparse file is correct, only slower to sync.
            Err(rustix::io::Errno::OPNOTSUPP) => std::fs::File::set_len(self, len),
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn allocate(&self, len: u64) -> io::Result<()> {
        std::fs::File::set_len(self, len)
    }
}

/// The file system a node's store runs on: the real one, or a simulated disk (tests and the
/// simulation).
#[derive(Clone, Debug, Default)]
pub enum Disk {
    #[default]
    Real,
    Sim(SimDisk),
}

/// A file of a [`Disk`].
#[derive(Debug)]
pub enum DiskFile {
    Real(std::fs::File),
    Sim(SimFile),
}

macro_rules! both {
    ($self:expr, $fs:ident => $e:expr) => {
        match $self {
            Disk::Real => {
                let $fs = StdFs;
                $e
            }
            Disk::Sim($fs) => $e,
        }
    };
}

macro_rules! file {
    ($self:expr, $f:ident => $e:expr) => {
        match $self {
            DiskFile::Real($f) => $e,
            DiskFile::Sim($f) => $e,
        }
    };
}

impl Fs for Disk {
    type File = DiskFile;

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        both!(self, fs => fs.create_dir_all(dir))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        both!(self, fs => fs.list(dir))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        both!(self, fs => fs.read(path))
    }

    fn create_new(&self, path: &Path) -> io::Result<DiskFile> {
        match self {
            Disk::Real => StdFs.create_new(path).map(DiskFile::Real),
            Disk::Sim(s) => s.create_new(path).map(DiskFile::Sim),
        }
    }

    fn create(&self, path: &Path) -> io::Result<DiskFile> {
        match self {
            Disk::Real => StdFs.create(path).map(DiskFile::Real),
            Disk::Sim(s) => s.create(path).map(DiskFile::Sim),
        }
    }

    fn open_write(&self, path: &Path) -> io::Result<DiskFile> {
        match self {
            Disk::Real => StdFs.open_write(path).map(DiskFile::Real),
            Disk::Sim(s) => s.open_write(path).map(DiskFile::Sim),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        both!(self, fs => fs.rename(from, to))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        both!(self, fs => fs.remove(path))
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        both!(self, fs => fs.sync_dir(dir))
    }

    fn background(&self) -> bool {
        both!(self, fs => fs.background())
    }
}

impl FsFile for DiskFile {
    fn write_at(&self, buf: &[u8], at: u64) -> io::Result<()> {
        file!(self, f => f.write_at(buf, at))
    }

    fn sync_data(&self) -> io::Result<()> {
        file!(self, f => FsFile::sync_data(f))
    }

    fn sync_all(&self) -> io::Result<()> {
        file!(self, f => FsFile::sync_all(f))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        file!(self, f => FsFile::set_len(f, len))
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        file!(self, f => f.allocate(len))
    }
}
