//! A daemon restart adopts running VMs instead of booting them again.
#![cfg(not(madsim))]

mod common;

use std::time::Duration;

use blixard_core::VmSpec;
use blixard_vmm::{Instance, StopOutcome, VmDriver, VmState, BOOT_MARKER};
use common::{wait_for, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_driver_adopts_the_running_qemu() {
    let h = Harness::new();
    let spec = VmSpec { name: "keep".into(), vcpus: 1, memory_mib: 96, ..Default::default() };
    let vm = Instance::new("keep", 4);
    let first = h.driver();
    first.prepare(&vm, &spec).await.unwrap();
    first.start(&vm).await.unwrap();
    let pid = first.status(&vm).await.unwrap().pid.unwrap();
    wait_for("the boot marker", Duration::from_secs(60), || async {
        let log = first.read_console("keep", 0, 1 << 22).await.unwrap().data;
        String::from_utf8_lossy(&log).contains(BOOT_MARKER).then_some(())
    })
    .await;
    drop(first);

    let second = h.driver();
    assert_eq!(second.adopt_all().await.unwrap(), vec![vm.clone()]);
    let st = second.status(&vm).await.unwrap();
    assert_eq!((st.state, st.pid), (VmState::Running, Some(pid)));
    second.start(&vm).await.unwrap();
    assert_eq!(second.status(&vm).await.unwrap().pid, Some(pid), "start of a running VM is a no-op");
    let log = second.read_console("keep", 0, 1 << 22).await.unwrap().data;
    assert_eq!(String::from_utf8_lossy(&log).matches(BOOT_MARKER).count(), 1, "booted exactly once");

    // The QMP connection was re-established: a graceful stop works.
    assert_eq!(second.stop(&vm, Duration::from_secs(20)).await.unwrap(), StopOutcome::Graceful);
    assert_eq!(second.status(&vm).await.unwrap().state, VmState::Stopped);
}
