//! VM specs cannot reach host files: a spec naming /proc, /sys, /dev or a relative or dotted
//! path is refused at create; one naming a file outside the image cache and the node's
//! allowed directories (directly, through a symlink, or as a qcow2 backing file) is refused by
//! the node before QEMU runs, the field and the rule in the VM's reason; an image imported
//! with `blixard image import` boots.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// A private image cache whose default guest is the shared one (linked, not rebuilt), and the
/// shared guest's kernel and initrd.
fn private_cache(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let shared = image_cache();
    let built = Command::new(BIN).args(["image", "build", "--cache"]).arg(&shared).output().unwrap();
    assert!(built.status.success(), "image build: {}", stderr(&built));
    let (from, cache) = (shared.join("default"), root.join("images"));
    let to = cache.join("default");
    std::fs::create_dir_all(&to).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("manifest.json")).unwrap()).unwrap();
    let (kernel, initrd) = (manifest["kernel"].as_str().unwrap(), manifest["initrd"].as_str().unwrap());
    for f in [kernel, initrd] {
        std::os::unix::fs::symlink(from.join(f), to.join(f)).unwrap();
    }
    for f in ["manifest.json", "recipe"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    (cache, from.join(kernel), from.join(initrd))
}

fn reason(addr: &str, name: &str) -> Option<String> {
    let v = cli_json_opt(addr, &["vm", "get", name])?;
    v["observed"]["reason"].as_str().map(str::to_string)
}

#[test]
fn host_files_are_refused_with_the_field_and_the_rule_and_an_imported_image_boots() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, kernel, initrd) = private_cache(tmp.path());
    let allowed = tmp.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", allowed.join("innocent")).unwrap();
    let evil = allowed.join("evil.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw"])
        .arg(&evil)
        .arg("64M")
        .status()
        .unwrap();
    assert!(made.success());
    let cache_s = cache.display().to_string();
    let allowed_s = allowed.display().to_string();
    let n =
        TestNode::start_with(1, &tmp.path().join("n1"), &["--image-cache", &cache_s, "--allow-image-dir", &allowed_s]);
    n.wait_leader(Duration::from_secs(180));

    // Refused at create, by the spec's own rules.
    for (flag, v, rule) in [
        ("--initrd", "/proc/self/environ", "initrd: must not be under /proc"),
        ("--rootfs", "/dev/vda", "rootfs: must not be under /dev"),
        ("--kernel", "vmlinuz", "kernel: must be image:NAME (an imported image) or an absolute path"),
        ("--initrd", "/srv/../etc/shadow", "initrd: must not contain . or .. components"),
        ("--kernel", "image:../../etc/shadow", "kernel: an image name is [a-z0-9._-]"),
    ] {
        let o = cli(&n.addr, &["vm", "create", "x", "--memory", "96", flag, v]);
        assert!(!o.status.success(), "{flag} {v} was accepted");
        assert!(stderr(&o).contains(rule), "{flag} {v}: {}", stderr(&o));
    }
    assert!(cli_json_opt(&n.addr, &["vm", "get", "x"]).is_none(), "a refused VM was recorded");

    // Refused by the node, before QEMU runs.
    let innocent = allowed.join("innocent").display().to_string();
    let evil_s = evil.display().to_string();
    for (name, flag, v, rule) in [
        ("shadow", "--initrd", "/etc/shadow", "initrd \"/etc/shadow\" refused: /etc/shadow is outside the image cache"),
        ("link", "--kernel", innocent.as_str(), "refused: /etc/shadow is outside the image cache"),
        ("backed", "--rootfs", evil_s.as_str(), "rootfs"),
    ] {
        cli_json(&n.addr, &["vm", "create", name, "--memory", "96", flag, v, "--start"]);
        let why = wait_until(&format!("vm {name} to be refused"), Duration::from_secs(60), || {
            reason(&n.addr, name).filter(|r| r.contains("refused"))
        });
        assert!(why.contains(rule), "{name}: {why}");
        if name == "backed" {
            assert!(why.contains("the backing file of") && why.contains("/etc/shadow"), "{why}");
        }
    }
    // No QEMU ever ran for them.
    let qemus = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).to_string();
            cmd.contains("qemu-system") && cmd.contains(&n.dir.display().to_string())
        })
        .count();
    assert_eq!(qemus, 0);

    // An imported kernel and initrd boot.
    for (name, f) in [("guest-kernel", &kernel), ("guest-initrd", &initrd)] {
        let o = Command::new(BIN).args(["image", "import", name]).arg(f).arg("--cache").arg(&cache).output().unwrap();
        assert!(o.status.success(), "image import: {}", stderr(&o));
        assert!(stdout(&o).contains(&format!("image:{name}")) && stdout(&o).contains("sha256 "), "{}", stdout(&o));
    }
    cli_json(
        &n.addr,
        &[
            "vm",
            "create",
            "ok",
            "--memory",
            "128",
            "--kernel",
            "image:guest-kernel",
            "--initrd",
            "image:guest-initrd",
            "--start",
        ],
    );
    let w = cli(&n.addr, &["vm", "wait", "ok", "--state", "running", "--timeout", "150s", "-o", "json"]);
    assert!(w.status.success(), "{} / {:?}", stderr(&w), reason(&n.addr, "ok"));
    wait_until("the imported guest's boot marker", Duration::from_secs(60), || {
        stdout(&cli(&n.addr, &["vm", "logs", "ok"])).contains("BLIXARD-BOOT-OK").then_some(())
    });
}
