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

/// What the driver sees on this host, independent of what the cluster wants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// The hypervisor process is alive (the guest may still be booting: see `boot_ms`).
    Running,
    /// Prepared and not running: never started, stopped on request, or the guest powered off.
    Stopped,
    /// The process ended in a way nobody asked for (killed, panicked, crashed, failed to start).
    Failed(String),
    /// The driver knows no VM of that name on this host.
    NotFound,
}

/// One VM as observed by a driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmObserved {
    pub name: String,
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
    pub fn not_found(name: &str) -> Self {
        Self::stopped(name, VmState::NotFound)
    }

    pub(crate) fn stopped(name: &str, state: VmState) -> Self {
        Self {
            name: name.to_string(),
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
/// Names are VM names (DNS labels); every method rejects an invalid name with
/// [`crate::VmmError::InvalidName`] before touching the file system.
///
/// To be correct, an implementation must:
/// - be idempotent where the reconciler retries: `prepare` of an unchanged spec, `start` of a
///   running VM, `stop` of a stopped VM and `delete` of an unknown VM all succeed and change nothing;
/// - never start a second hypervisor for a VM that is already running, including one started by
///   an earlier instance of the driver (a daemon restart must adopt, not reboot);
/// - report through `status` only what it observed on this host, never what was asked for;
/// - keep each VM's files inside its own directory under the driver's base directory.
#[async_trait]
pub trait VmDriver: Send + Sync {
    /// Short backend name for logs and status output ("qemu", "microvm-nix", "fake").
    fn backend(&self) -> &'static str;

    /// Records the spec and creates what the VM needs before it can start (directory, disk).
    ///
    /// To be correct, an implementation must keep existing disk contents when called again, and
    /// must not affect a running VM: a changed spec takes effect at the next `start`.
    async fn prepare(&self, spec: &VmSpec) -> Result<()>;

    /// Starts a prepared VM and returns once the hypervisor is up and controllable (not once the
    /// guest has booted: watch `status().boot_ms` or the console for that).
    ///
    /// To be correct, an implementation must return `Ok` without starting anything if the VM is
    /// already running, and an error (not `Ok`) if the hypervisor exits while starting.
    async fn start(&self, name: &str) -> Result<()>;

    /// Stops a VM, escalating: a graceful guest power-off within `timeout`, then a hypervisor
    /// quit, then killing the whole process group. Returns which step worked.
    ///
    /// To be correct, an implementation must not return before the process is gone, and a VM
    /// stopped this way must afterwards report [`VmState::Stopped`], never `Failed`.
    async fn stop(&self, name: &str, timeout: Duration) -> Result<StopOutcome>;

    /// Stops the VM if it runs (with a short graceful timeout) and removes all its files.
    ///
    /// To be correct, an implementation must leave no process and no file of the VM behind.
    async fn delete(&self, name: &str) -> Result<()>;

    /// What this host observes for one VM; [`VmState::NotFound`] for an unknown name.
    async fn status(&self, name: &str) -> Result<VmObserved>;

    /// Every VM this driver has files for, sorted by name.
    async fn list(&self) -> Result<Vec<VmObserved>>;

    /// The serial console log file, if the backend keeps one (for tools that tail files).
    fn log_path(&self, name: &str) -> Option<PathBuf>;

    /// Reads at most `max` console bytes from logical offset `offset` (see [`ConsoleChunk`]).
    /// Following a console is calling this again with `next_offset`.
    async fn read_console(&self, name: &str, offset: u64, max: usize) -> Result<ConsoleChunk>;

    /// Types `bytes` on the VM's serial console.
    ///
    /// To be correct, an implementation must fail with [`crate::VmmError::NotRunning`] rather
    /// than buffer input for a VM that is not running.
    async fn console_input(&self, name: &str, bytes: &[u8]) -> Result<()>;
}
