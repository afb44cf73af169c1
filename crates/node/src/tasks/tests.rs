//! The process executor with real processes.

use std::time::{Duration, Instant};

use blixard_core::{AttemptResult, TaskSpec};
use tokio::sync::watch;

use super::exec::{self, Executor, Finished, Job, ProcessExecutor, Stop, TRUNCATED};
use super::limits::{self, Plan};

fn spec(command: &str, args: &[&str]) -> TaskSpec {
    TaskSpec {
        command: command.into(),
        args: args.iter().map(|s| s.to_string()).collect(),
        timeout_ms: 30_000,
        ..Default::default()
    }
}

async fn run_with(ex: &ProcessExecutor, s: TaskSpec, dir: &std::path::Path) -> Finished {
    let (_tx, rx) = watch::channel(Stop::Run);
    ex.run(Job { spec: s, dir: dir.to_path_buf() }, rx).await
}

async fn run(s: TaskSpec) -> (Finished, tempfile::TempDir) {
    let d = tempfile::tempdir().unwrap();
    let f = run_with(&ProcessExecutor::default(), s, d.path()).await;
    (f, d)
}

#[tokio::test]
async fn exit_code_stdout_and_stderr_are_recorded() {
    let (f, d) = run(spec("sh", &["-c", "echo out; echo err >&2; exit 3"])).await;
    assert_eq!(f.result, AttemptResult::Exited { code: 3 });
    assert_eq!((f.stdout_tail.as_slice(), f.stderr_tail.as_slice()), (&b"out\n"[..], &b"err\n"[..]));
    assert_eq!(std::fs::read(d.path().join("stdout")).unwrap(), b"out\n");
    assert_eq!(std::fs::read(d.path().join("stderr")).unwrap(), b"err\n");
}

#[tokio::test]
async fn shell_characters_are_literal_arguments() {
    let (f, _d) = run(spec("echo", &[";", "$(id)", "a b", "`x`"])).await;
    assert_eq!(f.result, AttemptResult::Exited { code: 0 });
    assert_eq!(f.stdout_tail, b"; $(id) a b `x`\n");
}

#[tokio::test]
async fn the_environment_is_only_path_and_the_tasks_own_and_cwd_is_the_attempt_dir() {
    let mut s = spec("sh", &["-c", "env | sort; pwd"]);
    s.env.insert("GREETING".into(), "hi there".into());
    std::env::set_var("BLIXARD_SECRET_TEST", "leak");
    let (f, d) = run(s).await;
    let out = String::from_utf8(f.stdout_tail).unwrap();
    let vars: Vec<&str> = out.lines().filter(|l| l.contains('=')).map(|l| l.split('=').next().unwrap()).collect();
    // sh itself adds PWD (and maybe SHLVL, OLDPWD, _); nothing of the daemon's environment.
    assert!(vars.iter().all(|v| ["GREETING", "PATH", "PWD", "SHLVL", "OLDPWD", "_"].contains(v)), "{out}");
    assert!(out.contains("GREETING=hi there") && !out.contains("leak"), "{out}");
    let work = d.path().join("work").canonicalize().unwrap();
    assert!(out.lines().any(|l| l == work.to_str().unwrap()), "{out}");
}

#[tokio::test]
async fn a_missing_program_fails_to_start() {
    let (f, _d) = run(spec("/nonexistent/program", &[])).await;
    assert!(matches!(f.result, AttemptResult::StartFailed { ref error } if error.contains("nonexistent")), "{f:?}");
}

#[tokio::test]
async fn a_signal_is_reported_as_such() {
    let (f, _d) = run(spec("sh", &["-c", "kill -9 $$"])).await;
    assert_eq!(f.result, AttemptResult::Signaled { signal: 9 });
}

#[tokio::test]
async fn a_timeout_sends_term_and_a_process_that_exits_on_it_is_not_killed() {
    let d = tempfile::tempdir().unwrap();
    let ex = ProcessExecutor { grace: Duration::from_secs(5), ..Default::default() };
    let s = TaskSpec { timeout_ms: 1_000, ..spec("sleep", &["30"]) };
    let t0 = Instant::now();
    let f = run_with(&ex, s, d.path()).await;
    assert_eq!(f.result, AttemptResult::TimedOut { killed: false });
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn a_process_ignoring_term_is_killed_after_the_grace_with_its_children() {
    let d = tempfile::tempdir().unwrap();
    let ex = ProcessExecutor { grace: Duration::from_millis(500), ..Default::default() };
    // The child (sleep) keeps stdout open: it must die with the group for the run to end.
    let s =
        TaskSpec { timeout_ms: 1_000, ..spec("sh", &["-c", "trap '' TERM; echo started; sleep 60 & sleep 60; wait"]) };
    let t0 = Instant::now();
    let f = run_with(&ex, s, d.path()).await;
    assert_eq!(f.result, AttemptResult::TimedOut { killed: true });
    assert_eq!(f.stdout_tail, b"started\n");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn cancel_stops_the_group() {
    let d = tempfile::tempdir().unwrap();
    let ex = ProcessExecutor::default();
    let (tx, rx) = watch::channel(Stop::Run);
    let h = tokio::spawn(ex.run(Job { spec: spec("sleep", &["60"]), dir: d.path().to_path_buf() }, rx));
    // Wait until it runs (its pgid file appears), then cancel.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.path().join("pgid").exists() {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.send(Stop::Cancel).unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), h).await.unwrap().unwrap();
    assert_eq!(f.result, AttemptResult::Cancelled { killed: false });
}

#[tokio::test]
async fn output_beyond_the_bound_is_cut_with_a_marker_and_the_tail_is_bounded() {
    let d = tempfile::tempdir().unwrap();
    let ex = ProcessExecutor { output_limit: 1000, ..Default::default() };
    let f = run_with(&ex, spec("sh", &["-c", "head -c 100000 /dev/zero | tr '\\0' x; echo END"]), d.path()).await;
    assert_eq!(f.result, AttemptResult::Exited { code: 0 });
    let file = std::fs::read(d.path().join("stdout")).unwrap();
    assert_eq!(file.len(), 1000 + TRUNCATED.len());
    assert!(file.ends_with(TRUNCATED.as_bytes()));
    assert_eq!(f.stdout_tail.len(), blixard_core::task::MAX_TAIL);
    assert!(f.stdout_tail.ends_with(b"xEND\n"));
}

/// `sh -c 'head -c N /dev/zero | tail >/dev/null'`: `tail` keeps a stream without newlines
/// whole, so it needs about N bytes; the shell's status is `tail`'s.
fn allocate(mib: u32, memory_mib: u32) -> TaskSpec {
    let script = format!("head -c {} /dev/zero | tail >/dev/null", u64::from(mib) << 20);
    TaskSpec { memory_mib, ..spec("/bin/sh", &["-c", &script]) }
}

/// The host's cgroup plan; these tests need root and a memory cgroup (as CI has).
fn cgroup_plan() -> Plan {
    let plan = limits::detect();
    assert!(
        matches!(plan, Plan::V1 { .. } | Plan::V2 { .. }),
        "this test needs root and a cgroup memory controller (v2, or v1 mounted); got {}",
        plan.describe()
    );
    plan
}

#[tokio::test]
async fn in_a_cgroup_a_task_over_its_memory_is_oom_within_it_succeeds_and_the_cgroup_goes() {
    let ex = ProcessExecutor { limits: cgroup_plan(), ..Default::default() };
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("t1-1");
    assert!(ex.enforcement(&spec("true", &[])).as_str().starts_with("cgroup-v"));
    let f = run_with(&ex, allocate(200, 64), &dir).await;
    assert_eq!(f.result, AttemptResult::Oom, "{f:?}");
    assert!(exec::attempt_cgroup(&dir).is_none());

    // The same within its limit succeeds, and it ran in its own cgroup, gone afterwards.
    let dir = d.path().join("t1-2");
    let mut s = allocate(200, 512);
    s.args[1].push_str("; cat /proc/self/cgroup");
    let f = run_with(&ex, s, &dir).await;
    assert_eq!(f.result, AttemptResult::Exited { code: 0 }, "{f:?}");
    let out = String::from_utf8_lossy(&f.stdout_tail).into_owned();
    let leaf = limits::leaf_name(&dir);
    let line = out.lines().find(|l| l.contains(":memory:") || l.starts_with("0::")).unwrap_or_default();
    assert!(line.ends_with(&format!("/{}/{leaf}", limits::PARENT)), "not in its cgroup: {out}");
    let cg = limits::facts();
    let gone =
        cg.mounts.iter().all(|m| !m.point.join(line.rsplit(':').next().unwrap().trim_start_matches('/')).exists());
    assert!(gone, "its cgroup is still there: {line}");
}

/// The cgroup paths (after the controllers) of every thread of this process.
fn own_threads_cgroups() -> Vec<String> {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap();
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("cgroup")).ok())
        .flat_map(|c| c.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[tokio::test]
async fn in_a_cgroup_a_program_by_name_runs_in_each_of_its_cgroups_and_no_daemon_thread_stays_there() {
    let ex = ProcessExecutor { limits: cgroup_plan(), ..Default::default() };
    let d = tempfile::tempdir().unwrap();
    for (i, program) in ["cat", "/bin/cat"].into_iter().enumerate() {
        let dir = d.path().join(format!("t3-{i}"));
        let f = run_with(&ex, spec(program, &["/proc/self/cgroup"]), &dir).await;
        assert_eq!(f.result, AttemptResult::Exited { code: 0 }, "{f:?}");
        let out = String::from_utf8_lossy(&f.stdout_tail).into_owned();
        let inside = format!("/{}/{}", limits::PARENT, limits::leaf_name(&dir));
        let want: &[&str] = match &ex.limits {
            Plan::V1 { cpu: Some(_), .. } => &["memory", "cpu"],
            Plan::V1 { .. } => &["memory"],
            _ => &[""],
        };
        for ctl in want {
            let line = out.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == *ctl)));
            assert!(line.is_some_and(|l| l.ends_with(&inside)), "{program}: not in its {ctl:?} cgroup: {out}");
        }
    }
    // Under cgroup v1 they were started by the spawning thread (no fork of this process)...
    if matches!(ex.limits, Plan::V1 { .. }) {
        let names: Vec<String> = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .collect();
        assert!(names.iter().any(|n| n.trim() == "task-spawner"), "no task-spawner thread: {names:?}");
    }
    // ...which is back in the daemon's own cgroups (polled:
    // tests running beside this one start attempts too, each with the thread inside for a
    // moment).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stray: Vec<String> = own_threads_cgroups().into_iter().filter(|l| l.contains(limits::PARENT)).collect();
        if stray.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "threads of this process left in attempts' cgroups: {stray:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_program_name_is_found_in_path_as_execvp_would() {
    use super::spawn::resolve;
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    std::fs::create_dir_all(a.join("prog")).unwrap(); // a directory is not a program
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("noexec"), "").unwrap(); // nor a file without the x bit (as root: no x bit at all)
    std::fs::write(b.join("prog"), "#!/bin/sh\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(b.join("prog"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}::{}", a.display(), b.display());
    assert_eq!(resolve("prog", &path), Some(b.join("prog")));
    assert_eq!(resolve("noexec", &path), None);
    assert_eq!(resolve("missing", &path), None);
    assert_eq!(resolve("/bin/sh", &path), None);
    assert_eq!(resolve("", &path), None);
}

/// A script without a `#!` line runs (by `sh`, as `execvp` does) in its cgroup too.
#[tokio::test]
async fn in_a_cgroup_a_script_without_an_interpreter_line_runs_under_sh() {
    let ex = ProcessExecutor { limits: cgroup_plan(), ..Default::default() };
    let d = tempfile::tempdir().unwrap();
    let script = d.path().join("plain.sh");
    std::fs::write(&script, "echo from-a-plain-script\n").unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let f = run_with(&ex, spec(script.to_str().unwrap(), &[]), &d.path().join("t4-1")).await;
    assert_eq!(f.result, AttemptResult::Exited { code: 0 }, "{f:?}");
    assert_eq!(String::from_utf8_lossy(&f.stdout_tail).trim(), "from-a-plain-script");
}

#[tokio::test]
async fn in_a_cgroup_a_forked_child_cannot_escape_and_is_killed_with_the_attempt() {
    let ex = ProcessExecutor { limits: cgroup_plan(), grace: Duration::from_millis(300), ..Default::default() };
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("t2-1");
    // A child in a new session (out of the process group) still dies with the attempt.
    let s = TaskSpec {
        timeout_ms: 1_000,
        ..spec("/bin/sh", &["-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!; sleep 60"])
    };
    let f = run_with(&ex, s, &dir).await;
    assert!(matches!(f.result, AttemptResult::TimedOut { .. }), "{f:?}");
    let pid: i32 = String::from_utf8_lossy(&f.stdout_tail).trim().parse().expect("the child's pid");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "the escaped child {pid} still runs: {stat}");
}

#[tokio::test]
async fn with_rlimits_an_allocation_beyond_the_memory_is_an_ordinary_failure() {
    let ex = ProcessExecutor { limits: Plan::Rlimit, ..Default::default() };
    assert_eq!(ex.enforcement(&spec("true", &[])), blixard_core::Enforcement::Rlimit);
    let d = tempfile::tempdir().unwrap();
    let f = run_with(&ex, allocate(200, 64), d.path()).await;
    assert_eq!(f.result, AttemptResult::Exited { code: 1 }, "{f:?}");
    assert!(String::from_utf8_lossy(&f.stderr_tail).contains("memory exhausted"), "{f:?}");
    let f = run_with(&ex, allocate(200, 512), d.path()).await;
    assert_eq!(f.result, AttemptResult::Exited { code: 0 }, "{f:?}");
}

#[tokio::test]
async fn a_fenced_attempt_is_killed_at_once_even_if_it_ignores_term() {
    // The cluster declares a fenced node down soon after (3 s by default) and runs the task
    // elsewhere: a grace period here would let two attempts run at once.
    let d = tempfile::tempdir().unwrap();
    let ex = ProcessExecutor { grace: Duration::from_secs(5), ..Default::default() };
    let (tx, rx) = watch::channel(Stop::Run);
    let s = spec("sh", &["-c", "trap '' TERM; sleep 60 & wait"]);
    let h = tokio::spawn(ex.run(Job { spec: s, dir: d.path().to_path_buf() }, rx));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.path().join("pgid").exists() {
        assert!(Instant::now() < deadline, "never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t0 = Instant::now();
    tx.send(Stop::Fence).unwrap();
    let f = tokio::time::timeout(Duration::from_secs(10), h).await.unwrap().unwrap();
    assert_eq!(f.result, AttemptResult::Cancelled { killed: true });
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}
