//! Holding a task attempt to its vCPUs and memory.
//!
//! When the daemon runs as root and a cgroup hierarchy with the memory controller is mounted,
//! every attempt gets a cgroup of its own, which the child joins before it execs (so nothing it
//! starts escapes): cgroup v2 where its memory controller is available (`memory.max` = the
//! task's memory, `memory.swap.max` = 0, `memory.oom.group` = 1, `cpu.max` = a quota of its
//! vCPUs), else cgroup v1's memory and cpu controllers (`memory.limit_in_bytes`, the same for
//! `memory.memsw.limit_in_bytes`, `cpu.cfs_quota_us`). Otherwise the child gets
//! `RLIMIT_AS` = its memory (no CPU limit). A kernel OOM kill inside the cgroup makes the
//! attempt's result `oom`; with rlimits an allocation fails inside the task instead, an
//! ordinary failure.
//!
//! cgroup v2 forbids processes in a cgroup whose children have controllers enabled (except at
//! the root), so the daemon never puts anything in its own cgroup: attempts' cgroups are
//! `<cgroup2 mount>/blixard-tasks/<attempt>`, a sub-tree at the root of the hierarchy. Under v1
//! (no such rule) they go under the daemon's own cgroup of each hierarchy,
//! `<mount>/<own path>/blixard-tasks/<attempt>`, so they count against whatever holds the
//! daemon. `blixard-tasks` is removed when its last attempt's cgroup goes.
//!
//! The parsing and the choice are pure (unit-tested); the rest writes the cgroup files.

use std::path::{Path, PathBuf};

use blixard_core::Enforcement;

/// Where the attempts' cgroups are, in each hierarchy.
pub const PARENT: &str = "blixard-tasks";
/// Where cgroup hierarchies are mounted: others are not used (an attempt's `cgroup` file is
/// only trusted to name a directory under it).
pub const CGROUP_FS: &str = "/sys/fs/cgroup";
/// The CPU bandwidth period; a task's quota is `vcpus` periods per period.
pub const CPU_PERIOD_US: u64 = 100_000;

/// A cgroup file system from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The hierarchy's path mounted here (`/`, unless a sub-tree is mounted, as in containers).
    pub root: String,
    pub point: PathBuf,
    /// `None` for cgroup2; a v1 hierarchy's controllers otherwise.
    pub v1: Option<Vec<String>>,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4]).ok().and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in a `/proc/self/mountinfo` text (other lines and malformed ones skipped).
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (pre.get(3), pre.get(4), post.first()) else { continue };
        let v1 = match *fstype {
            "cgroup2" => None,
            "cgroup" => {
                let opts = post.get(2).copied().unwrap_or_default();
                Some(
                    opts.split(',')
                        .filter(|o| !o.contains('=') && !["rw", "ro"].contains(o))
                        .map(str::to_string)
                        .collect(),
                )
            }
            _ => continue,
        };
        out.push(Mount { root: unescape(root), point: PathBuf::from(unescape(point)), v1 });
    }
    out
}

/// `/proc/self/cgroup`: (controllers, path) per hierarchy; v2's line has no controllers.
pub fn parse_proc_cgroup(text: &str) -> Vec<(Vec<String>, String)> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctl = it.next()?;
            let path = it.next()?;
            let ctl = ctl.split(',').filter(|c| !c.is_empty()).map(str::to_string).collect();
            Some((ctl, path.to_string()))
        })
        .collect()
}

/// A counter (`oom_kill 3`) of `memory.events` (v2) or `memory.oom_control` (v1).
pub fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// What the daemon found out about this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub root: bool,
    pub mounts: Vec<Mount>,
    /// `/proc/self/cgroup`.
    pub own: Vec<(Vec<String>, String)>,
    /// The cgroup2 mount's `cgroup.controllers` (empty when not mounted).
    pub v2_controllers: String,
}

/// How attempts are held to their resources, and where their cgroups go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    None,
    Rlimit,
    /// Attempts' cgroups under `parent`; `cpu`: the cpu controller is available too.
    V2 {
        parent: PathBuf,
        cpu: bool,
    },
    /// Attempts' cgroups under `memory` (and `cpu`, when that controller is mounted).
    V1 {
        memory: PathBuf,
        cpu: Option<PathBuf>,
    },
}

/// The directory for attempts' cgroups in a v1 hierarchy with `controller`, under the
/// daemon's own cgroup there.
fn v1_parent(f: &Facts, controller: &str) -> Option<PathBuf> {
    let m = f
        .mounts
        .iter()
        .filter(|m| m.point.starts_with(CGROUP_FS))
        .find(|m| m.v1.as_ref().is_some_and(|c| c.iter().any(|c| c == controller)))?;
    let own = f.own.iter().find(|(c, _)| c.iter().any(|c| c == controller)).map_or("/", |(_, p)| p.as_str());
    let rel = own.strip_prefix(m.root.trim_end_matches('/')).unwrap_or(own).trim_start_matches('/');
    if rel.split('/').any(|s| s == "..") {
        return None;
    }
    let base = if rel.is_empty() { m.point.clone() } else { m.point.join(rel) };
    Some(base.join(PARENT))
}

/// The plans to try, best first (the last is always rlimits): v2 when its memory controller
/// is available, v1 when a memory hierarchy is mounted — both only as root.
pub fn candidates(f: &Facts) -> Vec<Plan> {
    let mut out = Vec::new();
    if f.root {
        let ctl: Vec<&str> = f.v2_controllers.split_whitespace().collect();
        if let Some(m) = f.mounts.iter().find(|m| m.v1.is_none() && m.point.starts_with(CGROUP_FS)) {
            if ctl.contains(&"memory") {
                out.push(Plan::V2 { parent: m.point.join(PARENT), cpu: ctl.contains(&"cpu") });
            }
        }
        if let Some(memory) = v1_parent(f, "memory") {
            out.push(Plan::V1 { memory, cpu: v1_parent(f, "cpu") });
        }
    }
    out.push(Plan::Rlimit);
    out
}

impl Plan {
    pub fn enforcement(&self) -> Enforcement {
        match self {
            Plan::None => Enforcement::None,
            Plan::Rlimit => Enforcement::Rlimit,
            Plan::V1 { .. } => Enforcement::CgroupV1,
            Plan::V2 { .. } => Enforcement::CgroupV2,
        }
    }

    /// The RLIMIT_AS for a task of `memory_mib` under this plan (only [`Plan::Rlimit`]).
    pub fn rlimit_as(&self, memory_mib: u32) -> Option<u64> {
        matches!(self, Plan::Rlimit).then(|| u64::from(memory_mib) * 1024 * 1024)
    }

    pub fn describe(&self) -> String {
        match self {
            Plan::None => "none (vCPUs and memory are only reserved)".into(),
            Plan::Rlimit => "rlimit (RLIMIT_AS = the task's memory; no CPU limit)".into(),
            Plan::V2 { parent, cpu } => format!(
                "cgroup-v2 under {} (memory{})",
                parent.display(),
                if *cpu { ", cpu" } else { "; no cpu controller: no CPU quota" }
            ),
            Plan::V1 { memory, cpu } => format!(
                "cgroup-v1 under {}{}",
                memory.display(),
                cpu.as_ref().map_or("; no cpu hierarchy: no CPU quota".into(), |c| format!(" and {}", c.display()))
            ),
        }
    }
}

/// `cpu.max` for `vcpus`.
pub fn cpu_max(vcpus: u32) -> String {
    format!("{} {CPU_PERIOD_US}", u64::from(vcpus) * CPU_PERIOD_US)
}

/// An attempt's cgroup name: its directory's name (`t<task>-<attempt>`) and a hash of the
/// whole path, so that daemons of different data dirs sharing a hierarchy never collide.
pub fn leaf_name(attempt_dir: &Path) -> String {
    let name = attempt_dir.file_name().map_or("attempt".into(), |n| n.to_string_lossy().into_owned());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in attempt_dir.as_os_str().as_encoded_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let name: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(64).collect();
    format!("{name}-{:08x}", h as u32)
}

/// One attempt's cgroup: its directory in each hierarchy (v2: one; v1: memory, then cpu).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    pub v2: bool,
    pub dirs: Vec<PathBuf>,
}

impl Cgroup {
    /// What the attempt directory's `cgroup` file holds: `v2` or `v1`, then a path a line.
    pub fn to_file(&self) -> String {
        let mut s = if self.v2 { "v2\n" } else { "v1\n" }.to_string();
        for d in &self.dirs {
            s.push_str(&d.to_string_lossy());
            s.push('\n');
        }
        s
    }

    /// Reads a `cgroup` file back; only paths of the form `/sys/fs/cgroup/.../blixard-tasks/X`
    /// are accepted (the file is on disk: it never names another cgroup to kill).
    pub fn from_file(text: &str) -> Option<Cgroup> {
        let mut lines = text.lines();
        let v2 = match lines.next()? {
            "v2" => true,
            "v1" => false,
            _ => return None,
        };
        let mut dirs = Vec::new();
        for l in lines.filter(|l| !l.is_empty()).take(4) {
            let p = PathBuf::from(l);
            let ok = p.starts_with(CGROUP_FS)
                && p.parent().and_then(Path::file_name).is_some_and(|n| n == PARENT)
                && !l.split('/').any(|s| s == ".." || s == ".");
            if !ok {
                return None;
            }
            dirs.push(p);
        }
        (!dirs.is_empty()).then_some(Cgroup { v2, dirs })
    }
}

#[cfg(not(madsim))]
pub use self::host::*;

#[cfg(not(madsim))]
mod host {
    use std::io::ErrorKind;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::{counter, cpu_max, parse_mountinfo, parse_proc_cgroup, Cgroup, Facts, Plan};

    fn write(path: &Path, value: &str) -> std::io::Result<()> {
        std::fs::write(path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    }

    /// Reads this host's facts.
    pub fn facts() -> Facts {
        let mounts = parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        let v2_controllers = mounts
            .iter()
            .find(|m| m.v1.is_none() && m.point.starts_with(super::CGROUP_FS))
            .and_then(|m| std::fs::read_to_string(m.point.join("cgroup.controllers")).ok())
            .unwrap_or_default();
        Facts {
            root: rustix::process::geteuid().is_root(),
            mounts,
            own: parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default()),
            v2_controllers,
        }
    }

    /// Makes the parent directories ready: created, and (v2) the controllers enabled down to
    /// them. Returns whether the cpu controller is there (v2).
    fn prepare(plan: &Plan) -> std::io::Result<bool> {
        match plan {
            Plan::V2 { parent, cpu } => {
                let top = parent.parent().unwrap_or(Path::new("/"));
                write(&top.join("cgroup.subtree_control"), "+memory")?;
                let cpu = *cpu && write(&top.join("cgroup.subtree_control"), "+cpu").is_ok();
                match std::fs::create_dir(parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(std::io::Error::new(e.kind(), format!("{}: {e}", parent.display()))),
                }
                write(&parent.join("cgroup.subtree_control"), "+memory")?;
                Ok(cpu && write(&parent.join("cgroup.subtree_control"), "+cpu").is_ok())
            }
            Plan::V1 { memory, cpu } => {
                std::fs::create_dir_all(memory)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", memory.display())))?;
                Ok(cpu.as_ref().is_some_and(|c| std::fs::create_dir_all(c).is_ok()))
            }
            Plan::None | Plan::Rlimit => Ok(false),
        }
    }

    /// The first of `candidates` this host accepts (its parents can be prepared), logging why
    /// the better ones were not.
    pub fn detect() -> Plan {
        for plan in super::candidates(&facts()) {
            match prepare(&plan) {
                Ok(cpu) => {
                    let plan = match plan {
                        Plan::V2 { parent, .. } => Plan::V2 { parent, cpu },
                        p => p,
                    };
                    // Leave nothing behind until an attempt needs it.
                    remove_parents(&plan);
                    return plan;
                }
                Err(e) => tracing::warn!("task resource enforcement {} unusable: {e}", plan.describe()),
            }
        }
        Plan::Rlimit
    }

    fn parents(plan: &Plan) -> Vec<PathBuf> {
        match plan {
            Plan::V2 { parent, .. } => vec![parent.clone()],
            Plan::V1 { memory, cpu } => std::iter::once(memory.clone()).chain(cpu.clone()).collect(),
            _ => Vec::new(),
        }
    }

    /// Removes the parents when no attempt's cgroup is left in them (a busy one stays).
    fn remove_parents(plan: &Plan) {
        for p in parents(plan) {
            let _ = std::fs::remove_dir(p);
        }
    }

    /// Creates the cgroup of one attempt (named `name`) with the task's limits.
    pub fn create(plan: &Plan, name: &str, vcpus: u32, memory_mib: u32) -> std::io::Result<Cgroup> {
        let bytes = (u64::from(memory_mib) * 1024 * 1024).to_string();
        let mut tries = 0;
        let dirs = loop {
            tries += 1;
            let cpu = prepare(plan)?;
            let mut dirs = Vec::new();
            let mut made = |dir: PathBuf| match std::fs::create_dir(&dir) {
                Ok(()) => {
                    dirs.push(dir);
                    Ok(())
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    // A leftover of the same attempt: empty it and use it.
                    kill(&Cgroup { v2: matches!(plan, Plan::V2 { .. }), dirs: vec![dir.clone()] });
                    dirs.push(dir);
                    Ok(())
                }
                Err(e) => Err(e),
            };
            let r = match plan {
                Plan::V2 { parent, .. } => made(parent.join(name)),
                Plan::V1 { memory, cpu: c } => made(memory.join(name)).and_then(|()| match c {
                    Some(c) if cpu => made(c.join(name)),
                    _ => Ok(()),
                }),
                Plan::None | Plan::Rlimit => return Err(std::io::Error::other("no cgroup in this plan")),
            };
            match r {
                Ok(()) => break dirs,
                // Another daemon removed an empty parent meanwhile: prepare it again.
                Err(e) if e.kind() == ErrorKind::NotFound && tries < 5 => {
                    for d in dirs {
                        let _ = std::fs::remove_dir(d);
                    }
                }
                Err(e) => {
                    for d in dirs {
                        let _ = std::fs::remove_dir(d);
                    }
                    return Err(std::io::Error::new(e.kind(), format!("cannot create cgroup {name}: {e}")));
                }
            }
        };
        let cg = Cgroup { v2: matches!(plan, Plan::V2 { .. }), dirs };
        if let Err(e) = set_limits(&cg, vcpus, &bytes) {
            remove(&cg);
            return Err(e);
        }
        Ok(cg)
    }

    fn set_limits(cg: &Cgroup, vcpus: u32, bytes: &str) -> std::io::Result<()> {
        let quota = (u64::from(vcpus) * super::CPU_PERIOD_US).to_string();
        if cg.v2 {
            let d = &cg.dirs[0];
            write(&d.join("memory.max"), bytes)?;
            if d.join("memory.swap.max").exists() {
                write(&d.join("memory.swap.max"), "0")?;
            }
            if d.join("memory.oom.group").exists() {
                write(&d.join("memory.oom.group"), "1")?;
            }
            if d.join("cpu.max").exists() {
                write(&d.join("cpu.max"), &cpu_max(vcpus))?;
            }
        } else {
            let m = &cg.dirs[0];
            write(&m.join("memory.limit_in_bytes"), bytes)?;
            if m.join("memory.memsw.limit_in_bytes").exists() {
                write(&m.join("memory.memsw.limit_in_bytes"), bytes)?;
            }
            if let Some(c) = cg.dirs.get(1) {
                write(&c.join("cpu.cfs_period_us"), &super::CPU_PERIOD_US.to_string())?;
                write(&c.join("cpu.cfs_quota_us"), &quota)?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files the child writes itself into before it execs.
    pub fn procs_files(cg: &Cgroup) -> Vec<PathBuf> {
        cg.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// cgroup v1 only: the `tasks` files a thread writes itself into to move into the attempt's
    /// cgroups, and those of the daemon's own cgroups (the parents of [`super::PARENT`]) to
    /// move back to ([`crate::tasks::spawn`]).
    pub fn v1_thread_files(cg: &Cgroup) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
        if cg.v2 || cg.dirs.is_empty() {
            return None;
        }
        let into = cg.dirs.iter().map(|d| d.join("tasks")).collect();
        let home = cg.dirs.iter().map(|d| Some(d.parent()?.parent()?.join("tasks"))).collect::<Option<Vec<_>>>()?;
        Some((into, home))
    }

    /// How many processes the kernel's OOM killer killed in it.
    pub fn oom_kills(cg: &Cgroup) -> u64 {
        let (file, name) = if cg.v2 { ("memory.events", "oom_kill") } else { ("memory.oom_control", "oom_kill") };
        std::fs::read_to_string(cg.dirs[0].join(file)).ok().and_then(|t| counter(&t, name)).unwrap_or(0)
    }

    fn pids(cg: &Cgroup) -> Vec<i32> {
        let mut out: Vec<i32> = cg
            .dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| t.lines().filter_map(|l| l.trim().parse::<i32>().ok()).collect::<Vec<_>>())
            .filter(|p| *p > 1 && *p != std::process::id() as i32)
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether any process is left in it.
    pub fn populated(cg: &Cgroup) -> bool {
        cg.dirs.iter().any(|d| d.exists()) && !pids(cg).is_empty()
    }

    /// Kills every process in it (`cgroup.kill` where the kernel has it; else each one, again
    /// until none is left or 5 s passed) and waits for them to be gone. Returns whether there
    /// was any.
    pub fn kill(cg: &Cgroup) -> bool {
        let any = !pids(cg).is_empty();
        if !any {
            return false;
        }
        let ck = cg.dirs[0].join("cgroup.kill");
        if cg.v2 && ck.exists() {
            let _ = std::fs::write(&ck, "1");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = pids(cg);
            if left.is_empty() || Instant::now() >= deadline {
                return true;
            }
            for p in left {
                if let Some(p) = rustix::process::Pid::from_raw(p) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10)); // a bounded poll for exits
        }
    }

    /// Kills what is left in it and removes it (and its parent when that is empty).
    pub fn remove(cg: &Cgroup) {
        kill(cg);
        for d in &cg.dirs {
            // Exited processes may hold it briefly: retry a little.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if Instant::now() >= deadline => {
                        tracing::warn!("cannot remove cgroup {}: {e}", d.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)), // a bounded retry
                }
            }
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }
}

#[cfg(test)]
mod tests;
