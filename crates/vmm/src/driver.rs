//! The boundary between the reconciler and a hypervisor backend.
//!
//! The trait is object safe (`Arc<dyn VmDriver>`) through `async_trait`: the node picks a backend
//! from its configuration at run time, and native `async fn` in traits cannot be used behind `dyn`.
//! Every future is `Send` so the reconciler can run it on any tokio worker.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use blixard_core::VmSpec;
use serde::{Deserialize, Serialize};

use crate::{Accel, Result};

/// One incarnation of a VM on this host: its name and the Raft index of the `VmCreate` that made
/// it (the replicated record's `create_index`).
///
/// A name can be deleted and created again; name and create index together are unique forever.
/// Everything a driver keeps (directory, disk, console log, hypervisor process) belongs to one
/// instance, so a new incarnation never inherits the disk or adopts the QEMU of an old one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub incarnation: u64,
}

impl Instance {
    pub fn new(name: impl Into<String>, incarnation: u64) -> Self {
        Self { name: name.into(), incarnation }
    }
}

/// `name.incarnation`, as in the instance's directory name.
impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.incarnation)
    }
}

/// What to do with a VM directory left by a driver from before incarnations (named by the bare
/// VM name, so of unknown incarnation). See [`VmDriver::settle_legacy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LegacyFate {
    /// It is this incarnation of the VM of that name: it becomes that instance, keeping its disk
    /// and a running hypervisor.
    Adopt(u64),
    /// Stop what runs in it and remove it.
    Remove,
}

/// What the driver sees on this host, independent of what the cluster wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// The hypervisor process is alive (the guest may still be booting: see `boot_ms`).
    Running,
    /// Prepared and not running: never started, stopped on request, or the guest powered off.
    Stopped,
    /// The process ended in a way nobody asked for (killed, panicked, crashed, failed to start).
    Failed(String),
    /// The driver knows no such instance on this host.
    NotFound,
}

/// One VM instance as observed by a driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmObserved {
    pub instance: Instance,
    pub state: VmState,
    /// Hypervisor process id while running.
    pub pid: Option<u32>,
    /// Wall-clock start of the current (or last) run, ms since the Unix epoch.
    pub started_at_ms: Option<u64>,
    /// Start of the process → boot marker on the console, if it has been seen.
    pub boot_ms: Option<u64>,
    /// How the last run ended (QMP SHUTDOWN reason, signal or exit status), once it has.
    pub exit_reason: Option<String>,
    /// Accelerator the current (or last) run used.
    pub accel: Option<Accel>,
}

impl VmObserved {
    pub fn not_found(vm: &Instance) -> Self {
        Self::stopped(vm, VmState::NotFound)
    }

    pub(crate) fn stopped(vm: &Instance, state: VmState) -> Self {
        Self {
            instance: vm.clone(),
            state,
            pid: None,
            started_at_ms: None,
            boot_ms: None,
            exit_reason: None,
            accel: None,
        }
    }
}

/// How a stop request was finally honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopOutcome {
    /// Nothing was running.
    AlreadyStopped,
    /// The guest powered itself off after an ACPI power-button press.
    Graceful,
    /// The hypervisor quit on request without the guest's cooperation.
    Quit,
    /// The process group was killed.
    Killed,
}

/// A piece of a VM's serial console log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleChunk {
    pub data: Vec<u8>,
    /// Offset to ask for next. Offsets are logical: they keep growing across log rotation, so a
    /// follower never sees the same bytes twice; bytes rotated away before being read are skipped.
    pub next_offset: u64,
}

/// A hypervisor backend, as the reconciler uses it.
///
/// Lifecycle methods act on one [`Instance`]; console access is by VM name and reaches the
/// newest incarnation of that name on this host (a legacy directory counts as older than any),
/// which is the one the cluster's record names while the reconciler is not behind. Every method
/// rejects an invalid name with [`crate::VmmError::InvalidName`] before touching the file system.
///
/// To be correct, an implementation must:
/// - be idempotent where the reconciler retries: `prepare` of an unchanged spec, `start` of a
///   running VM, `stop` of a stopped VM and `delete` of an unknown instance all succeed and change
///   nothing;
/// - never start a second hypervisor for an instance that is already running, including one
///   started by an earlier instance of the driver (a daemon restart must adopt, not reboot);
/// - never let one incarnation see another's files or process: a process is adopted only by the
///   instance that started it, and a new incarnation starts with a new disk;
/// - report through `status` only what it observed on this host, never what was asked for;
/// - keep each instance's files inside its own directory under the driver's base directory, and
///   map every directory and process it finds after a restart back to its instance.
#[async_trait]
pub trait VmDriver: Send + Sync {
    /// Short backend name for logs and status output ("qemu", "microvm-nix", "fake").
    fn backend(&self) -> &'static str;

    /// Records the spec and creates what the instance needs before it can start (directory,
    /// disk). `spec.name` must be `vm.name` ([`crate::VmmError::SpecMismatch`] otherwise).
    ///
    /// To be correct, an implementation must keep existing disk contents when called again, and
    /// must not affect a running VM: a changed spec takes effect at the next `start`.
    async fn prepare(&self, vm: &Instance, spec: &VmSpec) -> Result<()>;

    /// Starts a prepared instance and returns once the hypervisor is up and controllable (not
    /// once the guest has booted: watch `status().boot_ms` or the console for that).
    ///
    /// To be correct, an implementation must return `Ok` without starting anything if the
    /// instance is already running, and an error (not `Ok`) if the hypervisor exits while starting.
    async fn start(&self, vm: &Instance) -> Result<()>;

    /// Stops an instance, escalating: a graceful guest power-off within `timeout`, then a
    /// hypervisor quit, then killing the whole process group. Returns which step worked.
    ///
    /// To be correct, an implementation must not return before the process is gone, and a VM
    /// stopped this way must afterwards report [`VmState::Stopped`], never `Failed`.
    async fn stop(&self, vm: &Instance, timeout: Duration) -> Result<StopOutcome>;

    /// Stops the instance if it runs (with a short graceful timeout) and removes all its files.
    ///
    /// To be correct, an implementation must leave no process and no file of the instance behind,
    /// and must not touch any other incarnation of the same name.
    async fn delete(&self, vm: &Instance) -> Result<()>;

    /// What this host observes for one instance; [`VmState::NotFound`] for an unknown one.
    async fn status(&self, vm: &Instance) -> Result<VmObserved>;

    /// Every instance this driver has files for, sorted by name, then incarnation.
    async fn list(&self) -> Result<Vec<VmObserved>>;

    /// Names of the VM directories left by a driver from before incarnations (named by the bare
    /// VM name), sorted. They are never created any more; [`VmDriver::settle_legacy`] resolves
    /// each once.
    async fn list_legacy(&self) -> Result<Vec<String>>;

    /// Resolves a legacy directory: adopt it as an incarnation, or remove it (stopping what runs
    /// in it). Succeeds and does nothing if there is no legacy directory of that name.
    ///
    /// To be correct, an implementation must keep a hypervisor that runs in an adopted directory
    /// running and controllable as the new instance, and must refuse to adopt into an instance
    /// that already has files ([`crate::VmmError::InstanceExists`]).
    async fn settle_legacy(&self, name: &str, fate: LegacyFate) -> Result<()>;

    /// The serial console log file of the newest incarnation of `name`, if the backend keeps one
    /// (for tools that tail files).
    fn log_path(&self, name: &str) -> Option<PathBuf>;

    /// Reads at most `max` console bytes of the newest incarnation of `name` from logical offset
    /// `offset` (see [`ConsoleChunk`]). Following a console is calling this again with
    /// `next_offset`.
    async fn read_console(&self, name: &str, offset: u64, max: usize) -> Result<ConsoleChunk>;

    /// Types `bytes` on the serial console of the newest incarnation of `name`.
    ///
    /// To be correct, an implementation must fail with [`crate::VmmError::NotRunning`] rather
    /// than buffer input for a VM that is not running.
    async fn console_input(&self, name: &str, bytes: &[u8]) -> Result<()>;

    /// Notified whenever what [`VmDriver::status`] observes changes on its own (a guest booted,
    /// a hypervisor exited), so the reconciler reports it at once instead of at its next timed
    /// pass. `None`: the backend does not notify (the timed passes still see every change).
    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
}
