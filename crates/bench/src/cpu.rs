//! How much CPU the rest of the machine used during a measurement: all busy time (from
//! /proc/stat) minus what this process and the servers under test used. On a shared machine a
//! big number here means the figures next to it are not to be trusted.

use std::time::Instant;

/// A snapshot of busy jiffies, machine-wide and for the watched processes.
pub struct CpuSample {
    at: Instant,
    machine: u64,
    ours: u64,
    servers: u64,
}

/// What the machine and the servers used over a measurement.
#[derive(Clone, Copy, Debug)]
pub struct CpuUse {
    /// Cores busy in all, on average.
    pub all: f64,
    /// Of those, cores busy outside the watched processes and this one.
    pub other: f64,
    /// CPU seconds (user + system) of the watched server processes.
    pub servers_s: f64,
}

fn machine_busy() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = s.lines().next()?.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    Some(f.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, v)| v).sum())
}

/// utime + stime of `pid` ("self" for this one), in clock ticks, with those of the children it
/// waited for (cutime + cstime: the processes it started, such as task attempts, are its work,
/// not interference); 0 when gone.
pub fn process_busy(pid: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the ")" closing the command name: state is field 3, utime 14, stime 15,
    // cutime 16, cstime 17.
    let Some((_, rest)) = s.rsplit_once(')') else { return 0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12) + n(13) + n(14)
}

/// CPU seconds used so far by `pids` and the children they waited for.
pub fn servers_cpu_secs(pids: &[i32]) -> f64 {
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    pids.iter().map(|p| process_busy(&p.to_string())).sum::<u64>() as f64 / ticks.max(1.0)
}

impl CpuSample {
    pub fn take(pids: &[i32]) -> Option<CpuSample> {
        let servers = pids.iter().map(|p| process_busy(&p.to_string())).sum::<u64>();
        Some(CpuSample { at: Instant::now(), machine: machine_busy()?, ours: process_busy("self") + servers, servers })
    }

    /// What was used since `self`.
    pub fn since(&self, pids: &[i32]) -> Option<CpuUse> {
        let now = CpuSample::take(pids)?;
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let secs = now.at.duration_since(self.at).as_secs_f64();
        if secs <= 0.0 || ticks <= 0.0 {
            return None;
        }
        let all = now.machine.saturating_sub(self.machine) as f64 / ticks / secs;
        let ours = now.ours.saturating_sub(self.ours) as f64 / ticks / secs;
        let servers_s = now.servers.saturating_sub(self.servers) as f64 / ticks;
        Some(CpuUse { all, other: (all - ours).max(0.0), servers_s })
    }
}
