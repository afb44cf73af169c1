//! The KVM boot probe's QEMU never outlives its daemon: it dies with it (parent-death signal),
//! and one that survived anyway (no `setpriv` on the host) is reaped when a node starts.
//!
//! The probe runs only without a cached verdict, so every node here gets an image cache of its
//! own holding the shared kernel and an initrd that cannot boot: the probe guest then never
//! prints its boot marker, whether KVM works on this host or hangs (as on nested machines), and
//! its QEMU stays up for the whole probe window, long enough to kill the daemon under it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const SEE_PROBE: Duration = Duration::from_secs(60);
const GONE: Duration = Duration::from_secs(15);

/// Alive and not a zombie (an orphan's zombie may linger if pid 1 does not reap).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}

/// Live QEMU processes whose command line names `needle`.
fn qemus_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).into_owned();
        if cmd.contains("qemu-system") && cmd.contains(needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// An image cache with the shared kernel and an initrd the kernel cannot use.
fn unbootable_cache(root: &Path) -> PathBuf {
    let shared = image_cache();
    let built = Command::new(BIN).args(["image", "build", "--cache"]).arg(&shared).output().unwrap();
    assert!(built.status.success(), "image build: {}", stderr(&built));
    let cache = root.join("images");
    let (from, to) = (shared.join("default"), cache.join("default"));
    std::fs::create_dir_all(&to).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("manifest.json")).unwrap()).unwrap();
    let kernel = manifest["kernel"].as_str().unwrap();
    let initrd = manifest["initrd"].as_str().unwrap();
    std::os::unix::fs::symlink(from.join(kernel), to.join(kernel)).unwrap();
    std::fs::write(to.join(initrd), vec![0x5a; 4096]).unwrap();
    for f in ["manifest.json", "recipe"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    cache
}

/// A node whose children and files go when it drops.
struct Node {
    child: Child,
    root: PathBuf,
}

impl Node {
    /// Starts node 1 in `root/data` with the image cache `cache`; `path` replaces `PATH`, and
    /// `accel` sets `BLIXARD_ACCEL` (unset: the node probes).
    fn start(root: &Path, cache: &Path, path: Option<&str>, accel: Option<&str>) -> Node {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(root.join("node.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["node", "--id", "1", "--bind", &addr, "--data-dir"])
            .arg(root.join("data"))
            .arg("--image-cache")
            .arg(cache)
            .env_remove("BLIXARD_ACCEL")
            .env_remove("BLIXARD_IMAGE_CACHE")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(p) = path {
            cmd.env("PATH", p);
        }
        if let Some(a) = accel {
            cmd.env("BLIXARD_ACCEL", a);
        }
        Node { child: cmd.spawn().unwrap(), root: root.to_path_buf() }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The probe QEMU of this node, once it runs.
    fn wait_probe(&self, cache: &Path) -> u32 {
        let needle = format!("{}/kvm-probe-{}/", cache.display(), self.pid());
        wait_until("the KVM probe's QEMU", SEE_PROBE, || qemus_mentioning(&needle).first().copied())
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        kill_processes_under(&self.root);
    }
}

/// A `PATH` with QEMU but without `setpriv`: the daemon cannot ask for a parent-death signal.
fn path_without_setpriv(root: &Path) -> String {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let found = Command::new("sh").args(["-c", "command -v qemu-system-x86_64"]).output().unwrap();
    assert!(found.status.success(), "qemu-system-x86_64 is on PATH");
    let real = String::from_utf8(found.stdout).unwrap();
    std::os::unix::fs::symlink(real.trim(), bin.join("qemu-system-x86_64")).unwrap();
    bin.display().to_string()
}

#[test]
fn the_probe_qemu_dies_with_its_daemon_and_a_leftover_is_reaped_at_the_next_start() {
    assert!(
        std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok(),
        "this test needs /dev/kvm (the probe runs only where KVM can be opened)"
    );
    let tmp = tempfile::tempdir().unwrap();
    let cache = unbootable_cache(tmp.path());

    // With setpriv on PATH (Debian's util-linux): kill -9 of the daemon takes the probe along.
    let mut a = Node::start(tmp.path(), &cache, None, None);
    let probe = a.wait_probe(&cache);
    a.kill9();
    wait_until("the probe QEMU to die with its daemon", GONE, || (!alive(probe)).then_some(()));

    // Without it the probe survives its daemon; the next start (which does not even probe)
    // kills it and removes its scratch directory.
    let mut b = Node::start(tmp.path(), &cache, Some(&path_without_setpriv(tmp.path())), None);
    let leftover = b.wait_probe(&cache);
    let scratch = cache.join(format!("kvm-probe-{}", b.pid()));
    b.kill9();
    assert!(alive(leftover), "without setpriv the probe outlives its daemon");
    assert!(scratch.is_dir());
    let _c = Node::start(tmp.path(), &cache, None, Some("tcg"));
    wait_until("the next start to reap the leftover probe", GONE, || (!alive(leftover)).then_some(()));
    wait_until("its scratch directory to be removed", GONE, || (!scratch.exists()).then_some(()));
}
