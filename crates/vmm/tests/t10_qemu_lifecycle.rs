//! Real QEMU (TCG) lifecycle: boot, serve HTTP through a port forward, console in and out,
//! graceful stop, delete; a kill -9 is reported as a failure.
#![cfg(not(madsim))]

mod common;

use std::time::{Duration, Instant};

use blixard_core::{PortForward, VmSpec};
use blixard_vmm::qemu::{QemuConfig, QemuDriver};
use blixard_vmm::{Accel, Instance, StopOutcome, VmDriver, VmState, BOOT_MARKER};
use common::{free_port, http_get, wait_for, Harness};

const BOOT: Duration = Duration::from_secs(60);

fn spec(name: &str, host_port: u16) -> VmSpec {
    VmSpec {
        name: name.into(),
        vcpus: 1,
        memory_mib: 128,
        disk_gib: Some(1),
        cmdline: Some("blixard.http=80".into()),
        ports: vec![PortForward { host: host_port, guest: 80 }],
        ..Default::default()
    }
}

/// The one incarnation these tests use.
fn vm(name: &str) -> Instance {
    Instance::new(name, 1)
}

async fn console_text(d: &impl VmDriver, name: &str) -> String {
    String::from_utf8_lossy(&d.read_console(name, 0, 1 << 22).await.unwrap().data).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_serves_http_takes_console_input_and_stops_gracefully() {
    let h = Harness::new();
    let d = h.driver();
    let port = free_port();
    d.prepare(&vm("web-1"), &spec("web-1", port)).await.unwrap();
    assert!(h.dir.path().join("vms/web-1.1/disk.qcow2").exists(), "disk_gib creates a qcow2 disk");
    assert_eq!(d.status(&vm("web-1")).await.unwrap().state, VmState::Stopped);

    let t0 = Instant::now();
    d.start(&vm("web-1")).await.unwrap();
    let st = d.status(&vm("web-1")).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert!(st.pid.is_some());

    wait_for("the boot marker", BOOT, || async { console_text(&d, "web-1").await.contains(BOOT_MARKER).then_some(()) })
        .await;
    let marker_ms = t0.elapsed().as_millis();
    let body = wait_for("HTTP through the port forward", BOOT, || http_get(port)).await;
    let http_ms = t0.elapsed().as_millis();
    assert_eq!(body.trim(), "hello from web-1");
    let boot_ms = wait_for("boot_ms", BOOT, || async { d.status(&vm("web-1")).await.unwrap().boot_ms }).await;
    eprintln!("timing: start→marker {marker_ms} ms (driver boot_ms {boot_ms}), start→HTTP {http_ms} ms");

    d.console_input("web-1", b"echo typed-$((40+2))\n").await.unwrap();
    wait_for("console echo", BOOT, || async { console_text(&d, "web-1").await.contains("typed-42").then_some(()) })
        .await;

    let t1 = Instant::now();
    assert_eq!(d.stop(&vm("web-1"), Duration::from_secs(20)).await.unwrap(), StopOutcome::Graceful);
    eprintln!("timing: graceful stop {} ms", t1.elapsed().as_millis());
    let st = d.status(&vm("web-1")).await.unwrap();
    assert_eq!(st.state, VmState::Stopped);
    assert_eq!(st.exit_reason.as_deref(), Some("guest-shutdown"));
    assert_eq!(d.stop(&vm("web-1"), Duration::from_secs(1)).await.unwrap(), StopOutcome::AlreadyStopped);
    assert!(matches!(d.console_input("web-1", b"x").await, Err(blixard_vmm::VmmError::NotRunning(_))));

    d.delete(&vm("web-1")).await.unwrap();
    assert!(!h.dir.path().join("vms/web-1.1").exists());
    assert_eq!(d.status(&vm("web-1")).await.unwrap().state, VmState::NotFound);
    d.delete(&vm("web-1")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_qemu_is_reported_failed() {
    let h = Harness::new();
    let d = h.driver();
    d.prepare(&vm("victim"), &spec("victim", free_port())).await.unwrap();
    d.start(&vm("victim")).await.unwrap();
    let pid = d.status(&vm("victim")).await.unwrap().pid.unwrap();
    let killed = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    let st = wait_for("the exit to be noticed", BOOT, || async {
        let st = d.status(&vm("victim")).await.unwrap();
        (st.state != VmState::Running).then_some(st)
    })
    .await;
    assert_eq!(st.state, VmState::Failed("killed by signal 9".into()));
    // A new driver (daemon restart) still knows how the run ended.
    drop(d);
    let st = h.driver().status(&vm("victim")).await.unwrap();
    assert_eq!(st.state, VmState::Failed("killed by signal 9".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_conflict_fails_the_start() {
    let h = Harness::new();
    let d = h.driver();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    d.prepare(&vm("clash"), &spec("clash", port)).await.unwrap();
    let failed = match d.start(&vm("clash")).await {
        Err(e) => e.to_string(),
        Ok(()) => {
            wait_for("the failure", BOOT, || async {
                match d.status(&vm("clash")).await.unwrap().state {
                    VmState::Failed(r) => Some(r),
                    _ => None,
                }
            })
            .await
        }
    };
    assert!(failed.contains("forwarding"), "{failed}");
    assert!(matches!(d.status(&vm("clash")).await.unwrap().state, VmState::Failed(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_panic_is_reported_failed() {
    let h = Harness::new();
    let d = h.driver();
    // blixard.run64 = base64("echo c >/proc/sysrq-trigger"): crash the guest kernel.
    let spec = VmSpec {
        name: "doomed".into(),
        vcpus: 1,
        memory_mib: 96,
        cmdline: Some("blixard.run64=ZWNobyBjID4vcHJvYy9zeXNycS10cmlnZ2Vy".into()),
        ..Default::default()
    };
    d.prepare(&vm(&spec.name), &spec).await.unwrap();
    d.start(&vm("doomed")).await.unwrap();
    let st = wait_for("the panic to end the VM", BOOT, || async {
        let st = d.status(&vm("doomed")).await.unwrap();
        (st.state != VmState::Running).then_some(st)
    })
    .await;
    assert_eq!(st.state, VmState::Failed("guest panicked".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_escalates_to_quit_when_the_guest_ignores_the_power_button() {
    let h = Harness::new();
    let d = h.driver();
    // blixard.run64 = base64("killall acpid; echo acpid-gone"): nobody handles the button.
    let spec = VmSpec {
        name: "stubborn".into(),
        vcpus: 1,
        memory_mib: 96,
        cmdline: Some("blixard.run64=a2lsbGFsbCBhY3BpZDsgZWNobyBhY3BpZC1nb25l".into()),
        ..Default::default()
    };
    d.prepare(&vm(&spec.name), &spec).await.unwrap();
    d.start(&vm("stubborn")).await.unwrap();
    let deadline = Instant::now() + BOOT;
    while !console_text(&d, "stubborn").await.contains("acpid-gone") {
        let log = console_text(&d, "stubborn").await;
        let tail = &log[log.len().saturating_sub(3000)..];
        assert!(
            Instant::now() < deadline,
            "acpid-gone never printed; status {:?}; console:\n{tail}",
            d.status(&vm("stubborn")).await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let t = Instant::now();
    assert_eq!(d.stop(&vm("stubborn"), Duration::from_millis(500)).await.unwrap(), StopOutcome::Quit);
    eprintln!("timing: stop escalated to quit in {} ms", t.elapsed().as_millis());
    let st = d.status(&vm("stubborn")).await.unwrap();
    assert_eq!((st.state, st.exit_reason.as_deref()), (VmState::Stopped, Some("host-qmp-quit")));
}

#[tokio::test]
async fn prepare_makes_a_copy_on_write_overlay_of_a_named_rootfs() {
    let h = Harness::new();
    let mut cfg = QemuConfig::new(h.dir.path(), h.image.clone(), Accel::Tcg);
    cfg.host_files.allowed_dirs.push(h.dir.path().to_path_buf());
    let d = QemuDriver::new(cfg).unwrap();
    let base = h.dir.path().join("base.qcow2");
    let made =
        std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&base).arg("64M").status();
    assert!(made.unwrap().success());
    let spec = VmSpec {
        name: "cow".into(),
        vcpus: 1,
        memory_mib: 96,
        disk_gib: Some(2),
        rootfs: Some(base.display().to_string()),
        ..Default::default()
    };
    d.prepare(&vm(&spec.name), &spec).await.unwrap();
    let disk = h.dir.path().join("vms/cow.1/disk.qcow2");
    let info = std::process::Command::new("qemu-img").args(["info", "--output=json"]).arg(&disk).output().unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["backing-filename"].as_str(), Some(base.to_str().unwrap()));
    assert_eq!(info["virtual-size"].as_u64(), Some(2 << 30));
    // Preparing again keeps the disk (and its data).
    let before = std::fs::metadata(&disk).unwrap().modified().unwrap();
    d.prepare(&vm(&spec.name), &spec).await.unwrap();
    assert_eq!(std::fs::metadata(&disk).unwrap().modified().unwrap(), before);
    assert!(matches!(
        d.prepare(&vm("../x"), &VmSpec { name: "../x".into(), ..spec }).await,
        Err(blixard_vmm::VmmError::InvalidName(_))
    ));
}

/// A spec naming host files outside the image cache and the allowed directories is refused at
/// prepare, naming the field and the rule, and nothing is created; so is a qcow2 rootfs inside
/// an allowed directory whose backing file is /etc/shadow.
#[tokio::test]
async fn host_files_outside_the_allowed_places_are_refused_at_prepare() {
    let h = Harness::new();
    let allowed = h.dir.path().join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let mut cfg = QemuConfig::new(h.dir.path(), h.image.clone(), Accel::Tcg);
    cfg.host_files.allowed_dirs.push(allowed.clone());
    let d = QemuDriver::new(cfg).unwrap();
    std::os::unix::fs::symlink("/etc/shadow", allowed.join("innocent")).unwrap();
    let evil = allowed.join("evil.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow", "-F", "raw"])
        .arg(&evil)
        .arg("64M")
        .status();
    assert!(made.unwrap().success());
    let spec = |name: &str| VmSpec { name: name.into(), vcpus: 1, memory_mib: 96, ..Default::default() };
    let cases: Vec<(VmSpec, &str, &str)> = vec![
        (VmSpec { initrd: Some("/etc/shadow".into()), ..spec("a") }, "initrd", "outside the image cache"),
        (VmSpec { initrd: Some("/proc/self/environ".into()), ..spec("b") }, "initrd", "under /proc"),
        (VmSpec { rootfs: Some("/dev/vda".into()), ..spec("c") }, "rootfs", "under /dev"),
        (VmSpec { kernel: Some(allowed.join("innocent").display().to_string()), ..spec("d") }, "kernel", "/etc/shadow"),
        (VmSpec { rootfs: Some(evil.display().to_string()), ..spec("e") }, "rootfs", "the backing file of"),
    ];
    for (s, field, rule) in cases {
        let e = d.prepare(&vm(&s.name), &s).await.expect_err("refused");
        let msg = e.to_string();
        assert!(matches!(&e, blixard_vmm::VmmError::HostFileRefused { field: f, .. } if f == field), "{msg}");
        assert!(msg.contains(rule), "{}: {msg}", s.name);
        assert!(!h.dir.path().join(format!("vms/{}.1/disk.qcow2", s.name)).exists());
    }
}
