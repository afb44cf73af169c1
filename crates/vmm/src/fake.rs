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

use crate::{
    instance_dir, legacy_dir, Accel, ConsoleChunk, Instance, LegacyFate, Result, StopOutcome, VmDriver, VmObserved,
    VmState, VmmError, BOOT_MARKER,
};

#[derive(Debug)]
struct FakeVm {
    state: VmState,
    pid: Option<u32>,
    started_at_ms: Option<u64>,
    exit_reason: Option<String>,
    console: Vec<u8>,
}

impl FakeVm {
    fn stopped() -> Self {
        FakeVm { state: VmState::Stopped, pid: None, started_at_ms: None, exit_reason: None, console: Vec::new() }
    }
}

#[derive(Debug, Default)]
struct Inner {
    vms: BTreeMap<Instance, FakeVm>,
    /// Directories of a driver from before incarnations, by bare name.
    legacy: BTreeMap<String, FakeVm>,
    specs: BTreeMap<Instance, VmSpec>,
    next_pid: u32,
    clock_ms: u64,
    fail_next_start: BTreeSet<Instance>,
    calls: Vec<String>,
}

impl Inner {
    /// The newest incarnation of `name`, else its legacy VM.
    fn current(&mut self, name: &str) -> Option<&mut FakeVm> {
        let range = Instance::new(name, 0)..=Instance::new(name, u64::MAX);
        match self.vms.range_mut(range).next_back() {
            Some((_, vm)) => Some(vm),
            None => self.legacy.get_mut(name),
        }
    }
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

    /// The instance's process dies unexpectedly: it becomes `Failed(reason)`.
    pub fn crash(&self, vm: &Instance, reason: &str) {
        self.end(vm, VmState::Failed(reason.to_string()), reason);
    }

    /// The guest powers itself off: it becomes `Stopped`.
    pub fn guest_poweroff(&self, vm: &Instance) {
        self.end(vm, VmState::Stopped, "guest-shutdown");
    }

    /// The next `start` of `vm` fails (once).
    pub fn fail_next_start(&self, vm: &Instance) {
        self.with(|i| i.fail_next_start.insert(vm.clone()));
    }

    /// A VM directory as a driver from before incarnations left it (running or not), for tests
    /// of the upgrade path ([`VmDriver::settle_legacy`]).
    pub fn insert_legacy(&self, name: &str, running: bool) {
        self.with(|i| {
            let mut vm = FakeVm::stopped();
            if running {
                vm.state = VmState::Running;
                vm.pid = Some(i.next_pid);
                vm.started_at_ms = Some(i.clock_ms);
                i.next_pid += 1;
            }
            i.legacy.insert(name.to_string(), vm);
        });
    }

    /// Every driver call so far, as `"op name.incarnation"` (`"op name"` for console and legacy
    /// calls), in order.
    pub fn calls(&self) -> Vec<String> {
        self.with(|i| i.calls.clone())
    }

    fn end(&self, vm: &Instance, state: VmState, reason: &str) {
        self.with(|i| {
            if let Some(v) = i.vms.get_mut(vm).filter(|v| v.state == VmState::Running) {
                v.state = state;
                v.pid = None;
                v.exit_reason = Some(reason.to_string());
            }
        });
    }

    fn record(&self, op: &str, vm: &Instance) -> Result<()> {
        instance_dir(std::path::Path::new("/"), vm)?;
        self.with(|i| i.calls.push(format!("{op} {vm}")));
        Ok(())
    }
}

fn observe(vm: &Instance, v: &FakeVm) -> VmObserved {
    VmObserved {
        instance: vm.clone(),
        state: v.state.clone(),
        pid: v.pid,
        started_at_ms: v.started_at_ms,
        boot_ms: v.started_at_ms.map(|_| 0),
        exit_reason: v.exit_reason.clone(),
        accel: v.started_at_ms.map(|_| Accel::Tcg),
    }
}

#[async_trait]
impl VmDriver for FakeDriver {
    fn backend(&self) -> &'static str {
        "fake"
    }

    async fn prepare(&self, vm: &Instance, spec: &VmSpec) -> Result<()> {
        self.record("prepare", vm)?;
        if spec.name != vm.name {
            return Err(VmmError::SpecMismatch { instance: vm.clone(), spec: spec.name.clone() });
        }
        self.with(|i| {
            i.specs.insert(vm.clone(), spec.clone());
            i.vms.entry(vm.clone()).or_insert_with(FakeVm::stopped);
        });
        Ok(())
    }

    async fn start(&self, vm: &Instance) -> Result<()> {
        self.record("start", vm)?;
        self.with(|i| {
            if i.fail_next_start.remove(vm) {
                return Err(VmmError::Injected(format!("start of {vm}")));
            }
            let (pid, now) = (i.next_pid, i.clock_ms);
            let v = i.vms.get_mut(vm).ok_or_else(|| VmmError::NotPrepared(vm.to_string()))?;
            if v.state == VmState::Running {
                return Ok(());
            }
            *v = FakeVm {
                state: VmState::Running,
                pid: Some(pid),
                started_at_ms: Some(now),
                exit_reason: None,
                console: std::mem::take(&mut v.console),
            };
            v.console.extend_from_slice(format!("{BOOT_MARKER} uptime=0.00\n").as_bytes());
            i.next_pid += 1;
            Ok(())
        })
    }

    async fn stop(&self, vm: &Instance, _timeout: Duration) -> Result<StopOutcome> {
        self.record("stop", vm)?;
        self.with(|i| match i.vms.get_mut(vm) {
            Some(v) if v.state == VmState::Running => {
                v.state = VmState::Stopped;
                v.pid = None;
                v.exit_reason = Some("guest-shutdown".into());
                Ok(StopOutcome::Graceful)
            }
            _ => Ok(StopOutcome::AlreadyStopped),
        })
    }

    async fn delete(&self, vm: &Instance) -> Result<()> {
        self.record("delete", vm)?;
        self.with(|i| {
            i.vms.remove(vm);
            i.specs.remove(vm);
        });
        Ok(())
    }

    async fn status(&self, vm: &Instance) -> Result<VmObserved> {
        instance_dir(std::path::Path::new("/"), vm)?;
        Ok(self.with(|i| i.vms.get(vm).map_or_else(|| VmObserved::not_found(vm), |v| observe(vm, v))))
    }

    async fn list(&self) -> Result<Vec<VmObserved>> {
        Ok(self.with(|i| i.vms.iter().map(|(vm, v)| observe(vm, v)).collect()))
    }

    async fn list_legacy(&self) -> Result<Vec<String>> {
        Ok(self.with(|i| i.legacy.keys().cloned().collect()))
    }

    async fn settle_legacy(&self, name: &str, fate: LegacyFate) -> Result<()> {
        legacy_dir(std::path::Path::new("/"), name)?;
        self.with(|i| {
            i.calls.push(format!("settle {name} {fate:?}"));
            match fate {
                LegacyFate::Remove => {
                    i.legacy.remove(name);
                    Ok(())
                }
                LegacyFate::Adopt(incarnation) => {
                    let vm = Instance::new(name, incarnation);
                    if !i.legacy.contains_key(name) {
                        return Ok(());
                    }
                    if i.vms.contains_key(&vm) {
                        return Err(VmmError::InstanceExists(vm));
                    }
                    let v = i.legacy.remove(name).expect("checked above");
                    i.vms.insert(vm, v);
                    Ok(())
                }
            }
        })
    }

    fn log_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }

    async fn read_console(&self, name: &str, offset: u64, max: usize) -> Result<ConsoleChunk> {
        legacy_dir(std::path::Path::new("/"), name)?;
        self.with(|i| {
            let v = i.current(name).ok_or_else(|| VmmError::NotFound(name.to_string()))?;
            let start = (offset as usize).min(v.console.len());
            let end = start.saturating_add(max).min(v.console.len());
            Ok(ConsoleChunk { data: v.console[start..end].to_vec(), next_offset: end as u64 })
        })
    }

    async fn console_input(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.with(|i| match i.current(name) {
            Some(v) if v.state == VmState::Running => {
                v.console.extend_from_slice(bytes);
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
        let a = Instance::new("a", 5);
        d.set_clock_ms(42);
        assert_eq!(d.status(&a).await.unwrap().state, VmState::NotFound);
        assert!(matches!(d.start(&a).await, Err(VmmError::NotPrepared(_))));
        d.prepare(&a, &spec("a")).await.unwrap();
        d.start(&a).await.unwrap();
        d.start(&a).await.unwrap();
        let s = d.status(&a).await.unwrap();
        assert_eq!((s.state, s.pid, s.started_at_ms), (VmState::Running, Some(1000), Some(42)));
        d.crash(&a, "killed by signal 9");
        assert_eq!(d.status(&a).await.unwrap().state, VmState::Failed("killed by signal 9".into()));
        assert_eq!(d.stop(&a, Duration::ZERO).await.unwrap(), StopOutcome::AlreadyStopped);
        d.fail_next_start(&a);
        assert!(d.start(&a).await.is_err());
        d.start(&a).await.unwrap();
        assert_eq!(d.status(&a).await.unwrap().pid, Some(1001));
        let log = d.read_console("a", 0, 1 << 20).await.unwrap();
        assert_eq!(String::from_utf8(log.data).unwrap().matches(BOOT_MARKER).count(), 2);
        d.delete(&a).await.unwrap();
        assert_eq!(d.list().await.unwrap(), vec![]);
        assert_eq!(d.calls()[..3], ["start a.5", "prepare a.5", "start a.5"]);
        assert!(matches!(d.status(&Instance::new("../x", 1)).await, Err(VmmError::InvalidName(_))));
        assert!(matches!(d.prepare(&a, &spec("b")).await, Err(VmmError::SpecMismatch { .. })));
    }

    #[tokio::test]
    async fn incarnations_of_one_name_are_separate_and_the_console_is_the_newest() {
        let d = FakeDriver::new();
        let (old, new) = (Instance::new("web", 3), Instance::new("web", 9));
        for vm in [&old, &new] {
            d.prepare(vm, &spec("web")).await.unwrap();
        }
        d.start(&old).await.unwrap();
        assert_eq!(d.status(&new).await.unwrap().state, VmState::Stopped, "the new one adopts nothing");
        assert!(matches!(d.console_input("web", b"x").await, Err(VmmError::NotRunning(_))));
        d.start(&new).await.unwrap();
        d.console_input("web", b"typed").await.unwrap();
        assert!(String::from_utf8(d.read_console("web", 0, 1 << 20).await.unwrap().data).unwrap().ends_with("typed"));
        d.delete(&old).await.unwrap();
        let left: Vec<Instance> = d.list().await.unwrap().into_iter().map(|o| o.instance).collect();
        assert_eq!(left, vec![new.clone()]);
        assert_eq!(d.status(&new).await.unwrap().pid, Some(1001));
    }

    #[tokio::test]
    async fn a_legacy_vm_is_adopted_once_or_removed() {
        let d = FakeDriver::new();
        d.insert_legacy("web", true);
        d.insert_legacy("gone", false);
        assert_eq!(d.list_legacy().await.unwrap(), ["gone", "web"]);
        d.settle_legacy("web", LegacyFate::Adopt(7)).await.unwrap();
        let st = d.status(&Instance::new("web", 7)).await.unwrap();
        assert_eq!((st.state, st.pid), (VmState::Running, Some(1000)), "the running VM is kept");
        d.settle_legacy("gone", LegacyFate::Remove).await.unwrap();
        assert!(d.list_legacy().await.unwrap().is_empty());
        d.settle_legacy("web", LegacyFate::Adopt(7)).await.unwrap();
        d.insert_legacy("web", false);
        assert!(matches!(d.settle_legacy("web", LegacyFate::Adopt(7)).await, Err(VmmError::InstanceExists(_))));
    }
}
