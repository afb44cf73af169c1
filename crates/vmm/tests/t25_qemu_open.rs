//! `QemuDriver::open`, the daemon's constructor: image from `<base>/images/default`, the
//! accelerator verdict, and adoption of VMs left running by the previous daemon.
#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use blixard_core::VmSpec;
use blixard_vmm::accel::Source;
use blixard_vmm::qemu::QemuDriver;
use blixard_vmm::{Accel, Instance, StopOutcome, VmDriver, VmState};
use common::Harness;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reuses_the_image_reports_the_accel_and_adopts() {
    let h = Harness::new();
    // Reuse the shared image cache instead of building another one.
    std::fs::create_dir_all(h.dir.path().join("images")).unwrap();
    let cache = h.image.initrd.parent().unwrap();
    std::os::unix::fs::symlink(cache, h.dir.path().join("images/default")).unwrap();
    // The probe has its own test; this binary's process is the only reader of the variable.
    std::env::set_var(blixard_vmm::accel::ENV_OVERRIDE, "tcg");

    let t = std::time::Instant::now();
    let (d, verdict) = QemuDriver::open(h.dir.path()).await.unwrap();
    eprintln!("timing: open {} ms", t.elapsed().as_millis());
    assert_eq!((verdict.accel, verdict.source, d.accel()), (Accel::Tcg, Source::Env, Accel::Tcg));
    let spec = VmSpec { name: "survivor".into(), vcpus: 1, memory_mib: 96, ..Default::default() };
    let vm = Instance::new("survivor", 2);
    d.prepare(&vm, &spec).await.unwrap();
    d.start(&vm).await.unwrap();
    let pid = d.status(&vm).await.unwrap().pid;
    drop(d);

    let (d, _) = QemuDriver::open(h.dir.path()).await.unwrap();
    let listed = d.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].state.clone(), listed[0].pid, listed[0].accel), (VmState::Running, pid, Some(Accel::Tcg)));
    let t = std::time::Instant::now();
    let how = d.stop(&vm, Duration::from_secs(30)).await.unwrap();
    eprintln!("timing: stop {how:?} in {} ms", t.elapsed().as_millis());
    assert_eq!(how, StopOutcome::Graceful);
}
