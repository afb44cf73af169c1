//! The fake VM driver's global view: which node runs which VM at every simulated instant.
//!
//! Every host of a simulated cluster runs the unmodified node with a [`RecordingDriver`]: the
//! in-memory fake of `blixard-vmm`, wrapped to tell one [`Running`] view, shared by all hosts,
//! every start and stop with the simulated instant and the node. A host's death (a kill) stops
//! all of its VMs at that instant ([`Running::host_died`]). The invariant is checked on every
//! start: **at no instant do two nodes run the same VM** — the same name, whatever the
//! incarnations (a VM moved gets a new incarnation on its new node, and the old one must be dead
//! by then). A violation is recorded with both nodes and the instant; the scenarios assert
//! there is none.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use blixard_core::VmSpec;
use blixard_vmm::fake::FakeDriver;
use blixard_vmm::{ConsoleChunk, Instance, LegacyFate, Result, StopOutcome, VmDriver, VmObserved, VmState};
use tokio::time::Instant;

#[derive(Default)]
struct Inner {
    t0: Option<Instant>,
    /// By VM name: the nodes running an incarnation of it, and which incarnations.
    on: BTreeMap<String, BTreeMap<u64, BTreeSet<u64>>>,
    /// Every start and stop, as `"<ms> n<node> start|stop <name>.<incarnation>"`.
    log: Vec<String>,
    violations: Vec<String>,
    /// The VM name of the first violation.
    first: Option<String>,
    starts: u64,
}

impl Inner {
    fn ms(&mut self) -> u128 {
        let t0 = *self.t0.get_or_insert_with(Instant::now);
        t0.elapsed().as_millis()
    }
}

/// See the module docs. Cheap to clone (one view shared by every host of a simulation).
#[derive(Clone, Default)]
pub struct Running {
    inner: Arc<Mutex<Inner>>,
}

impl Running {
    pub fn new() -> Running {
        let r = Running::default();
        r.lock().t0 = Some(Instant::now());
        r
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` started `vm` (it runs from now on): checks the invariant.
    pub fn started(&self, node: u64, vm: &Instance) {
        let mut i = self.lock();
        let ms = i.ms();
        i.starts += 1;
        let others: Vec<String> = i
            .on
            .get(&vm.name)
            .into_iter()
            .flatten()
            .filter(|(n, incs)| **n != node && !incs.is_empty())
            .map(|(n, incs)| {
                format!("node {n} ({})", incs.iter().map(|x| format!("{}.{x}", vm.name)).collect::<Vec<_>>().join(", "))
            })
            .collect();
        if !others.is_empty() {
            let v = format!("at {ms} ms node {node} started {vm} while {} runs it", others.join(" and "));
            i.violations.push(v);
            i.first.get_or_insert_with(|| vm.name.clone());
        }
        i.on.entry(vm.name.clone()).or_default().entry(node).or_default().insert(vm.incarnation);
        i.log.push(format!("{ms} n{node} start {vm}"));
    }

    /// `node` no longer runs `vm` (stopped, fenced, deleted).
    pub fn stopped(&self, node: u64, vm: &Instance) {
        let mut i = self.lock();
        let ms = i.ms();
        let was = i.on.get_mut(&vm.name).and_then(|m| m.get_mut(&node)).is_some_and(|s| s.remove(&vm.incarnation));
        if was {
            i.log.push(format!("{ms} n{node} stop {vm}"));
        }
    }

    /// The host died: every VM it ran is gone at this instant.
    pub fn host_died(&self, node: u64) {
        let mut i = self.lock();
        let ms = i.ms();
        let mut gone = Vec::new();
        for (name, m) in i.on.iter_mut() {
            if let Some(incs) = m.remove(&node) {
                gone.extend(incs.into_iter().map(|x| format!("{name}.{x}")));
            }
        }
        i.log.push(format!("{ms} n{node} died, taking [{}]", gone.join(", ")));
    }

    /// The nodes running `name` now.
    pub fn nodes_running(&self, name: &str) -> Vec<u64> {
        let i = self.lock();
        i.on.get(name).into_iter().flatten().filter(|(_, s)| !s.is_empty()).map(|(n, _)| *n).collect()
    }

    /// Every VM name running now, with its node(s).
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u64>> {
        let i = self.lock();
        i.on.iter()
            .map(|(name, m)| {
                (name.clone(), m.iter().filter(|(_, s)| !s.is_empty()).map(|(n, _)| *n).collect::<Vec<_>>())
            })
            .filter(|(_, ns)| !ns.is_empty())
            .collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Panics with every violation so far (and the log around the first) if there is any.
    pub fn assert_ok(&self, seed: u64) {
        let i = self.lock();
        if let Some(first) = i.violations.first() {
            let name = i.first.clone().unwrap_or_default();
            let tail: Vec<&String> =
                i.log.iter().filter(|l| l.contains(&format!(" {name}.")) || l.contains(" died")).collect();
            panic!(
                "seed {seed}: a VM ran on two nodes at once ({} violations); first: {first}\nall:\n  {}\ndriver events of {name} (and host deaths):\n  {}",
                i.violations.len(),
                i.violations.join("\n  "),
                tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
            );
        }
    }

    /// How many starts were checked.
    pub fn starts(&self) -> u64 {
        self.lock().starts
    }

    /// Every start and stop so far.
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }
}

/// The fake driver of one host, reporting to the shared [`Running`] view.
pub struct RecordingDriver {
    node: u64,
    fake: FakeDriver,
    view: Running,
}

impl RecordingDriver {
    pub fn new(node: u64, view: Running) -> RecordingDriver {
        RecordingDriver { node, fake: FakeDriver::new(), view }
    }
}

#[async_trait]
impl VmDriver for RecordingDriver {
    fn backend(&self) -> &'static str {
        "fake"
    }

    async fn prepare(&self, vm: &Instance, spec: &VmSpec) -> Result<()> {
        self.fake.prepare(vm, spec).await
    }

    async fn start(&self, vm: &Instance) -> Result<()> {
        let before = self.fake.status(vm).await?.state;
        self.fake.start(vm).await?;
        if before != VmState::Running && self.fake.status(vm).await?.state == VmState::Running {
            self.view.started(self.node, vm);
        }
        Ok(())
    }

    async fn stop(&self, vm: &Instance, timeout: Duration) -> Result<StopOutcome> {
        let r = self.fake.stop(vm, timeout).await?;
        self.view.stopped(self.node, vm);
        Ok(r)
    }

    async fn delete(&self, vm: &Instance) -> Result<()> {
        self.fake.delete(vm).await?;
        self.view.stopped(self.node, vm);
        Ok(())
    }

    async fn status(&self, vm: &Instance) -> Result<VmObserved> {
        self.fake.status(vm).await
    }

    async fn list(&self) -> Result<Vec<VmObserved>> {
        self.fake.list().await
    }

    async fn list_legacy(&self) -> Result<Vec<String>> {
        self.fake.list_legacy().await
    }

    async fn settle_legacy(&self, name: &str, fate: LegacyFate) -> Result<()> {
        self.fake.settle_legacy(name, fate).await
    }

    fn log_path(&self, name: &str) -> Option<PathBuf> {
        self.fake.log_path(name)
    }

    async fn read_console(&self, name: &str, offset: u64, max: usize) -> Result<ConsoleChunk> {
        self.fake.read_console(name, offset, max).await
    }

    async fn console_input(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.fake.console_input(name, bytes).await
    }
}
