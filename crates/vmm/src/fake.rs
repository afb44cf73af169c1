//! An in-memory driver **for simulation and tests only**: no processes, no files, no clocks.
//!
//! It is deterministic: pids count up from 1000 in start order, time is whatever the simulation
//! last set with [`FakeDriver::set_clock_ms`], and faults happen only when injected
//! ([`FakeDriver::crash`], [`FakeDriver::guest_poweroff`], [`FakeDriver::fail_next_start`]).
//! Every call is recorded ([`FakeDriver::calls`]) so tests can assert what a reconciler did.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use blixard_core::VmSpec;

use crate::{vm_dir, Accel, ConsoleChunk, Result, StopOutcome, VmDriver, VmObserved, VmState, VmmError, BOOT_MARKER};

#[derive(Debug)]
struct FakeVm {
    state: VmState,
    pid: Option<u32>,
    started_at_ms: Option<u64>,
    exit_reason: Option<String>,
    console: Vec<u8>,
}

#[derive(Debug, Default)]
struct Inner {
    vms: BTreeMap<String, FakeVm>,
    specs: BTreeMap<String, VmSpec>,
    next_pid: u32,
    clock_ms: u64,
    fail_next_start: BTreeSet<String>,
    calls: Vec<String>,
}

/// See the module docs. Not for production: it runs nothing.
#[derive(Debug)]
pub struct FakeDriver {
    inner: Mutex<Inner>,
}

impl Default for FakeDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDriver {
    pub fn new() -> Self {
        Self { inner: Mutex::new(Inner { next_pid: 1000, ..Default::default() }) }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("lock poisoned"))
    }

    /// Sets the time reported as `started_at_ms` by later starts.
    pub fn set_clock_ms(&self, ms: u64) {
        self.with(|i| i.clock_ms = ms);
    }

    /// The VM's process dies unexpectedly: it becomes `Failed(reason)`.
    pub fn crash(&self, name: &str, reason: &str) {
        self.end(name, VmState::Failed(reason.to_string()), reason);
    }

    /// The guest powers itself off: it becomes `Stopped`.
    pub fn guest_poweroff(&self, name: &str) {
        self.end(name, VmState::Stopped, "guest-shutdown");
    }

    /// The next `start` of `name` fails (once).
    pub fn fail_next_start(&self, name: &str) {
        self.with(|i| i.fail_next_start.insert(name.to_string()));
    }

    /// Every driver call so far, as `"op name"`, in order.
    pub fn calls(&self) -> Vec<String> {
        self.with(|i| i.calls.clone())
    }

    fn end(&self, name: &str, state: VmState, reason: &str) {
        self.with(|i| {
            if let Some(vm) = i.vms.get_mut(name).filter(|v| v.state == VmState::Running) {
                vm.state = state;
                vm.pid = None;
                vm.exit_reason = Some(reason.to_string());
            }
        });
    }

    fn record(&self, op: &str, name: &str) -> Result<()> {
        vm_dir(std::path::Path::new("/"), name)?;
        self.with(|i| i.calls.push(format!("{op} {name}")));
        Ok(())
    }
}

fn observe(name: &str, vm: &FakeVm) -> VmObserved {
    VmObserved {
        name: name.to_string(),
        state: vm.state.clone(),
        pid: vm.pid,
        started_at_ms: vm.started_at_ms,
        boot_ms: vm.started_at_ms.map(|_| 0),
        exit_reason: vm.exit_reason.clone(),
        accel: vm.started_at_ms.map(|_| Accel::Tcg),
    }
}

#[async_trait]
impl VmDriver for FakeDriver {
    fn backend(&self) -> &'static str {
        "fake"
    }

    async fn prepare(&self, spec: &VmSpec) -> Result<()> {
        self.record("prepare", &spec.name)?;
        self.with(|i| {
            i.specs.insert(spec.name.clone(), spec.clone());
            i.vms.entry(spec.name.clone()).or_insert(FakeVm {
                state: VmState::Stopped,
                pid: None,
                started_at_ms: None,
                exit_reason: None,
                console: Vec::new(),
            });
        });
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<()> {
        self.record("start", name)?;
        self.with(|i| {
            if i.fail_next_start.remove(name) {
                return Err(VmmError::Injected(format!("start of {name}")));
            }
            let (pid, now) = (i.next_pid, i.clock_ms);
            let vm = i.vms.get_mut(name).ok_or_else(|| VmmError::NotPrepared(name.to_string()))?;
            if vm.state == VmState::Running {
                return Ok(());
            }
            *vm = FakeVm {
                state: VmState::Running,
                pid: Some(pid),
                started_at_ms: Some(now),
                exit_reason: None,
                console: std::mem::take(&mut vm.console),
            };
            vm.console.extend_from_slice(format!("{BOOT_MARKER} uptime=0.00\n").as_bytes());
            i.next_pid += 1;
            Ok(())
        })
    }

    async fn stop(&self, name: &str, _timeout: Duration) -> Result<StopOutcome> {
        self.record("stop", name)?;
        self.with(|i| match i.vms.get_mut(name) {
            Some(vm) if vm.state == VmState::Running => {
                vm.state = VmState::Stopped;
                vm.pid = None;
                vm.exit_reason = Some("guest-shutdown".into());
                Ok(StopOutcome::Graceful)
            }
            _ => Ok(StopOutcome::AlreadyStopped),
        })
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.record("delete", name)?;
        self.with(|i| {
            i.vms.remove(name);
            i.specs.remove(name);
        });
        Ok(())
    }

    async fn status(&self, name: &str) -> Result<VmObserved> {
        vm_dir(std::path::Path::new("/"), name)?;
        Ok(self.with(|i| i.vms.get(name).map_or_else(|| VmObserved::not_found(name), |vm| observe(name, vm))))
    }

    async fn list(&self) -> Result<Vec<VmObserved>> {
        Ok(self.with(|i| i.vms.iter().map(|(n, vm)| observe(n, vm)).collect()))
    }

    fn log_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }

    async fn read_console(&self, name: &str, offset: u64, max: usize) -> Result<ConsoleChunk> {
        self.with(|i| {
            let vm = i.vms.get(name).ok_or_else(|| VmmError::NotFound(name.to_string()))?;
            let start = (offset as usize).min(vm.console.len());
            let end = start.saturating_add(max).min(vm.console.len());
            Ok(ConsoleChunk { data: vm.console[start..end].to_vec(), next_offset: end as u64 })
        })
    }

    async fn console_input(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.with(|i| match i.vms.get_mut(name) {
            Some(vm) if vm.state == VmState::Running => {
                vm.console.extend_from_slice(bytes);
                Ok(())
            }
            _ => Err(VmmError::NotRunning(name.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> VmSpec {
        VmSpec { name: name.into(), vcpus: 1, memory_mib: 128, ..Default::default() }
    }

    #[tokio::test]
    async fn lifecycle_is_deterministic_and_recorded() {
        let d = FakeDriver::new();
        d.set_clock_ms(42);
        assert_eq!(d.status("a").await.unwrap().state, VmState::NotFound);
        assert!(matches!(d.start("a").await, Err(VmmError::NotPrepared(_))));
        d.prepare(&spec("a")).await.unwrap();
        d.start("a").await.unwrap();
        d.start("a").await.unwrap();
        let s = d.status("a").await.unwrap();
        assert_eq!((s.state, s.pid, s.started_at_ms), (VmState::Running, Some(1000), Some(42)));
        d.crash("a", "killed by signal 9");
        assert_eq!(d.status("a").await.unwrap().state, VmState::Failed("killed by signal 9".into()));
        assert_eq!(d.stop("a", Duration::ZERO).await.unwrap(), StopOutcome::AlreadyStopped);
        d.fail_next_start("a");
        assert!(d.start("a").await.is_err());
        d.start("a").await.unwrap();
        assert_eq!(d.status("a").await.unwrap().pid, Some(1001));
        let log = d.read_console("a", 0, 1 << 20).await.unwrap();
        assert_eq!(String::from_utf8(log.data).unwrap().matches(BOOT_MARKER).count(), 2);
        d.delete("a").await.unwrap();
        assert_eq!(d.list().await.unwrap(), vec![]);
        assert_eq!(d.calls()[..3], ["start a", "prepare a", "start a"]);
        assert!(matches!(d.status("../x").await, Err(VmmError::InvalidName(_))));
    }
}
