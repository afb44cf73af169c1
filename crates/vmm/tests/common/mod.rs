//! Shared helpers for the real-QEMU tests: the cached guest image, free ports, a harness that
//! kills every QEMU it started and removes its directory even when a test fails, and polling
//! with a deadline (never fixed sleeps).

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use blixard_vmm::image::{ensure_image, GuestImage};
use blixard_vmm::qemu::{state, QemuConfig, QemuDriver};
use blixard_vmm::Accel;

/// The guest image, built once and shared by all tests (and test runs):
/// `$BLIXARD_IMAGE_CACHE`, or `<tmp>/blixard-guest-image`.
pub fn image() -> GuestImage {
    let dir = std::env::var_os("BLIXARD_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("blixard-guest-image"));
    ensure_image(&dir).expect("guest image builds")
}

/// A port that was free a moment ago (bind 127.0.0.1:0, read it, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A driver base directory whose QEMUs die with it.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub image: GuestImage,
}

impl Harness {
    pub fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap(), image: image() }
    }

    /// A new driver on the same base directory (TCG: the probe has its own test).
    pub fn driver(&self) -> QemuDriver {
        QemuDriver::new(QemuConfig::new(self.dir.path(), self.image.clone(), Accel::Tcg)).unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("vms")) else { return };
        for e in entries.flatten() {
            let Some(run) = state::read_run(&e.path().join("vm.json")).ok().flatten() else { continue };
            if let Some(pid) = run.pid {
                if state::is_vm_process(pid, run.dir.as_deref().unwrap_or(&e.path())) {
                    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
                }
            }
        }
    }
}

/// Polls `f` until it yields `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One HTTP/1.0 GET on 127.0.0.1:port; the body, if the whole exchange worked.
pub async fn http_get(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").await.ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await.ok()?.ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}
