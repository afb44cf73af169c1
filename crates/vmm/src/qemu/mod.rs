//! The QEMU `microvm` backend.
//!
//! Each VM instance lives in `<base>/vms/<name>.<incarnation>/` (see [`crate::paths`]):
//! `spec.json` (from `prepare`), `vm.json` (the last run: pid, the directory it was started in,
//! start time, accelerator, QMP path, boot time, how it ended), `disk.qcow2`, `console.log`
//! (+ `console.log.1`), `qemu.stderr`, and while running `qmp.sock`, `console.sock`, `qemu.pid`.
//!
//! QEMU runs as our child in its own process group (never `-daemonize`, which chdirs to /), so a
//! kill reaches everything it spawned and a daemon restart leaves it running. A new driver adopts
//! a running QEMU (by the pid in `vm.json`, checked against `/proc/PID/cmdline`, which must name
//! the directory it was started in, then a QMP reconnect) the first time it is asked about that
//! instance, instead of booting it again. The directory is part of the instance's identity, so a
//! new incarnation of a name can never adopt the QEMU of an old one.
//!
//! Upgrade: a legacy directory `<base>/vms/<name>` (drivers before incarnations) is adopted by
//! renaming it to the instance's; a QEMU running in it keeps running (it holds its files open,
//! and its sockets move with the directory) and is recognised by the old directory recorded in
//! `vm.json` before the rename.

pub mod args;
pub(crate) mod host;
pub mod monitor;
pub mod qmp;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use blixard_core::VmSpec;
use tokio::sync::Mutex;

use self::args::VmPaths;
use self::monitor::{Handle, Live, Proc};
use self::qmp::Qmp;
use self::state::{ExitRecord, RunFile};
use crate::image::GuestImage;
use crate::paths::{self, Entry};
use crate::{
    instance_dir, legacy_dir, now_ms, Accel, ConsoleChunk, Instance, LegacyFate, Result, StopOutcome, VmDriver,
    VmObserved, VmState, VmmError,
};

/// Default cap of `console.log` before it rotates to `console.log.1` (so at most ~2× on disk).
pub const CONSOLE_CAP_BYTES: u64 = 4 << 20;
/// How long a start may take until QMP answers before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest path a unix socket address holds (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Escalation timeouts after the graceful one: for `quit`, then for the kill to be reaped.
const QUIT_TIMEOUT: Duration = Duration::from_secs(3);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `stop` presses the power button again while waiting for the guest.
const POWERDOWN_REPEAT: Duration = Duration::from_secs(1);
/// Graceful stop timeout used by `delete`.
const DELETE_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`QemuDriver`] runs VMs.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// Root of the driver's files; VMs live in `<base_dir>/vms/<name>.<incarnation>`.
    pub base_dir: PathBuf,
    /// Kernel and initrd for specs that name none.
    pub image: GuestImage,
    pub accel: Accel,
    pub qemu_binary: PathBuf,
    pub qemu_img: PathBuf,
    pub console_cap_bytes: u64,
    /// A host bridge: each VM gets a second NIC, a tap device enslaved to it (needs root).
    pub bridge: Option<String>,
    /// Which host files a spec's kernel, initrd and rootfs may name.
    pub host_files: crate::host_files::HostFiles,
}

impl QemuConfig {
    pub fn new(base_dir: impl Into<PathBuf>, image: GuestImage, accel: Accel) -> Self {
        Self {
            base_dir: base_dir.into(),
            accel,
            qemu_binary: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            console_cap_bytes: CONSOLE_CAP_BYTES,
            bridge: None,
            // The default guest is `<cache>/default/...`: its cache is two levels up.
            host_files: crate::host_files::HostFiles::new(
                image.kernel.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default(),
                Vec::new(),
            ),
            image,
        }
    }
}

/// Runs VMs as QEMU `microvm` processes on this host. See the module docs for the layout.
pub struct QemuDriver {
    cfg: QemuConfig,
    tsc_khz: Option<u64>,
    /// Watched VMs, by directory name ([`Slot::key`]).
    vms: StdMutex<BTreeMap<String, Arc<Handle>>>,
    /// One lock per directory: start/stop/delete/adopt of one VM never interleave.
    locks: StdMutex<BTreeMap<String, Arc<Mutex<()>>>>,
    /// Notified by the VMs' monitors when a guest boots or a QEMU exits ([`VmDriver::changes`]).
    changes: Arc<tokio::sync::Notify>,
}

/// One VM directory: an instance's, or a legacy one being settled. Handles and locks are kept
/// under its directory name, which is unique per instance.
struct Slot {
    key: String,
    paths: VmPaths,
}

impl QemuDriver {
    /// A driver with an explicit configuration (image and accelerator already chosen).
    pub fn new(mut cfg: QemuConfig) -> Result<Self> {
        let vms = cfg.base_dir.join("vms");
        std::fs::create_dir_all(&vms).map_err(VmmError::io("create", &vms))?;
        cfg.base_dir = std::fs::canonicalize(&cfg.base_dir).map_err(VmmError::io("resolve", &cfg.base_dir))?;
        Ok(Self {
            cfg,
            tsc_khz: args::host_tsc_khz(),
            vms: Default::default(),
            locks: Default::default(),
            changes: Default::default(),
        })
    }

    /// The daemon's constructor: builds (or reuses) the default image under
    /// `<base>/images/default`, picks the accelerator with a boot probe cached under `<base>`
    /// (see [`crate::accel`]), then adopts every VM still running from an earlier daemon.
    pub async fn open(base_dir: impl Into<PathBuf>) -> Result<(Self, crate::accel::AccelVerdict)> {
        let base: PathBuf = base_dir.into();
        let cache = base.join("images").join("default");
        let image = tokio::task::spawn_blocking(move || crate::image::ensure_image(&cache))
            .await
            .expect("the image build does not panic")?;
        let verdict = crate::accel::select(&image, &base).await?;
        let driver = Self::new(QemuConfig::new(base, image, verdict.accel))?;
        driver.adopt_all().await?;
        Ok((driver, verdict))
    }

    /// The accelerator new VMs start with.
    pub fn accel(&self) -> Accel {
        self.cfg.accel
    }

    pub fn base_dir(&self) -> &Path {
        &self.cfg.base_dir
    }

    /// Adopts every instance whose QEMU is still running; returns them. Legacy directories wait
    /// for [`VmDriver::settle_legacy`].
    pub async fn adopt_all(&self) -> Result<Vec<Instance>> {
        let mut adopted = Vec::new();
        for vm in self.instances()? {
            if self.status(&vm).await?.state == VmState::Running {
                adopted.push(vm);
            }
        }
        Ok(adopted)
    }

    /// Fails if the sockets in `dir` would not fit a unix socket address (107 bytes): QEMU would
    /// otherwise fail late with a less clear message. Keep the base directory short.
    fn slot_at(dir: PathBuf) -> Result<Slot> {
        let paths = VmPaths::new(dir);
        if paths.console_sock.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(VmmError::PathTooLong { path: paths.console_sock, max: MAX_SOCKET_PATH });
        }
        let key = paths.dir.file_name().expect("a VM directory has a name").to_string_lossy().into_owned();
        Ok(Slot { key, paths })
    }

    fn slot(&self, vm: &Instance) -> Result<Slot> {
        Self::slot_at(instance_dir(&self.cfg.base_dir, vm)?)
    }

    fn lock_for(&self, slot: &Slot) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().expect("lock poisoned");
        // Incarnations come and go: forget locks nobody holds or waits for (only the map has them).
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(slot.key.clone()).or_default().clone()
    }

    fn instances(&self) -> Result<Vec<Instance>> {
        Ok(paths::entries(&self.cfg.base_dir)?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Instance(vm) => Some(vm),
                Entry::Legacy(_) => None,
            })
            .collect())
    }

    /// The watched handle of a VM, adopting a QEMU left by an earlier driver. Caller holds the
    /// slot's lock. `None` if nothing runs (or ran, in this driver) for it.
    async fn handle(&self, slot: &Slot) -> Result<Option<Arc<Handle>>> {
        let (name, paths) = (slot.key.as_str(), &slot.paths);
        if let Some(h) = self.vms.lock().expect("lock poisoned").get(name) {
            return Ok(Some(h.clone()));
        }
        let Some(mut run) = state::read_run(&paths.run)? else { return Ok(None) };
        let (Some(pid), None) = (run.pid, &run.exit) else { return Ok(None) };
        let started_in = run.dir.clone().unwrap_or_else(|| paths.dir.clone());
        if !state::is_vm_process(pid, &started_in) {
            run.exit = Some(ExitRecord {
                failed: true,
                reason: "exited while no driver was watching".into(),
                at_ms: now_ms(),
            });
            state::write_json(&paths.run, &run)?;
            return Ok(None);
        }
        let qmp = Qmp::connect(&paths.qmp, Duration::from_secs(5)).await?;
        let console = monitor::connect_console(paths).await;
        let live = Live {
            pid,
            dir: started_in,
            started_at_ms: run.started_at_ms.unwrap_or(0),
            accel: run.accel.unwrap_or(self.cfg.accel),
            boot_ms: run.boot_ms,
            console_base: run.console_base,
            stop_requested: false,
            exit: None,
        };
        tracing::info!(vm = name, pid, "adopted a running QEMU");
        let proc = Proc::Adopted(pid);
        let h = Arc::new(monitor::spawn(
            paths.clone(),
            proc,
            qmp,
            console,
            live,
            self.cfg.console_cap_bytes,
            self.changes.clone(),
        ));
        self.vms.lock().expect("lock poisoned").insert(name.to_string(), h.clone());
        Ok(Some(h))
    }

    async fn running(&self, slot: &Slot) -> Result<Option<Arc<Handle>>> {
        Ok(self.handle(slot).await?.filter(|h| h.live.borrow().exit.is_none()))
    }

    fn boot_files(&self, spec: &VmSpec) -> Result<GuestImage> {
        let pick = |field: &str, given: &Option<String>, default: &Path| match given {
            Some(p) => self.cfg.host_files.resolve(field, p),
            None => Ok(default.to_path_buf()),
        };
        Ok(GuestImage {
            kernel: pick("kernel", &spec.kernel, &self.cfg.image.kernel)?,
            initrd: pick("initrd", &spec.initrd, &self.cfg.image.initrd)?,
        })
    }

    async fn start_locked(&self, slot: &Slot) -> Result<()> {
        let (name, paths) = (slot.key.as_str(), &slot.paths);
        if self.running(slot).await?.is_some() {
            return Ok(());
        }
        self.vms.lock().expect("lock poisoned").remove(name);
        let spec = host::read_spec(paths, name)?;
        let image = self.boot_files(&spec)?;
        let prev = state::read_run(&paths.run)?.unwrap_or_default();
        if let (Some(_), Some(old)) = (&self.cfg.bridge, prev.dir.as_ref().filter(|d| **d != paths.dir)) {
            // Adopted from a legacy directory: its tap was named after that one.
            host::remove_tap(&args::Tap::for_dir(old).ifname);
        }
        let console_base = state::rotate_for_new_run(paths, prev.console_base)?;
        for p in [&paths.qmp, &paths.console_sock, &paths.pidfile] {
            let _ = std::fs::remove_file(p);
        }
        let tap = match &self.cfg.bridge {
            None => None,
            Some(br) => {
                let t = args::Tap::for_dir(&paths.dir);
                host::ensure_tap(&t.ifname, br)
                    .map_err(|detail| VmmError::StartFailed { name: name.to_string(), detail })?;
                Some(t)
            }
        };
        let argv =
            args::qemu_args(&spec, paths, &image, self.cfg.accel, self.tsc_khz, paths.disk.exists(), tap.as_ref());
        let stderr = std::fs::File::create(&paths.stderr).map_err(VmmError::io("create", &paths.stderr))?;
        let program = self.cfg.qemu_binary.display().to_string();
        let mut child = tokio::process::Command::new(&self.cfg.qemu_binary)
            .args(&argv)
            .current_dir(&paths.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| VmmError::Spawn { program, source })?;
        let pid = child.id().expect("a just-spawned child has a pid");
        let live = Live {
            pid,
            dir: paths.dir.clone(),
            started_at_ms: now_ms(),
            accel: self.cfg.accel,
            boot_ms: None,
            console_base,
            stop_requested: false,
            exit: None,
        };
        // Recorded before waiting for QMP, so a daemon dying right now still finds (adopts) it.
        state::write_json(&paths.run, &live.run_file(paths))?;
        let deadline = Instant::now() + START_TIMEOUT;
        let qmp = loop {
            if let Some(st) = child.try_wait().map_err(VmmError::io("wait for", &self.cfg.qemu_binary))? {
                let detail = format!("{st}: {}", monitor::stderr_tail(paths));
                let run = RunFile {
                    exit: Some(ExitRecord { failed: true, reason: detail.clone(), at_ms: now_ms() }),
                    ..live.run_file(paths)
                };
                state::write_json(&paths.run, &run)?;
                return Err(VmmError::StartFailed { name: name.to_string(), detail });
            }
            if paths.qmp.exists() {
                if let Ok(q) = Qmp::connect(&paths.qmp, Duration::from_secs(2)).await {
                    break q;
                }
            }
            if Instant::now() > deadline {
                let _ = host::kill_group(pid);
                let _ = child.wait().await;
                return Err(VmmError::Timeout {
                    what: "QEMU's QMP socket".into(),
                    after_ms: START_TIMEOUT.as_millis() as u64,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tracing::info!(vm = name, pid, accel = %self.cfg.accel, "started QEMU");
        let console = monitor::connect_console(paths).await;
        let h = monitor::spawn(
            paths.clone(),
            Proc::Child(child),
            qmp,
            console,
            live,
            self.cfg.console_cap_bytes,
            self.changes.clone(),
        );
        self.vms.lock().expect("lock poisoned").insert(name.to_string(), Arc::new(h));
        Ok(())
    }

    async fn stop_locked(&self, slot: &Slot, timeout: Duration) -> Result<StopOutcome> {
        let name = slot.key.as_str();
        let Some(h) = self.running(slot).await? else { return Ok(StopOutcome::AlreadyStopped) };
        h.live.send_modify(|l| l.stop_requested = true);
        // A button press before the guest's acpid runs is lost, so press again every second
        // until the guest goes or the graceful window closes.
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if h.command("system_powerdown").await.is_err() {
                // QMP closes as QEMU exits: most likely the previous press worked just now.
                if h.wait_exit(QUIT_TIMEOUT).await {
                    return Ok(StopOutcome::Graceful);
                }
                break;
            }
            if h.wait_exit(left.min(POWERDOWN_REPEAT)).await {
                return Ok(StopOutcome::Graceful);
            }
        }
        tracing::info!(vm = name, "guest ignored the power button; quitting QEMU");
        if h.command("quit").await.is_ok() && h.wait_exit(QUIT_TIMEOUT).await {
            return Ok(StopOutcome::Quit);
        }
        tracing::warn!(vm = name, "QEMU did not quit; killing its process group");
        let _ = host::kill_group(h.snapshot().pid);
        if h.wait_exit(KILL_TIMEOUT).await {
            return Ok(StopOutcome::Killed);
        }
        Err(VmmError::Timeout { what: format!("VM {name:?} to exit"), after_ms: KILL_TIMEOUT.as_millis() as u64 })
    }

    /// Stops what runs in the slot and removes its directory (and tap devices).
    async fn delete_locked(&self, slot: &Slot) -> Result<()> {
        let paths = &slot.paths;
        if !paths.dir.exists() {
            return Ok(());
        }
        let started_in = state::read_run(&paths.run).ok().flatten().and_then(|r| r.dir);
        self.stop_locked(slot, DELETE_STOP_TIMEOUT).await?;
        self.vms.lock().expect("lock poisoned").remove(&slot.key);
        if self.cfg.bridge.is_some() {
            host::remove_tap(&args::Tap::for_dir(&paths.dir).ifname);
            if let Some(old) = started_in.filter(|d| *d != paths.dir) {
                host::remove_tap(&args::Tap::for_dir(&old).ifname);
            }
        }
        std::fs::remove_dir_all(&paths.dir).map_err(VmmError::io("remove", &paths.dir))
    }

    /// The slot console access goes to: the newest incarnation of `name`, else its legacy
    /// directory.
    fn current(&self, name: &str) -> Result<Option<(Slot, Entry)>> {
        match paths::current(&self.cfg.base_dir, name)? {
            Some((dir, entry)) => Ok(Some((Self::slot_at(dir)?, entry))),
            None => Ok(None),
        }
    }

    fn observed(vm: &Instance, live: &Live) -> VmObserved {
        let state = match &live.exit {
            None => VmState::Running,
            Some(e) if e.failed => VmState::Failed(e.reason.clone()),
            Some(_) => VmState::Stopped,
        };
        VmObserved {
            instance: vm.clone(),
            state,
            pid: live.exit.is_none().then_some(live.pid),
            started_at_ms: Some(live.started_at_ms),
            boot_ms: live.boot_ms,
            exit_reason: live.exit.as_ref().map(|e| e.reason.clone()),
            accel: Some(live.accel),
        }
    }
}

#[async_trait]
impl VmDriver for QemuDriver {
    fn backend(&self) -> &'static str {
        "qemu"
    }

    async fn prepare(&self, vm: &Instance, spec: &VmSpec) -> Result<()> {
        let slot = self.slot(vm)?;
        if spec.name != vm.name {
            return Err(VmmError::SpecMismatch { instance: vm.clone(), spec: spec.name.clone() });
        }
        let lock = self.lock_for(&slot);
        let _g = lock.lock().await;
        let paths = &slot.paths;
        std::fs::create_dir_all(&paths.dir).map_err(VmmError::io("create", &paths.dir))?;
        // The boot files are checked here too, so a refused spec fails before anything runs.
        self.boot_files(spec)?;
        host::create_disk(&self.cfg.qemu_img, &self.cfg.host_files, spec, paths).await?;
        state::write_json(&paths.spec, spec)
    }

    async fn start(&self, vm: &Instance) -> Result<()> {
        let slot = self.slot(vm)?;
        let lock = self.lock_for(&slot);
        let _g = lock.lock().await;
        self.start_locked(&slot).await
    }

    async fn stop(&self, vm: &Instance, timeout: Duration) -> Result<StopOutcome> {
        let slot = self.slot(vm)?;
        let lock = self.lock_for(&slot);
        let _g = lock.lock().await;
        self.stop_locked(&slot, timeout).await
    }

    async fn delete(&self, vm: &Instance) -> Result<()> {
        let slot = self.slot(vm)?;
        let lock = self.lock_for(&slot);
        let _g = lock.lock().await;
        self.delete_locked(&slot).await
    }

    async fn status(&self, vm: &Instance) -> Result<VmObserved> {
        let slot = self.slot(vm)?;
        if !slot.paths.dir.exists() {
            return Ok(VmObserved::not_found(vm));
        }
        // Fast path without the VM's lock, so status never waits for a stop in progress.
        let watched = self.vms.lock().expect("lock poisoned").get(&slot.key).cloned();
        if let Some(h) = watched {
            return Ok(Self::observed(vm, &h.snapshot()));
        }
        let lock = self.lock_for(&slot);
        let _g = lock.lock().await;
        if let Some(h) = self.handle(&slot).await? {
            return Ok(Self::observed(vm, &h.snapshot()));
        }
        let Some(run) = state::read_run(&slot.paths.run)? else { return Ok(VmObserved::stopped(vm, VmState::Stopped)) };
        let state = match &run.exit {
            Some(e) if e.failed => VmState::Failed(e.reason.clone()),
            _ => VmState::Stopped,
        };
        Ok(VmObserved {
            started_at_ms: run.started_at_ms,
            boot_ms: run.boot_ms,
            exit_reason: run.exit.map(|e| e.reason),
            accel: run.accel,
            ..VmObserved::stopped(vm, state)
        })
    }

    async fn list(&self) -> Result<Vec<VmObserved>> {
        let mut out = Vec::new();
        for vm in self.instances()? {
            out.push(self.status(&vm).await?);
        }
        Ok(out)
    }

    async fn list_legacy(&self) -> Result<Vec<String>> {
        Ok(paths::entries(&self.cfg.base_dir)?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Legacy(name) => Some(name),
                Entry::Instance(_) => None,
            })
            .collect())
    }

    async fn settle_legacy(&self, name: &str, fate: LegacyFate) -> Result<()> {
        let legacy = Self::slot_at(legacy_dir(&self.cfg.base_dir, name)?)?;
        let lock = self.lock_for(&legacy);
        let _g = lock.lock().await;
        if !legacy.paths.dir.exists() {
            return Ok(());
        }
        let incarnation = match fate {
            LegacyFate::Remove => {
                tracing::info!(vm = name, "removing a VM directory from before incarnations");
                return self.delete_locked(&legacy).await;
            }
            LegacyFate::Adopt(incarnation) => incarnation,
        };
        let vm = Instance::new(name, incarnation);
        let target = self.slot(&vm)?;
        let tlock = self.lock_for(&target);
        let _tg = tlock.lock().await;
        if target.paths.dir.exists() {
            return Err(VmmError::InstanceExists(vm));
        }
        // Not watched under its old name any more (the monitor would write into a moved directory).
        self.vms.lock().expect("lock poisoned").remove(&legacy.key);
        // Before the rename: a QEMU running in it is then still recognised by its command line.
        if let Some(mut run) = state::read_run(&legacy.paths.run)? {
            if run.dir.is_none() {
                run.dir = Some(legacy.paths.dir.clone());
                state::write_json(&legacy.paths.run, &run)?;
            }
        }
        std::fs::rename(&legacy.paths.dir, &target.paths.dir).map_err(VmmError::io("rename", &legacy.paths.dir))?;
        tracing::info!(vm = name, instance = %vm, "adopted a VM directory from before incarnations");
        Ok(())
    }

    fn log_path(&self, name: &str) -> Option<PathBuf> {
        self.current(name).ok().flatten().map(|(slot, _)| slot.paths.console_log)
    }

    fn changes(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.changes.clone())
    }

    async fn read_console(&self, name: &str, offset: u64, max: usize) -> Result<ConsoleChunk> {
        let (slot, _) = self.current(name)?.ok_or_else(|| VmmError::NotFound(name.to_string()))?;
        let handle = self.vms.lock().expect("lock poisoned").get(&slot.key).cloned();
        match handle {
            Some(h) => {
                let _g = h.console.lock().await;
                state::read_console(&slot.paths, h.snapshot().console_base, offset, max)
            }
            None => {
                let base = state::read_run(&slot.paths.run)?.map_or(0, |r| r.console_base);
                state::read_console(&slot.paths, base, offset, max)
            }
        }
    }

    async fn console_input(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let not_running = || VmmError::NotRunning(name.to_string());
        let Some((slot, Entry::Instance(_))) = self.current(name)? else { return Err(not_running()) };
        let h = {
            let lock = self.lock_for(&slot);
            let _g = lock.lock().await;
            self.running(&slot).await?.ok_or_else(not_running)?
        };
        h.console_input(bytes).await
    }
}
