//! The microvm.nix driver observes its runner: one that fails (or cannot even start) is reported
//! as `Failed` with its exit status and the last lines it printed, one stopped on request as
//! `Stopped`. `nix` here is a script on a `PATH` of the test's own: nixpkgs is not needed to make
//! a runner fail.
#![cfg(not(madsim))]

use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use blixard_core::VmSpec;
use blixard_vmm::microvm_nix::MicrovmNixDriver;
use blixard_vmm::{Instance, StopOutcome, VmDriver, VmObserved, VmState};

fn vm() -> Instance {
    Instance::new("web-1", 1)
}

fn spec() -> VmSpec {
    VmSpec { name: "web-1".into(), vcpus: 1, memory_mib: 128, ..Default::default() }
}

/// A `PATH` whose only entry holds `nix`, a shell script with `body`.
fn fake_nix(dir: &Path, body: &str) -> OsString {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let nix = bin.join("nix");
    std::fs::write(&nix, body).unwrap();
    std::fs::set_permissions(&nix, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin.into_os_string()
}

async fn wait_state(d: &MicrovmNixDriver, what: &str, ok: impl Fn(&VmState) -> bool) -> VmObserved {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = d.status(&vm()).await.unwrap();
        if ok(&st.state) {
            return st;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_runner_that_exits_non_zero_is_failed_with_its_status_and_last_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let script = "#!/bin/sh\necho 'evaluating the flake'\nfor i in 1 2 3 4 5 6 7 8 9 10; do echo \"noise $i\"; done\n\
                  echo \"error: flake 'path:$PWD' does not provide attribute 'declaredRunner'\" >&2\nexit 3\n";
    let d = MicrovmNixDriver::with_path_var(tmp.path().join("base"), Some(&fake_nix(tmp.path(), script)));
    d.prepare(&vm(), &spec()).await.unwrap();
    d.start(&vm()).await.unwrap();
    let st = wait_state(&d, "the runner to fail", |s| matches!(s, VmState::Failed(_))).await;
    let VmState::Failed(why) = &st.state else { unreachable!() };
    assert!(why.contains("exit status: 3"), "{why}");
    assert!(why.contains("does not provide attribute 'declaredRunner'"), "the runner's last words: {why}");
    assert!(!why.contains("evaluating the flake"), "only the last lines: {why}");
    assert_eq!(st.exit_reason.as_deref(), Some(why.as_str()));
    assert_eq!(st.pid, None);
    eprintln!("reason: {why}");
    // It stays failed (status is not a one-shot) until a start runs the runner again.
    assert!(matches!(d.status(&vm()).await.unwrap().state, VmState::Failed(_)));
    fake_nix(tmp.path(), "#!/bin/sh\nexec sleep 600\n");
    d.start(&vm()).await.unwrap();
    assert_eq!(d.status(&vm()).await.unwrap().state, VmState::Running);
    d.delete(&vm()).await.unwrap();
}

#[tokio::test]
async fn a_runner_that_cannot_start_is_failed_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = MicrovmNixDriver::with_path_var(
        tmp.path().join("base"),
        Some(&fake_nix(tmp.path(), "#!/nonexistent/interpreter\n")),
    );
    d.prepare(&vm(), &spec()).await.unwrap();
    let e = d.start(&vm()).await.unwrap_err();
    let st = d.status(&vm()).await.unwrap();
    let VmState::Failed(why) = &st.state else { panic!("{st:?}") };
    assert!(why.contains("cannot run"), "{why}");
    assert!(e.to_string().starts_with("cannot run"), "{e}");
}

#[tokio::test]
async fn a_runner_stopped_on_request_is_stopped_and_one_that_exits_zero_too() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fake_nix(tmp.path(), "#!/bin/sh\n[ -e stop-now ] && exit 0\nexec sleep 600\n");
    let d = MicrovmNixDriver::with_path_var(tmp.path().join("base"), Some(&path));
    d.prepare(&vm(), &spec()).await.unwrap();
    d.start(&vm()).await.unwrap();
    wait_state(&d, "the runner to run", |s| *s == VmState::Running).await;
    assert_eq!(d.stop(&vm(), Duration::from_secs(5)).await.unwrap(), StopOutcome::Graceful);
    assert_eq!(d.status(&vm()).await.unwrap().state, VmState::Stopped);

    // The guest powered off: the runner exits 0 by itself.
    std::fs::write(tmp.path().join("base/vms/web-1.1/stop-now"), "").unwrap();
    d.start(&vm()).await.unwrap();
    wait_state(&d, "the runner to exit", |s| *s == VmState::Stopped).await;
    d.delete(&vm()).await.unwrap();
}
