//! Batch tasks with real processes: results with stdout, stderr and exit codes; failures,
//! timeouts (SIGTERM, then SIGKILL for a process ignoring it), retries, cancel, literal shell
//! characters, bounded output, pending with reasons; a task over its memory killed in its cgroup
//! and reported `oom` (needs root and cgroups, as CI has); and in a 3-node cluster, a worker
//! whose daemon is killed with kill -9: its watchdog kills the task and removes its cgroup, and
//! the task runs again on another node.

mod common;

use std::time::Duration;

use common::*;

const DONE: Duration = Duration::from_secs(120);

/// Kills every process working in a directory under `dir` (task attempts run in
/// `<data dir>/tasks/<attempt>/work`, in their own process group, so they outlive a kill -9 of
/// their daemon).
fn tasks_running_under(dir: &std::path::Path) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|e| std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir)))
}

fn kill_tasks_under(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else { return };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        if std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir)) {
            let _ = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// The enforcement this host gives tasks: these tests need root and a memory cgroup, as CI
/// has (cgroup v2 with its memory controller, or v1's memory hierarchy on a hybrid host).
fn expected_enforcement() -> &'static str {
    let root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")));
    assert!(root, "this test needs root (task cgroups); run it as root, as CI does");
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").unwrap_or_default();
    if v2.split_whitespace().any(|c| c == "memory") {
        "cgroup-v2"
    } else if std::path::Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() {
        "cgroup-v1"
    } else {
        panic!("this test needs a cgroup memory controller (v2 at /sys/fs/cgroup, or v1 mounted)")
    }
}

/// The directories of the cgroups named in the attempt directories of `data_dir` (their
/// `cgroup` files, while the attempts run).
fn attempt_cgroups(data_dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(dirs) = std::fs::read_dir(data_dir.join("tasks")) else { return Vec::new() };
    dirs.flatten()
        .filter_map(|d| std::fs::read_to_string(d.path().join("cgroup")).ok())
        .flat_map(|t| t.lines().skip(1).map(std::path::PathBuf::from).collect::<Vec<_>>())
        .collect()
}

fn one_node() -> TestCluster {
    let c = TestCluster::start(1, &[]);
    wait_until("the node to register", Duration::from_secs(180), || {
        let v = cli_json_opt(&c.node(1).addr, &["node", "list"])?;
        (v["nodes"].as_array()?.iter().filter(|n| n["status"] == "ready").count() == 1).then_some(())
    });
    c
}

fn submit(addr: &str, args: &[&str]) -> String {
    // `-o json` goes before the `--` that starts the task's own arguments.
    let mut a = vec!["-o", "json", "task", "submit"];
    a.extend_from_slice(args);
    let o = cli(addr, &a);
    assert!(o.status.success(), "blixard {a:?} failed: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json output");
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string()
}

fn finished(addr: &str, id: &str) -> serde_json::Value {
    wait_until(&format!("task {id} to finish"), DONE, || {
        let v = cli_json_opt(addr, &["task", "get", id])?;
        v["exit_code"].is_i64().then_some(v)
    })
}

#[test]
fn tasks_run_for_real_and_their_results_are_recorded() {
    let c = one_node();
    let addr = c.node(1).addr.clone();

    // Success, with stdout, stderr and the exit code; --wait exits with it.
    let o = cli(&addr, &["task", "submit", "--wait", "--", "sh", "-c", "echo hello; echo oops >&2; exit 0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let id = submit(&addr, &["--env", "WHO=world", "--", "sh", "-c", "echo hi $WHO; echo warn >&2"]);
    let v = finished(&addr, &id);
    assert_eq!((v["state"].as_str(), v["exit_code"].as_i64()), (Some("succeeded"), Some(0)), "{v}");
    assert_eq!(v["attempts"][0]["stdout_tail"], "hi world\n", "{v}");
    assert_eq!(v["attempts"][0]["stderr_tail"], "warn\n", "{v}");
    assert_eq!(stdout(&cli(&addr, &["task", "logs", &id])), "hi world\n");
    assert_eq!(stdout(&cli(&addr, &["task", "logs", &id, "--stderr"])), "warn\n");

    // A non-zero exit fails, and `--wait` / `task wait` exit with the task's code.
    let o = cli(&addr, &["task", "submit", "--wait", "--", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    let id = submit(&addr, &["--", "sh", "-c", "exit 3"]);
    assert_eq!(cli(&addr, &["task", "wait", &id]).status.code(), Some(3));
    assert_eq!(finished(&addr, &id)["state"], "failed");

    // Shell characters are literal arguments.
    let id = submit(&addr, &["--", "echo", ";", "$(id)", "`x`", "a b"]);
    let v = finished(&addr, &id);
    assert_eq!(v["attempts"][0]["stdout_tail"], "; $(id) `x` a b\n", "{v}");

    // A timeout: SIGTERM first; a process ignoring it is killed after the grace period.
    let id = submit(&addr, &["--timeout", "1s", "--", "sleep", "60"]);
    let v = finished(&addr, &id);
    assert_eq!((v["state"].as_str(), v["attempts"][0]["killed"].as_bool()), (Some("timed_out"), Some(false)), "{v}");
    let id = submit(&addr, &["--timeout", "1s", "--", "sh", "-c", "trap '' TERM; sleep 60"]);
    let v = finished(&addr, &id);
    assert_eq!((v["state"].as_str(), v["attempts"][0]["killed"].as_bool()), (Some("timed_out"), Some(true)), "{v}");

    // A retry: the first attempt fails (and leaves a marker), the second succeeds.
    let marker = c.tmp.path().join("marker");
    let script = format!("if [ -e {m} ]; then echo second; else touch {m}; exit 1; fi", m = marker.display());
    let id = submit(&addr, &["--retries", "2", "--backoff", "100ms", "--", "sh", "-c", &script]);
    let v = finished(&addr, &id);
    assert_eq!((v["state"].as_str(), v["attempts"].as_array().map(Vec::len)), (Some("succeeded"), Some(2)), "{v}");
    assert_eq!(v["attempts"][0]["exit_code"], 1);
    assert_eq!(v["attempts"][1]["stdout_tail"], "second\n");

    // Cancel a running task.
    let id = submit(&addr, &["--", "sleep", "60"]);
    wait_until("the task to run", DONE, || {
        (cli_json_opt(&addr, &["task", "get", &id])?["state"] == "running").then_some(())
    });
    // `task wait` (one WaitTask per 10 s) gives up at its timeout while the task runs...
    let o = cli(&addr, &["task", "wait", "--timeout", "1s", &id]);
    assert!(!o.status.success() && stderr(&o).contains("still running"), "{}", stderr(&o));
    // ...and a waiter is answered with the end once it is applied.
    let waiter = {
        let (addr, id) = (addr.clone(), id.clone());
        std::thread::spawn(move || cli(&addr, &["-o", "json", "task", "wait", "--timeout", "60s", &id]))
    };
    assert!(cli(&addr, &["task", "cancel", &id]).status.success());
    let v = finished(&addr, &id);
    assert_eq!(
        (v["state"].as_str(), v["attempts"][0]["result"].as_str()),
        (Some("cancelled"), Some("cancelled")),
        "{v}"
    );
    let o = waiter.join().expect("the waiter");
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", stderr(&o)));
    assert_eq!((w["state"].as_str(), o.status.code()), (Some("cancelled"), Some(1)), "{w}");

    // Output beyond the 16 MiB bound is cut with a marker; the recorded tail stays 4 KiB.
    let id = submit(&addr, &["--", "sh", "-c", "head -c 17000000 /dev/zero | tr '\\0' x; echo; echo END"]);
    let v = finished(&addr, &id);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert!(v["attempts"][0]["stdout_tail"].as_str().unwrap().ends_with("END\n"));
    let logs = cli(&addr, &["task", "logs", &id]).stdout;
    assert_eq!(logs.len(), 16 * 1024 * 1024 + "\n[blixard: output truncated: the limit is reached]\n".len());
    assert!(String::from_utf8_lossy(&logs[logs.len() - 80..]).contains("output truncated"));

    // More memory than any node: pending, with the scheduler's reasons.
    let id = submit(&addr, &["--memory", "1048576", "--", "true"]);
    let v = cli_json(&addr, &["task", "get", &id]);
    assert_eq!(v["state"], "pending", "{v}");
    assert!(v["pending"].as_str().unwrap_or_default().contains("memory"), "{v}");
    let list = cli_json(&addr, &["task", "list", "--state", "pending"]);
    assert_eq!(list["tasks"].as_array().map(Vec::len), Some(1), "{list}");

    // Bad input names the field.
    let o = cli(&addr, &["task", "submit", "--env", "1X=y", "--", "true"]);
    assert!(!o.status.success() && stderr(&o).contains("env"), "{}", stderr(&o));
    kill_tasks_under(c.tmp.path());
}

#[test]
fn a_task_whose_worker_dies_runs_again_on_another_node() {
    expected_enforcement();
    // Nodes 2 and 3 are the workers; node 1 (which leads) takes no task.
    let mut c = TestCluster::start(1, &[]);
    c.add(2, &["--label", "role=worker"]);
    c.add(3, &["--label", "role=worker"]);
    let leader = c.wait_voters(3);
    let addr = c.node(leader).addr.clone();
    wait_until("every node to register", Duration::from_secs(180), || {
        let v = cli_json_opt(&addr, &["node", "list"])?;
        (v["nodes"].as_array()?.iter().filter(|n| n["status"] == "ready").count() == 3).then_some(())
    });
    // Long enough to be running when its worker dies; quick on the next node.
    let marker = c.tmp.path().join("ran-once");
    let script = format!("if [ -e {m} ]; then echo again; else touch {m}; sleep 600; fi", m = marker.display());
    let id = submit(&addr, &["--constraint", "role=worker", "--", "sh", "-c", &script]);
    let v = wait_until("it to run", DONE, || {
        let v = cli_json_opt(&addr, &["task", "get", &id])?;
        (v["state"] == "running" && marker.exists()).then_some(v)
    });
    let worker = v["node"].as_u64().unwrap();
    assert_ne!(worker, leader, "{v}");
    let dir = c.node(worker).dir.clone();
    let cgroups = attempt_cgroups(&dir);
    assert!(!cgroups.is_empty() && cgroups.iter().all(|d| d.exists()), "{cgroups:?}");
    c.node_mut(worker).kill9();
    // Its fencing watchdog kills the task's process group once the lease runs out.
    wait_until("the dead worker's task process to be killed", Duration::from_secs(30), || {
        (!tasks_running_under(&dir)).then_some(())
    });
    let log = c.node(worker).log();
    assert!(log.contains("killed task attempt"), "the watchdog did not say it killed the task: {log}");
    // ... and removes its cgroup.
    wait_until("the dead worker's task cgroup to be removed", Duration::from_secs(30), || {
        cgroups.iter().all(|d| !d.exists()).then_some(())
    });
    let v = finished(&addr, &id);
    assert_eq!(v["state"], "succeeded", "{v}");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts[0]["result"], "lost", "{v}");
    assert_ne!(attempts.last().unwrap()["node"].as_u64(), Some(worker), "{v}");
    assert_eq!(attempts.last().unwrap()["stdout_tail"], "again\n");
    kill_tasks_under(c.tmp.path());
}

#[test]
fn a_restarted_daemon_reports_its_running_attempt_lost_and_the_task_runs_again() {
    expected_enforcement();
    let mut c = one_node();
    let addr = c.node(1).addr.clone();
    let marker = c.tmp.path().join("ran-once");
    let script = format!("if [ -e {m} ]; then echo again; else touch {m}; sleep 600; fi", m = marker.display());
    let id = submit(&addr, &["--", "sh", "-c", &script]);
    wait_until("it to run", DONE, || {
        let v = cli_json_opt(&addr, &["task", "get", &id])?;
        (v["state"] == "running" && marker.exists()).then_some(())
    });
    let cgroups = attempt_cgroups(&c.node(1).dir);
    assert!(!cgroups.is_empty(), "the running attempt has no cgroup");
    c.node_mut(1).kill9();
    c.node_mut(1).spawn(&[]);
    let v = finished(&addr, &id);
    assert_eq!(v["state"], "succeeded", "{v}");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!((attempts.len(), attempts[0]["result"].as_str()), (2, Some("lost")), "{v}");
    assert_eq!(attempts[1]["stdout_tail"], "again\n");
    assert_eq!(v["retries_used"], 0);
    wait_until("the first attempt's process to be gone", Duration::from_secs(30), || {
        (!tasks_running_under(&c.node(1).dir)).then_some(())
    });
    // Its cgroup (when the host gives tasks one) was removed with it.
    assert!(cgroups.iter().all(|d| !d.exists()), "{cgroups:?}");
    kill_tasks_under(c.tmp.path());
}

#[test]
fn a_task_over_its_memory_is_killed_and_reported_oom_and_its_cgroup_goes() {
    let enforcement = expected_enforcement();
    let c = one_node();
    let addr = c.node(1).addr.clone();
    // `tail` keeps a stream without newlines whole: 200 MiB of it, with 64 MiB, is killed by the
    // kernel (the shell's status is tail's). Retried once, per the policy, as for a failure.
    let alloc = "head -c 209715200 /dev/zero | tail >/dev/null";
    let id = submit(&addr, &["--memory", "64", "--retries", "1", "--backoff", "100ms", "--", "/bin/sh", "-c", alloc]);
    let v = finished(&addr, &id);
    assert_eq!((v["state"].as_str(), v["exit_code"].as_i64()), (Some("failed"), Some(137)), "{v}");
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{v}");
    for a in attempts {
        assert_eq!((a["result"].as_str(), a["enforcement"].as_str()), (Some("oom"), Some(enforcement)), "{v}");
    }
    let table = stdout(&cli(&addr, &["task", "get", &id]));
    assert!(table.contains(": oom") && table.contains("out of memory"), "{table}");
    assert!(table.contains(&format!("enforcement: {enforcement}")), "{table}");

    // The same within its limit succeeds, in a cgroup of its own that is gone afterwards.
    let script = format!("{alloc}; cat /proc/self/cgroup");
    let id = submit(&addr, &["--memory", "512", "--", "/bin/sh", "-c", &script]);
    let v = finished(&addr, &id);
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["attempts"][0]["enforcement"], enforcement, "{v}");
    let out = v["attempts"][0]["stdout_tail"].as_str().unwrap_or_default().to_string();
    let path = out
        .lines()
        .find_map(|l| {
            let (ctl, path) = l.split_once(':')?.1.split_once(':')?;
            (ctl == "memory" || (ctl.is_empty() && enforcement == "cgroup-v2")).then(|| path.to_string())
        })
        .unwrap_or_else(|| panic!("no memory cgroup in {out}"));
    assert!(path.contains("/blixard-tasks/t"), "it did not run in its own cgroup: {out}");
    let dir = if enforcement == "cgroup-v2" {
        format!("/sys/fs/cgroup{path}")
    } else {
        format!("/sys/fs/cgroup/memory{path}")
    };
    assert!(!std::path::Path::new(&dir).exists(), "its cgroup {dir} is still there");
    kill_tasks_under(c.tmp.path());
}
