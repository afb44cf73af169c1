//! What survives a daemon restart: `vm.json` per VM, process checks, and the bounded console log.
//!
//! The console log is written by QEMU itself (`logfile=…,logappend=on` on the serial chardev), so
//! it keeps growing while no daemon runs. QEMU opens it with `O_APPEND`, which makes truncating
//! it from outside safe: the next write lands at the new end. Rotation therefore copies the file
//! to `console.log.1` and truncates it; offsets handed to readers are logical (`console_base` +
//! position in the file) so followers never re-read or go backwards.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::args::VmPaths;
use crate::{Accel, ConsoleChunk, Result, VmmError};

/// `vm.json`: the last run of a VM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    pub pid: Option<u32>,
    /// The directory the process was started in (its command line names it). Absent in files
    /// of older drivers, which started it in the VM's own directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    pub started_at_ms: Option<u64>,
    pub accel: Option<Accel>,
    pub qmp: String,
    pub boot_ms: Option<u64>,
    /// Console bytes rotated away before the start of the current `console.log`.
    pub console_base: u64,
    /// Set once the run has ended.
    pub exit: Option<ExitRecord>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// True when nobody asked for it: the VM is `Failed`, not `Stopped`.
    pub failed: bool,
    pub reason: String,
    pub at_ms: u64,
}

pub fn read_run(path: &Path) -> Result<Option<RunFile>> {
    match fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map(Some).map_err(|source| VmmError::BadFile { path: path.into(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(VmmError::io("read", path)(e)),
    }
}

/// Writes atomically (temp file + rename), so a crash never leaves half a file.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_vec_pretty(value).expect("plain data serializes");
    fs::write(&tmp, text).map_err(VmmError::io("write", &tmp))?;
    fs::rename(&tmp, path).map_err(VmmError::io("rename", path))
}

/// Alive and not a zombie (a zombie's QEMU is gone; only its exit status remains).
pub fn process_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Is `pid` the QEMU of the VM in `dir`? Pids are reused, so a live pid alone proves nothing:
/// its command line must name this VM's directory.
pub fn is_vm_process(pid: u32, dir: &Path) -> bool {
    let Ok(raw) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let cmdline = String::from_utf8_lossy(&raw);
    let needle = format!("{}/", dir.display());
    process_alive(pid) && cmdline.contains(&needle)
}

/// Reads at most `max` bytes from logical `offset`; bytes rotated away are skipped.
pub fn read_console(paths: &VmPaths, base: u64, offset: u64, max: usize) -> Result<ConsoleChunk> {
    let mut f = match fs::File::open(&paths.console_log) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ConsoleChunk { data: Vec::new(), next_offset: offset.max(base) })
        }
        Err(e) => return Err(VmmError::io("open", &paths.console_log)(e)),
    };
    let len = f.metadata().map_err(VmmError::io("stat", &paths.console_log))?.len();
    let pos = offset.saturating_sub(base).min(len);
    f.seek(SeekFrom::Start(pos)).map_err(VmmError::io("seek", &paths.console_log))?;
    let mut data = Vec::with_capacity(max.min((len - pos) as usize));
    f.take(max as u64).read_to_end(&mut data).map_err(VmmError::io("read", &paths.console_log))?;
    Ok(ConsoleChunk { next_offset: base + pos + data.len() as u64, data })
}

/// If the log is larger than `cap`, moves its content to `console.log.1` and truncates it.
/// Returns the new base. The few bytes QEMU may write between copy and truncate are lost.
pub fn rotate_console(paths: &VmPaths, base: u64, cap: u64) -> Result<u64> {
    let len = match fs::metadata(&paths.console_log) {
        Ok(m) => m.len(),
        Err(_) => return Ok(base),
    };
    if len <= cap {
        return Ok(base);
    }
    fs::copy(&paths.console_log, &paths.console_old).map_err(VmmError::io("copy", &paths.console_old))?;
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&paths.console_log)
        .map_err(VmmError::io("open", &paths.console_log))?;
    f.set_len(0).map_err(VmmError::io("truncate", &paths.console_log))?;
    Ok(base + len)
}

/// Before a new run (QEMU not running): the previous run's log becomes `console.log.1`.
pub fn rotate_for_new_run(paths: &VmPaths, base: u64) -> Result<u64> {
    match fs::metadata(&paths.console_log) {
        Ok(m) if m.len() > 0 => {
            fs::rename(&paths.console_log, &paths.console_old).map_err(VmmError::io("rename", &paths.console_log))?;
            Ok(base + m.len())
        }
        _ => Ok(base),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_offsets_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let paths = VmPaths::new(dir.path().to_path_buf());
        fs::write(&paths.console_log, b"0123456789").unwrap();
        let c = read_console(&paths, 0, 0, 4).unwrap();
        assert_eq!((c.data.as_slice(), c.next_offset), (&b"0123"[..], 4));
        assert_eq!(rotate_console(&paths, 0, 100).unwrap(), 0, "under the cap nothing moves");
        let base = rotate_console(&paths, 0, 5).unwrap();
        assert_eq!(base, 10);
        assert_eq!(fs::read(&paths.console_old).unwrap(), b"0123456789");
        fs::write(&paths.console_log, b"ab").unwrap();
        // A follower at 4 lost 4..10 to rotation and continues with the new bytes.
        let c = read_console(&paths, base, 4, 100).unwrap();
        assert_eq!((c.data.as_slice(), c.next_offset), (&b"ab"[..], 12));
        let c = read_console(&paths, base, 12, 100).unwrap();
        assert_eq!((c.data.len(), c.next_offset), (0, 12));
        assert_eq!(rotate_for_new_run(&paths, base).unwrap(), 12);
        assert!(!paths.console_log.exists());
    }

    #[test]
    fn our_own_process_is_alive_and_not_a_vm() {
        let me = std::process::id();
        assert!(process_alive(me));
        assert!(!is_vm_process(me, Path::new("/nonexistent/vms/x")));
        assert!(!process_alive(u32::MAX - 1));
    }
}
