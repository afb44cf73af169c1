//! The KVM probe boots the real guest under KVM and falls back to TCG when it does not boot; the
//! verdict is cached per host boot.
#![cfg(not(madsim))]

mod common;

use std::os::unix::process::CommandExt;
use std::time::Instant;

use blixard_vmm::accel::{select, verdict_path, Source};
use blixard_vmm::Accel;

#[tokio::test]
async fn the_probe_reports_a_verdict_and_caches_it() {
    // Never a silent skip: with the override set the probe would not run, so this test could not
    // check it. Unset it to run this file.
    assert!(
        std::env::var_os(blixard_vmm::accel::ENV_OVERRIDE).is_none(),
        "{} is set, so the probe would not run: unset it to run this test",
        blixard_vmm::accel::ENV_OVERRIDE
    );
    let image = common::image();
    let dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let v = select(&image, dir.path()).await.unwrap();
    eprintln!("verdict: {} ({:?}: {}) in {} ms", v.accel, v.source, v.detail, t0.elapsed().as_millis());
    assert!(matches!(v.source, Source::Probed | Source::NoKvmDevice), "{v:?}");
    if v.source == Source::Probed && v.accel == Accel::Tcg {
        assert!(v.detail.contains("KVM"), "{}", v.detail);
    }
    assert!(verdict_path(dir.path()).exists());
    assert!(std::fs::read_dir(dir.path()).unwrap().count() == 1, "the probe VM's directory is removed");

    let t1 = Instant::now();
    let again = select(&image, dir.path()).await.unwrap();
    assert_eq!((again.accel, again.source), (v.accel, Source::Cached));
    assert!(t1.elapsed().as_millis() < 1000, "a cached verdict needs no probe");
}

/// A process that looks like a probe in `/proc` (QEMU on its command line, the probe's kernel
/// argument and scratch directory) without being one, in a process group of its own.
fn fake_probe(scratch: &std::path::Path) -> std::process::Child {
    std::process::Command::new("sh")
        .args(["-c", "sleep 600; :", "qemu-system-x86_64", blixard_vmm::accel::PROBE_ARG])
        .arg(format!("file:{}/console.log", scratch.display()))
        .process_group(0)
        .spawn()
        .unwrap()
}

/// Waits for `child` to exit, up to 10 s.
fn exited(child: &mut std::process::Child) -> bool {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

#[test]
fn a_probe_left_by_a_dead_daemon_is_killed_and_its_scratch_dir_removed() {
    let cache = tempfile::tempdir().unwrap();
    // A daemon that is gone: a process that has exited (and been reaped).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead = cache.path().join(format!("kvm-probe-{}", gone.id()));
    std::fs::create_dir_all(&dead).unwrap();
    let mut leftover = fake_probe(&dead);
    // A live daemon's probe: its parent is the daemon its scratch directory names (here: us).
    let live = cache.path().join(format!("kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&live).unwrap();
    let mut ours = fake_probe(&live);
    // Until the children have exec'd, /proc shows our own command line.
    let owner = |pid: u32| blixard_vmm::accel::probe_owner(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap());
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while owner(leftover.id()) != Some(gone.id()) || owner(ours.id()) != Some(std::process::id()) {
        assert!(Instant::now() < deadline, "the fakes are recognised as probes");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }

    let killed = blixard_vmm::accel::reap_leftover_probes(cache.path());
    // Other tests' leftovers on this host may go too: only ours are asserted on.
    assert!(killed.contains(&leftover.id()) && !killed.contains(&ours.id()), "{killed:?}");
    assert!(exited(&mut leftover), "the leftover probe is killed");
    assert!(!dead.exists(), "the dead daemon's scratch directory is removed");
    assert!(ours.try_wait().unwrap().is_none(), "a live daemon's probe is left alone");
    assert!(live.is_dir());
    let group = rustix::process::Pid::from_raw(ours.id() as i32).unwrap();
    rustix::process::kill_process_group(group, rustix::process::Signal::KILL).unwrap();
    ours.wait().unwrap();
}
