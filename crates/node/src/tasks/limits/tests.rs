//! The pure parts: parsing the host's cgroup files and choosing the enforcement.

use std::path::{Path, PathBuf};

use blixard_core::Enforcement;

use super::*;

/// A systemd host on cgroup v2 only.
const MOUNTINFO_V2: &str = "\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

/// A hybrid host (this CI machine's layout): v1 controllers, v2 mounted with none of them.
const MOUNTINFO_HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

const PROC_HYBRID: &str = "\
9:name=systemd:/
4:memory:/process_api/294d
1:cpu:/
0::/
";

#[test]
fn mountinfo_gives_the_cgroup_mounts_with_their_controllers() {
    let m = parse_mountinfo(MOUNTINFO_V2);
    assert_eq!(m, vec![Mount { root: "/".into(), point: "/sys/fs/cgroup".into(), v1: None }]);
    let m = parse_mountinfo(MOUNTINFO_HYBRID);
    assert_eq!(m.len(), 5, "{m:?}");
    assert_eq!(
        m[2],
        Mount { root: "/".into(), point: "/sys/fs/cgroup/memory".into(), v1: Some(vec!["memory".into()]) }
    );
    // name=systemd is not a controller.
    assert_eq!(m[3].v1, Some(vec![]));
    assert_eq!(m[4].v1, None);
    // Escaped spaces, and lines without the separator or too short, are handled.
    let m = parse_mountinfo("1 2 0:1 /a\\040b /mnt/c\\040g rw - cgroup2 none rw\ngarbage\n1 - cgroup\n");
    assert_eq!(m, vec![Mount { root: "/a b".into(), point: "/mnt/c g".into(), v1: None }]);
}

#[test]
fn proc_cgroup_gives_each_hierarchys_path() {
    let own = parse_proc_cgroup(PROC_HYBRID);
    assert_eq!(own[1], (vec!["memory".to_string()], "/process_api/294d".to_string()));
    assert_eq!(own[3], (vec![], "/".to_string()));
    let own = parse_proc_cgroup("2:cpu,cpuacct:/system.slice/x.service\nbad line\n");
    assert_eq!(own, vec![(vec!["cpu".to_string(), "cpuacct".to_string()], "/system.slice/x.service".to_string())]);
}

#[test]
fn oom_kills_are_read_from_memory_events_and_oom_control() {
    let v2 = "low 0\nhigh 0\nmax 42\noom 2\noom_kill 1\noom_group_kill 1\n";
    assert_eq!(counter(v2, "oom_kill"), Some(1));
    assert_eq!(counter(v2, "oom"), Some(2));
    let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
    assert_eq!(counter(v1, "oom_kill"), Some(3));
    assert_eq!(counter("oom_kill x\n", "oom_kill"), None);
    assert_eq!(counter("", "oom_kill"), None);
}

fn facts(root: bool, mountinfo: &str, own: &str, v2_controllers: &str) -> Facts {
    Facts {
        root,
        mounts: parse_mountinfo(mountinfo),
        own: parse_proc_cgroup(own),
        v2_controllers: v2_controllers.into(),
    }
}

#[test]
fn v2_is_chosen_where_its_memory_controller_is_available() {
    let f = facts(true, MOUNTINFO_V2, "0::/system.slice/blixard.service\n", "cpuset cpu io memory pids\n");
    let c = candidates(&f);
    assert_eq!(c[0], Plan::V2 { parent: "/sys/fs/cgroup/blixard-tasks".into(), cpu: true });
    assert_eq!(c[0].enforcement(), Enforcement::CgroupV2);
    assert_eq!(c.last(), Some(&Plan::Rlimit));
    let f = facts(true, MOUNTINFO_V2, "0::/\n", "memory pids\n");
    assert_eq!(candidates(&f)[0], Plan::V2 { parent: "/sys/fs/cgroup/blixard-tasks".into(), cpu: false });
}

#[test]
fn v1_is_chosen_under_the_daemons_own_cgroup_when_v2_has_no_memory_controller() {
    let f = facts(true, MOUNTINFO_HYBRID, PROC_HYBRID, "hugetlb\n");
    let c = candidates(&f);
    assert_eq!(
        c,
        vec![
            Plan::V1 {
                memory: "/sys/fs/cgroup/memory/process_api/294d/blixard-tasks".into(),
                cpu: Some("/sys/fs/cgroup/cpu/blixard-tasks".into()),
            },
            Plan::Rlimit
        ]
    );
    assert_eq!(c[0].enforcement(), Enforcement::CgroupV1);
}

#[test]
fn a_mounted_sub_tree_is_accounted_for_and_dot_dot_is_refused() {
    let mi = "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
    let f = facts(true, mi, "4:memory:/docker/abc/inner\n", "");
    assert_eq!(candidates(&f)[0], Plan::V1 { memory: "/sys/fs/cgroup/memory/inner/blixard-tasks".into(), cpu: None });
    let f = facts(true, mi, "4:memory:/docker/abc/../x\n", "");
    assert_eq!(candidates(&f), vec![Plan::Rlimit]);
}

#[test]
fn without_root_or_cgroups_it_is_rlimits() {
    let f = facts(false, MOUNTINFO_V2, "0::/\n", "memory cpu\n");
    assert_eq!(candidates(&f), vec![Plan::Rlimit]);
    let f = facts(true, "", "", "");
    assert_eq!(candidates(&f), vec![Plan::Rlimit]);
    assert_eq!(Plan::Rlimit.enforcement(), Enforcement::Rlimit);
    assert_eq!(Plan::Rlimit.rlimit_as(64), Some(64 << 20));
    assert_eq!(Plan::V2 { parent: PathBuf::new(), cpu: true }.rlimit_as(64), None);
}

#[test]
fn cpu_quota_is_vcpus_periods() {
    assert_eq!(cpu_max(1), "100000 100000");
    assert_eq!(cpu_max(3), "300000 100000");
}

#[test]
fn leaf_names_are_the_attempt_and_a_hash_of_its_path() {
    let a = leaf_name(Path::new("/d1/tasks/t5-7"));
    let b = leaf_name(Path::new("/d2/tasks/t5-7"));
    assert!(a.starts_with("t5-7-") && b.starts_with("t5-7-"), "{a} {b}");
    assert_ne!(a, b);
    assert_eq!(a, leaf_name(Path::new("/d1/tasks/t5-7")));
}

#[test]
fn the_cgroup_file_round_trips_and_names_only_attempt_cgroups() {
    let cg = Cgroup {
        v2: false,
        dirs: vec![
            "/sys/fs/cgroup/memory/x/blixard-tasks/t1-2-aa".into(),
            "/sys/fs/cgroup/cpu/blixard-tasks/t1-2-aa".into(),
        ],
    };
    assert_eq!(Cgroup::from_file(&cg.to_file()), Some(cg));
    for bad in [
        "v2\n/sys/fs/cgroup/system.slice\n",
        "v2\n/sys/fs/cgroup/blixard-tasks/../system.slice/blixard-tasks/x\n",
        "v2\n/etc/blixard-tasks/x\n",
        "v3\n/sys/fs/cgroup/blixard-tasks/x\n",
        "v2\n",
        "",
    ] {
        assert_eq!(Cgroup::from_file(bad), None, "{bad}");
    }
}

/// The files an attempt's cgroup gets, on plain directories standing in for the hierarchies (a
/// real cgroup file system has the files already; these get them created by the writes).
#[test]
fn the_limits_are_written_into_the_attempts_cgroup_v2_and_v1() {
    let d = tempfile::tempdir().unwrap();
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let parent = d.path().join("v2").join(PARENT);
    std::fs::create_dir_all(parent.parent().unwrap()).unwrap();
    let plan = Plan::V2 { parent: parent.clone(), cpu: true };
    let cg = create(&plan, "t1-2-ab", 2, 64).unwrap();
    assert_eq!(cg, Cgroup { v2: true, dirs: vec![parent.join("t1-2-ab")] });
    assert_eq!(read(parent.join("t1-2-ab/memory.max")), (64u64 << 20).to_string());
    // Controllers enabled at the top and in the parent (the last write is what a file keeps).
    assert_eq!(read(d.path().join("v2/cgroup.subtree_control")), "+cpu");
    assert_eq!(read(parent.join("cgroup.subtree_control")), "+cpu");
    assert_eq!(procs_files(&cg), vec![parent.join("t1-2-ab/cgroup.procs")]);
    assert_eq!(oom_kills(&cg), 0);
    std::fs::write(parent.join("t1-2-ab/memory.events"), "oom 1\noom_kill 1\n").unwrap();
    assert_eq!(oom_kills(&cg), 1);

    let (mem, cpu) = (d.path().join("memory/own").join(PARENT), d.path().join("cpu").join(PARENT));
    let plan = Plan::V1 { memory: mem.clone(), cpu: Some(cpu.clone()) };
    let cg = create(&plan, "t1-3-ab", 3, 100).unwrap();
    assert_eq!(cg, Cgroup { v2: false, dirs: vec![mem.join("t1-3-ab"), cpu.join("t1-3-ab")] });
    assert_eq!(read(mem.join("t1-3-ab/memory.limit_in_bytes")), (100u64 << 20).to_string());
    assert_eq!(read(cpu.join("t1-3-ab/cpu.cfs_quota_us")), "300000");
    assert_eq!(read(cpu.join("t1-3-ab/cpu.cfs_period_us")), "100000");
    std::fs::write(mem.join("t1-3-ab/memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
    assert_eq!(oom_kills(&cg), 2);
    // A plan without cgroups creates none.
    assert!(create(&Plan::Rlimit, "x", 1, 1).is_err());
}
