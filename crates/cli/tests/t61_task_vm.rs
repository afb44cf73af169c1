//! Tasks with `--isolation vm`, in real QEMU microVMs (TCG on machines where KVM guests hang):
//! the guest's kernel answers `uname`, exit codes, stdout and stderr apart, the environment,
//! literal shell characters, a program the guest does not have, a timeout and a cancel that
//! leave no QEMU behind, and a daemon killed with kill -9 whose task VM dies with it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const DONE: Duration = Duration::from_secs(180);

fn one_node() -> TestCluster {
    let c = TestCluster::start(1, &[]);
    wait_until("the node to register", Duration::from_secs(180), || {
        let v = cli_json_opt(&c.node(1).addr, &["node", "list"])?;
        (v["nodes"].as_array()?.iter().filter(|n| n["status"] == "ready").count() == 1).then_some(())
    });
    c
}

/// `task submit --isolation vm ARGS` (ARGS ends with `-- CMD...`), its JSON.
fn submit(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["-o", "json", "task", "submit", "--isolation", "vm"];
    a.extend_from_slice(args);
    let o = cli(addr, &a);
    assert!(o.status.success(), "blixard {a:?} failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("json output")
}

fn finished(addr: &str, id: &str) -> serde_json::Value {
    wait_until(&format!("task {id} to finish"), DONE, || {
        let v = cli_json_opt(addr, &["task", "get", id])?;
        v["exit_code"].is_i64().then_some(v)
    })
}

/// QEMU processes started for `dir`'s tasks (their command line names the attempt directory).
fn task_vms_under(dir: &Path) -> Vec<u32> {
    let needle = dir.join("tasks").to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmd = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            (cmd.contains("qemu-system") && cmd.contains(&needle)).then_some(pid)
        })
        .collect()
}

/// The guest kernel's version, from the image's manifest.
fn guest_kernel() -> String {
    let m = std::fs::read_to_string(image_cache().join("default").join("manifest.json")).expect("the image is built");
    let v: serde_json::Value = serde_json::from_str(&m).unwrap();
    v["kernel_version"].as_str().unwrap().to_string()
}

#[test]
fn tasks_run_in_throwaway_microvms() {
    let c = one_node();
    let addr = c.node(1).addr.clone();
    let dir = c.node(1).dir.clone();

    // `--wait` exits with the task's code; stdout names the guest's kernel, not the host's.
    let o = cli(&addr, &["-o", "json", "task", "submit", "--isolation", "vm", "--wait", "--", "uname", "-a"]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "succeeded", "{v}");
    let out = v["attempts"][0]["stdout_tail"].as_str().unwrap().to_string();
    let guest = guest_kernel();
    let host = String::from_utf8(std::process::Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
    assert_ne!(guest, host.trim(), "the test needs a guest kernel that differs from the host's");
    assert!(out.starts_with("Linux ") && out.contains(&guest) && !out.contains(host.trim()), "{out}");
    assert_eq!(v["isolation"], "vm", "{v}");
    let id = v["id"].as_str().unwrap();
    assert_eq!(stdout(&cli(&addr, &["task", "logs", id])), out);
    assert!(task_vms_under(&dir).is_empty(), "the VM is gone once the task is done");

    // A non-zero exit: the task fails with the guest program's code.
    let o = cli(&addr, &["task", "submit", "--isolation", "vm", "--wait", "--", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    let id = stderr(&o).split_whitespace().next().unwrap().to_string();
    let v = cli_json(&addr, &["task", "get", &id]);
    assert_eq!((v["state"].as_str(), v["attempts"][0]["exit_code"].as_i64()), (Some("failed"), Some(3)), "{v}");

    // stdout and stderr apart (with no newline at the end), and the task's environment.
    let t = submit(&addr, &["--env", "WHO=a b;c", "--", "sh", "-c", "echo \"hi $WHO\"; printf err >&2; printf end"]);
    let v = finished(&addr, t["id"].as_str().unwrap());
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["attempts"][0]["stdout_tail"], "hi a b;c\nend", "{v}");
    assert_eq!(v["attempts"][0]["stderr_tail"], "err", "{v}");
    assert_eq!(stdout(&cli(&addr, &["task", "logs", t["id"].as_str().unwrap(), "--stderr"])), "err");

    // Shell characters are literal arguments.
    let t = submit(&addr, &["--", "echo", ";", "$(id)", "`x`", "a b", "it's", "*"]);
    let v = finished(&addr, t["id"].as_str().unwrap());
    assert_eq!(v["attempts"][0]["stdout_tail"], "; $(id) `x` a b it's *\n", "{v}");

    // A program the guest image does not have: failed, saying so.
    let t = submit(&addr, &["--", "no-such-program", "x"]);
    let v = finished(&addr, t["id"].as_str().unwrap());
    assert_eq!((v["state"].as_str(), v["attempts"][0]["result"].as_str()), (Some("failed"), Some("start_failed")));
    assert!(v["attempts"][0]["error"].as_str().unwrap().contains("no such program in the guest"), "{v}");

    // A timeout kills the VM: timed_out, and no QEMU is left.
    let t = submit(&addr, &["--timeout", "4s", "--", "sleep", "600"]);
    let v = finished(&addr, t["id"].as_str().unwrap());
    assert_eq!((v["state"].as_str(), v["attempts"][0]["killed"].as_bool()), (Some("timed_out"), Some(true)), "{v}");
    assert!(task_vms_under(&dir).is_empty(), "QEMU left after a timeout: {:?}", task_vms_under(&dir));

    // A cancel kills the VM too.
    let t = submit(&addr, &["--", "sleep", "600"]);
    let id = t["id"].as_str().unwrap().to_string();
    wait_until("the task's VM to run", DONE, || (!task_vms_under(&dir).is_empty()).then_some(()));
    assert!(cli(&addr, &["task", "cancel", &id]).status.success());
    let v = finished(&addr, &id);
    assert_eq!((v["state"].as_str(), v["attempts"][0]["result"].as_str()), (Some("cancelled"), Some("cancelled")));
    assert!(task_vms_under(&dir).is_empty(), "QEMU left after a cancel: {:?}", task_vms_under(&dir));
}

#[test]
fn a_killed_daemon_takes_its_task_vm_with_it() {
    let mut c = one_node();
    let addr = c.node(1).addr.clone();
    let dir = c.node(1).dir.clone();
    let t = submit(&addr, &["--", "sleep", "600"]);
    let pid = wait_until("the task's VM to run", DONE, || task_vms_under(&dir).first().copied());
    // The VM is where the watchdog and a restarted daemon look for an attempt's process group:
    // its id in `pgid`, its working directory the attempt's `work`.
    let attempt = std::fs::read_dir(dir.join("tasks")).unwrap().flatten().next().unwrap().path();
    let pgid: u32 = std::fs::read_to_string(attempt.join("pgid")).unwrap().trim().parse().unwrap();
    assert_eq!(pgid, pid);
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
    assert_eq!(cwd, attempt.join("work").canonicalize().unwrap());

    c.node_mut(1).kill9();
    wait_until("the dead daemon's task VM to be killed", Duration::from_secs(30), || {
        task_vms_under(&dir).is_empty().then_some(())
    });
    // Restarted, the node reports the attempt lost and starts another; cancelling ends it.
    c.node_mut(1).spawn(&[]);
    let id = t["id"].as_str().unwrap().to_string();
    wait_until("a second attempt", DONE, || {
        let v = cli_json_opt(&addr, &["task", "get", &id])?;
        (v["attempts"][0]["result"] == "lost" && v["attempts"].as_array()?.len() == 2).then_some(())
    });
    assert!(cli(&addr, &["task", "cancel", &id]).status.success());
    assert_eq!(finished(&addr, &id)["state"], "cancelled");
    assert!(task_vms_under(&dir).is_empty(), "{:?}", task_vms_under(&dir));
}
