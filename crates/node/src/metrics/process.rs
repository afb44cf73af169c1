//! The process's own resources, read from `/proc/self` at scrape time, under the names every
//! Prometheus client library uses (`process_*`), so stock dashboards work.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::state::{counter_f, gauge, gauge_f};

/// Clock ticks per second of `/proc`'s times: the kernel's `USER_HZ`, 100 on every Linux ABI.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

/// `kB` value of a `/proc/PID/status` line such as `VmRSS:   1234 kB`.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Fields of `/proc/PID/stat` after the command (which may hold spaces and parentheses):
/// index 0 is the state (field 3 of proc(5)).
fn stat_fields(stat: &str) -> Vec<&str> {
    stat.rfind(')').map(|i| stat[i + 1..].split_whitespace().collect()).unwrap_or_default()
}

/// Parses `/proc/PID/stat`, `/proc/PID/status` and `/proc/PID/limits` text, and the boot time
/// (`btime` of `/proc/stat`).
pub fn parse(stat: &str, status: &str, limits: &str, btime: Option<u64>) -> ProcessStats {
    let f = stat_fields(stat);
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    // utime and stime are fields 14 and 15, starttime 22 (proc(5)): indexes 11, 12 and 19 here.
    let cpu = num(11).unwrap_or(0).saturating_add(num(12).unwrap_or(0)) as f64 / USER_HZ;
    let start = match (num(19), btime) {
        (Some(t), Some(b)) => Some(b as f64 + t as f64 / USER_HZ),
        _ => None,
    };
    let max_fds = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l["Max open files".len()..].split_whitespace().next())
        .and_then(|s| s.parse().ok());
    ProcessStats {
        cpu_seconds: cpu,
        resident_bytes: status_kb(status, "VmRSS:").unwrap_or(0).saturating_mul(1024),
        virtual_bytes: status_kb(status, "VmSize:").unwrap_or(0).saturating_mul(1024),
        threads: status_kb(status, "Threads:").unwrap_or(0),
        open_fds: 0,
        max_fds,
        start_time_seconds: start,
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn btime() -> Option<u64> {
    read("/proc/stat").lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse().ok()))
}

pub fn read_self() -> ProcessStats {
    let mut s = parse(&read("/proc/self/stat"), &read("/proc/self/status"), &read("/proc/self/limits"), btime());
    s.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    s
}

/// CPU time and memory of process `pid`, if it is alive and its command line mentions
/// `marker` (so a reused pid is not taken for a VM's process).
pub fn read_pid(pid: u32, marker: &str) -> Option<ProcessStats> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if !String::from_utf8_lossy(&cmdline).contains(marker) {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse(&stat, &read(&format!("/proc/{pid}/status")), "", None))
}

#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = read_self();
        counter_f(&mut e, "process_cpu_seconds", "User and system CPU time spent, in seconds.", s.cpu_seconds)?;
        gauge(&mut e, "process_resident_memory_bytes", "Resident memory size in bytes.", s.resident_bytes as i64)?;
        gauge(&mut e, "process_virtual_memory_bytes", "Virtual memory size in bytes.", s.virtual_bytes as i64)?;
        gauge(&mut e, "process_threads", "OS threads of the process.", s.threads as i64)?;
        gauge(&mut e, "process_open_fds", "Open file descriptors.", s.open_fds as i64)?;
        if let Some(m) = s.max_fds {
            gauge(&mut e, "process_max_fds", "The limit of open file descriptors.", m as i64)?;
        }
        if let Some(t) = s.start_time_seconds {
            gauge_f(&mut e, "process_start_time_seconds", "Start time since the Unix epoch, in seconds.", t)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_including_a_command_with_spaces_and_parentheses() {
        let stat = "4242 (blix (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 12345 \
                    1000000 500 18446744073709551615";
        let status = "Name:\tblixard\nVmSize:\t  2048 kB\nVmRSS:\t   1024 kB\nThreads:\t7\n";
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        let s = parse(stat, status, limits, Some(1_700_000_000));
        assert_eq!(s.cpu_seconds, 3.0);
        assert_eq!((s.resident_bytes, s.virtual_bytes, s.threads), (1024 * 1024, 2048 * 1024, 7));
        assert_eq!(s.max_fds, Some(1024));
        assert_eq!(s.start_time_seconds, Some(1_700_000_000.0 + 123.45));
    }

    #[test]
    fn garbage_parses_to_zeroes_not_a_panic() {
        let s = parse("no paren", "VmRSS: lots", "", None);
        assert_eq!(s, ProcessStats::default());
    }

    #[test]
    fn hostile_proc_text_parses_without_a_panic() {
        let max = u64::MAX;
        let huge = format!("1 (x) S 1 1 1 0 -1 0 0 0 0 0 {max} {max} 0 0 20 0 1 0 {max} 0 0");
        let s = parse(&huge, &format!("VmRSS:\t{max} kB\nVmSize: {max} kB\n"), "", Some(max));
        assert_eq!(s.resident_bytes, u64::MAX, "saturates");
        assert!(s.cpu_seconds > 1e17);
        for stat in ["", ")", "(", "1 (a)", "1 (a) S", "1 (é) S 1 2 3 x y z", "1 (a)) S -5 -6"] {
            for status in ["", "VmRSS:", "VmRSS:\t kB", "VmRSS: -1 kB", "VmRSS: 12 GB", "Threads:\u{0}"] {
                let _ = parse(stat, status, "Max open files", None);
            }
        }
        let s = parse("1 (a) S 1 1 1 0 -1 0 0 0 0 0 -3 7", "VmRSS: ünïcode kB", "Max open files x", None);
        assert_eq!((s.cpu_seconds, s.resident_bytes, s.max_fds), (0.07, 0, None));
    }

    #[test]
    fn this_process_reads_as_alive() {
        let s = read_self();
        assert!(s.resident_bytes > 0 && s.threads >= 1 && s.open_fds >= 3, "{s:?}");
        assert!(s.start_time_seconds.is_some());
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert!(read_pid(me, name).is_some_and(|s| s.resident_bytes > 0));
        assert_eq!(read_pid(me, "not-in-this-command-line"), None, "another process's pid");
    }
}
