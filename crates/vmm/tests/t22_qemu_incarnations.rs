//! A VM's identity is its instance (name + incarnation), not its name: a new incarnation boots
//! afresh with a disk of its own while an old one of the same name still runs, a restarted
//! driver maps each QEMU back to its instance, and directories of drivers from before
//! incarnations (named by the bare name) are adopted once, or removed.
#![cfg(not(madsim))]

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use blixard_core::VmSpec;
use blixard_vmm::qemu::args::{host_tsc_khz, qemu_args, VmPaths};
use blixard_vmm::qemu::state::{self, RunFile};
use blixard_vmm::{Accel, Instance, LegacyFate, StopOutcome, VmDriver, VmState, VmmError, BOOT_MARKER};
use common::{wait_for, Harness};

const BOOT: Duration = Duration::from_secs(60);

fn spec(name: &str, marker: &str) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 96,
        disk_gib: Some(1),
        cmdline: Some(format!("bx.marker={marker}")),
        ..Default::default()
    }
}

async fn wait_console(d: &impl VmDriver, name: &str, want: &str) -> String {
    wait_for(&format!("{want} on the console of {name}"), BOOT, || async {
        let log = String::from_utf8_lossy(&d.read_console(name, 0, 1 << 22).await.ok()?.data).into_owned();
        log.contains(want).then_some(log)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_incarnation_boots_afresh_beside_the_old_one_and_each_is_adopted_as_itself() {
    let h = Harness::new();
    let d = h.driver();
    let (old, new) = (Instance::new("web", 5), Instance::new("web", 9));
    d.prepare(&old, &spec("web", "first")).await.unwrap();
    d.start(&old).await.unwrap();
    let old_pid = d.status(&old).await.unwrap().pid.unwrap();
    wait_console(&d, "web", BOOT_MARKER).await;

    // The record of the name was deleted and created again: the new incarnation adopts nothing.
    assert_eq!(d.status(&new).await.unwrap().state, VmState::NotFound);
    d.prepare(&new, &spec("web", "second")).await.unwrap();
    assert_eq!(d.status(&new).await.unwrap().state, VmState::Stopped, "prepared, not the old QEMU");
    d.start(&new).await.unwrap();
    let new_pid = d.status(&new).await.unwrap().pid.unwrap();
    assert_ne!(new_pid, old_pid);
    let vms = h.dir.path().join("vms");
    assert!(vms.join("web.5/disk.qcow2").is_file() && vms.join("web.9/disk.qcow2").is_file(), "a disk each");
    let log = wait_console(&d, "web", "bx.marker=second").await;
    assert!(!log.contains("bx.marker=first"), "the console is the newest incarnation's");

    // A restarted driver maps each process back to its own instance.
    drop(d);
    let d = h.driver();
    assert_eq!(d.adopt_all().await.unwrap(), vec![old.clone(), new.clone()]);
    assert_eq!(d.status(&old).await.unwrap().pid, Some(old_pid));
    assert_eq!(d.status(&new).await.unwrap().pid, Some(new_pid));

    d.delete(&old).await.unwrap();
    assert!(!vms.join("web.5").exists());
    let st = d.status(&new).await.unwrap();
    assert_eq!((st.state, st.pid), (VmState::Running, Some(new_pid)), "deleting one incarnation spares the other");
    let listed: Vec<Instance> = d.list().await.unwrap().into_iter().map(|o| o.instance).collect();
    assert_eq!(listed, vec![new.clone()]);
    d.delete(&new).await.unwrap();
    assert!(d.list().await.unwrap().is_empty());
}

/// Starts QEMU in `<base>/vms/<name>` exactly as a driver from before incarnations did, and
/// writes its `vm.json` in that driver's format (no `dir`).
fn legacy_vm(h: &Harness, name: &str) -> std::process::Child {
    let paths = VmPaths::new(h.dir.path().join("vms").join(name));
    std::fs::create_dir_all(&paths.dir).unwrap();
    let spec = VmSpec { name: name.into(), vcpus: 1, memory_mib: 96, ..Default::default() };
    state::write_json(&paths.spec, &spec).unwrap();
    let argv = qemu_args(&spec, &paths, &h.image, Accel::Tcg, host_tsc_khz(), false, None);
    let child = std::process::Command::new("qemu-system-x86_64")
        .args(&argv)
        .current_dir(&paths.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&paths.stderr).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let run = RunFile {
        pid: Some(child.id()),
        started_at_ms: Some(1),
        accel: Some(Accel::Tcg),
        qmp: paths.qmp.display().to_string(),
        ..Default::default()
    };
    let mut json = serde_json::to_value(&run).unwrap();
    json.as_object_mut().unwrap().remove("dir");
    std::fs::write(&paths.run, serde_json::to_vec(&json).unwrap()).unwrap();
    child
}

fn exited(child: &mut std::process::Child) -> bool {
    child.try_wait().unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_directory_is_adopted_once_with_its_running_qemu_or_removed() {
    let h = Harness::new();
    let mut kept = legacy_vm(&h, "web");
    let mut dropped = legacy_vm(&h, "old");
    let vms = h.dir.path().join("vms");
    for n in ["web", "old"] {
        let qmp = vms.join(n).join("qmp.sock");
        wait_for("the legacy QEMU's QMP socket", BOOT, || async { qmp.exists().then_some(()) }).await;
    }
    let d = h.driver();
    assert!(d.list().await.unwrap().is_empty(), "legacy directories are not instances");
    assert!(d.adopt_all().await.unwrap().is_empty());
    assert_eq!(d.list_legacy().await.unwrap(), ["old", "web"]);

    // Adopted as incarnation 7: the same QEMU, now controlled as that instance.
    let web = Instance::new("web", 7);
    d.settle_legacy("web", LegacyFate::Adopt(7)).await.unwrap();
    assert!(!vms.join("web").exists() && vms.join("web.7").is_dir());
    let st = d.status(&web).await.unwrap();
    assert_eq!((st.state, st.pid), (VmState::Running, Some(kept.id())));
    wait_console(&d, "web", BOOT_MARKER).await;
    d.settle_legacy("web", LegacyFate::Adopt(7)).await.unwrap();
    assert_eq!(d.list_legacy().await.unwrap(), ["old"], "once");
    // A restarted driver still recognises it (by the directory recorded before the rename).
    drop(d);
    let d = h.driver();
    assert_eq!(d.adopt_all().await.unwrap(), vec![web.clone()]);
    assert_eq!(d.stop(&web, Duration::from_secs(30)).await.unwrap(), StopOutcome::Graceful);
    wait_for("the adopted QEMU to exit", BOOT, || {
        let done = exited(&mut kept).then_some(());
        async move { done }
    })
    .await;
    d.start(&web).await.unwrap();
    assert_ne!(d.status(&web).await.unwrap().pid, Some(kept.id()));
    let pid = d.status(&web).await.unwrap().pid.unwrap();
    assert!(state::is_vm_process(pid, &vms.join("web.7")), "a new start runs in the instance's directory");

    // Nothing assigned under that name: what runs in it is stopped and its files removed.
    d.settle_legacy("old", LegacyFate::Remove).await.unwrap();
    wait_for("the removed legacy QEMU to be gone", Duration::from_secs(5), || {
        let done = exited(&mut dropped).then_some(());
        async move { done }
    })
    .await;
    assert!(!vms.join("old").exists());
    assert!(d.list_legacy().await.unwrap().is_empty());

    // A legacy directory for an instance that already has files is not adopted over them.
    std::fs::create_dir_all(vms.join("web")).unwrap();
    assert!(matches!(d.settle_legacy("web", LegacyFate::Adopt(7)).await, Err(VmmError::InstanceExists(_))));
    d.settle_legacy("web", LegacyFate::Remove).await.unwrap();
    d.delete(&web).await.unwrap();
    let left: Vec<_> = std::fs::read_dir(&vms).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}
