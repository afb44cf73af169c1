//! Failpoints for real-process tests: compiled only with the `failpoints` feature, which only
//! test builds turn on (the `blixard` package enables it through a dev-dependency, so
//! `cargo test`/`nextest` build the binary its integration tests start with it, and
//! `cargo build [--release] -p blixard` builds it without: a release binary carries none).
//!
//! Why not the `fail` crate: one failpoint is needed, triggered while the process runs (after
//! it has acknowledged writes), which a file whose existence is polled does with no
//! dependency and no set-up call in `main`.
//!
//! - `BLIXARD_FAILPOINT_WAL_SYNC_EIO=FILE`: once `FILE` exists, the log's next `fdatasync`
//!   fails with EIO (once), as a dying disk's would.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// Before the log's `fdatasync`: EIO if the failpoint is armed and triggered.
pub fn wal_sync() -> io::Result<()> {
    static FIRED: AtomicBool = AtomicBool::new(false);
    let Some(trigger) = std::env::var_os("BLIXARD_FAILPOINT_WAL_SYNC_EIO") else { return Ok(()) };
    if FIRED.load(Ordering::Relaxed) || !std::path::Path::new(&trigger).exists() {
        return Ok(());
    }
    FIRED.store(true, Ordering::Relaxed);
    tracing::warn!("failpoint BLIXARD_FAILPOINT_WAL_SYNC_EIO: failing the log's fdatasync with EIO");
    Err(io::Error::from_raw_os_error(5))
}
