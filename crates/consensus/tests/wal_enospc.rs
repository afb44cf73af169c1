//! A full disk is reported as what it is: "No space left on device" naming the file, never as a
//! corrupt record (issue 11, defect 15). The log lives on a 1 MiB tmpfs mounted for the test
//! (needs root, which CI is: the test fails loudly otherwise rather than skipping).

#![allow(clippy::field_reassign_with_default)]

use std::process::Command;

use blixard_consensus::wal::Wal;
use raft::eraftpb::Entry;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(tempfile::TempDir);

impl Mount {
    fn new(size: &str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(st.success(), "mounting a tmpfs needs root (this test runs as root in CI)");
        Mount(dir)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_says_no_space_left_not_corrupt() {
    let m = Mount::new("1m");
    let dir = m.0.path().join("log");
    // Segments of 256 KiB: the first is written at open, the rest fill the disk.
    let (mut w, _) = Wal::open_with(&dir, 256 * 1024).unwrap();
    let mut err = None;
    for i in 1..=10_000u64 {
        let mut e = Entry::default();
        e.index = i;
        e.term = 1;
        e.data = vec![7u8; 4096].into();
        w.append(&[e], if i == 1 { 0 } else { 1 });
        if let Err(e) = w.sync() {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("a 1 MiB disk fills up");
    let mut chain = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        src = s.source();
    }
    assert!(chain.contains("No space left on device"), "{chain}");
    assert!(!chain.contains("corrupt"), "{chain}");
    assert!(chain.contains(&m.0.path().display().to_string()), "names the file: {chain}");
    drop(w);
}
