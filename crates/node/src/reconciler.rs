//! The reconciler: on every node, make the VMs the cluster assigned here match their desired
//! state, and report what is observed back through Raft.
//!
//! One task walks this node's VMs in name order, so operations on one VM never overlap. Each
//! pass: read the assignments from the local replicated state (stale reads are fine: the next
//! pass sees newer state), ask the driver what runs, decide with the pure
//! [`blixard_core::reconcile::decide`], act, and propose a `VmReport` when the observation
//! changed.
//!
//! The driver keys everything by instance (name + the record's create index), so a VM deleted
//! and created again under its name is a new instance: it boots afresh, with a new disk. An
//! instance the driver has that no record assigned here names is an orphan (deleted, recreated,
//! moved elsewhere) and is stopped and its files removed, but only once a linearizable read has
//! confirmed it ([`orphans`]): a node behind the cluster never destroys a VM whose record it has
//! not applied yet.

mod orphans;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blixard_consensus::sm::ReadView;
use blixard_consensus::Handle;
use blixard_core::reconcile::{backoff_ms, decide, Action, Seen};
use blixard_core::{Command, NodeId, Observed, Phase, PowerState, VmRecord};
use blixard_vmm::{Instance, VmDriver, VmObserved, VmState};

use self::orphans::Cleanup;

/// How often a pass runs when nothing wakes it earlier.
const PASS_EVERY: Duration = Duration::from_millis(500);
/// Graceful power-off time before a stop escalates.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// A VM that ran this long since its last automatic restart resets its backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// How long a pass waits for the linearizable read that must confirm orphans before any is
/// removed (without a leader it fails, and orphans wait for a later pass).
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

/// The instance a record stands for on its node: its placement there.
fn instance_of(rec: &VmRecord) -> Instance {
    Instance::new(rec.spec.name.clone(), rec.placed_index)
}

/// What the node should want of a VM assigned to it: nothing runs while the node it moves from
/// has not stopped it yet, nor once it was lost.
fn wanted(rec: &VmRecord) -> PowerState {
    if rec.handoff_from.is_some() || rec.lost {
        PowerState::Stopped
    } else {
        rec.desired
    }
}

/// What this node remembers about a VM between passes.
#[derive(Default)]
struct Local {
    create_index: u64,
    /// We stopped it (so a `Stopped` state is not the guest's own doing).
    stopped_by_us: bool,
    started_here: bool,
    /// Automatic restarts in a row, for the backoff.
    streak: u32,
    restarts: u32,
    not_before: Option<Instant>,
    started_at: Option<Instant>,
    generation_done: u64,
    /// Why the last action failed, until the next one succeeds.
    error: Option<String>,
    /// Why it last ended on its own.
    last_exit: Option<String>,
    /// Failed health checks in a row, and when the next check is due.
    health_failures: u32,
    next_check: Option<Instant>,
    /// Set when failed checks made us stop it; it counts as failed until it runs again.
    unhealthy: Option<String>,
    last_report: Option<Observed>,
    /// We started it and have not seen its guest boot yet (for the boot duration metric).
    boot_pending: bool,
}

pub struct Reconciler {
    pub id: NodeId,
    pub raft: Handle,
    pub driver: Arc<dyn VmDriver>,
    pub accel: String,
    /// VMs start only while the node holds a lease from the leader (see `crate::liveness`).
    pub lease: Arc<crate::liveness::lease::Lease>,
    /// What it does, counted for the node's metrics.
    pub work: Arc<crate::metrics::work::Work>,
    vms: BTreeMap<String, Local>,
}

fn available_memory_mib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = s.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

impl Reconciler {
    pub fn new(
        id: NodeId,
        raft: Handle,
        driver: Arc<dyn VmDriver>,
        accel: String,
        lease: Arc<crate::liveness::lease::Lease>,
    ) -> Self {
        Reconciler { id, raft, driver, accel, lease, work: Default::default(), vms: BTreeMap::new() }
    }

    /// Counts its work into `work` (the node's metrics).
    pub fn with_work(mut self, work: Arc<crate::metrics::work::Work>) -> Self {
        self.work = work;
        self
    }

    /// Runs passes until the process ends; wakes early when the replicated state of VMs, nodes
    /// or members changes (key/value writes do not wake it), and when the driver observes a
    /// change on its own (a guest booted, a VM exited), so that is reported at once rather than
    /// at the next timed pass. Ends when the Raft driver stops (a storage failure: the node
    /// exits): nothing more will be applied, and waiting on the closed channel would return at
    /// once — a loop that never yields, which under a single-threaded executor kept the daemon
    /// from ever exiting (found by the simulation).
    pub async fn run(mut self) {
        let mut version = self.raft.watch_state_version();
        let changes = self.driver.changes();
        loop {
            if let Err(e) = self.pass().await {
                tracing::warn!("reconcile pass failed: {e}");
            }
            let driver_changed = async {
                match &changes {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = tokio::time::timeout(PASS_EVERY, version.changed()) => {
                    if let Ok(Err(_)) = r {
                        tracing::info!("the raft driver stopped: reconciling ends");
                        return;
                    }
                }
                _ = driver_changed => {}
            }
        }
    }

    /// The VMs placed on this node, read through the per-node index (never a walk over every
    /// VM of the cluster: with ~47,000 VMs that walk on every applied change cut the cluster's
    /// write rate to a third).
    fn assigned(&self) -> Result<Vec<VmRecord>, String> {
        let view = ReadView::begin(self.raft.db()).map_err(|e| e.to_string())?;
        blixard_core::state::vms_on(&view, self.id).map_err(|e| e.to_string())
    }

    /// Whether the replicated state, read now, still wants `rec`'s instance running here.
    fn still_here(&self, rec: &VmRecord) -> bool {
        let Ok(view) = ReadView::begin(self.raft.db()) else { return false };
        let Ok(Some(r)) = blixard_core::state::vm_named(&view, &rec.spec.name) else { return false };
        r.node == Some(self.id) && r.placed_index == rec.placed_index && wanted(&r) == PowerState::Running
    }

    /// VMs moving away from this node (or deleted) whose instance here is gone: tell the
    /// cluster, so the node they go to (or a VM created under the name) may start them.
    async fn hand_off(&self, found: &[Instance]) -> Result<(), String> {
        let names = {
            let view = ReadView::begin(self.raft.db()).map_err(|e| e.to_string())?;
            blixard_core::state::handing_off(&view, self.id).map_err(|e| e.to_string())?
        };
        for name in names {
            if found.iter().any(|i| i.name == name) {
                continue;
            }
            let cmd = Command::VmHandoff { name: name.clone(), node: self.id };
            match crate::internal::propose(&self.raft, cmd).await {
                Ok(_) => tracing::info!(vm = %name, "stopped here; handed over"),
                Err(s) => tracing::debug!(vm = %name, "handoff not accepted yet: {}", s.message()),
            }
        }
        Ok(())
    }

    async fn pass(&mut self) -> Result<(), String> {
        let mut assigned = self.assigned()?;
        let found: Vec<Instance> =
            self.driver.list().await.map_err(|e| e.to_string())?.into_iter().map(|o| o.instance).collect();
        self.lease.retain_fenced(&found);
        let legacy = self.driver.list_legacy().await.map_err(|e| e.to_string())?;
        let mut unsettled: BTreeSet<String> = legacy.iter().cloned().collect();
        let suspects = orphans::suspects(&assigned.iter().map(instance_of).collect(), &found, &legacy);
        if !suspects.is_empty() {
            match tokio::time::timeout(CONFIRM_TIMEOUT, self.raft.read_index(CONFIRM_TIMEOUT)).await {
                Ok(Ok(_)) => {
                    // Everything committed before the read is applied here now: read again.
                    assigned = self.assigned()?;
                    let now = assigned.iter().map(instance_of).collect();
                    for c in orphans::confirm(&now, &found, suspects) {
                        if let Some(name) = self.clean(c).await {
                            unsettled.remove(&name);
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!("orphans wait for a linearizable read: {e}"),
                Err(_) => tracing::debug!("orphans wait for a linearizable read: timed out"),
            }
        }
        let left: Vec<Instance> =
            self.driver.list().await.map_err(|e| e.to_string())?.into_iter().map(|o| o.instance).collect();
        self.hand_off(&left).await?;
        for rec in assigned {
            // Its legacy directory may be this record's disk (and running QEMU): starting a new
            // instance first would make the upgrade rule remove it instead of adopting it.
            if unsettled.contains(&rec.spec.name) {
                tracing::debug!(vm = %rec.spec.name, "waiting to settle its directory from before incarnations");
                continue;
            }
            self.one(&rec).await;
        }
        Ok(())
    }

    /// Carries out a confirmed cleanup. Returns the name of a legacy directory it settled.
    async fn clean(&mut self, c: Cleanup) -> Option<String> {
        match c {
            Cleanup::Delete(vm) => {
                tracing::info!(vm = %vm.name, incarnation = vm.incarnation, "removing a VM no longer assigned to this node");
                let r = self.driver.delete(&vm).await;
                self.work.action("remove", r.is_ok());
                if let Err(e) = r {
                    tracing::warn!(vm = %vm.name, incarnation = vm.incarnation, "cannot remove: {e}");
                }
                if self.vms.get(&vm.name).is_some_and(|l| l.create_index == vm.incarnation) {
                    self.vms.remove(&vm.name);
                }
                None
            }
            Cleanup::Legacy(name, fate) => {
                tracing::info!(vm = %name, ?fate, "settling a VM directory from before incarnations");
                match self.driver.settle_legacy(&name, fate).await {
                    Ok(()) => Some(name),
                    Err(e) => {
                        tracing::warn!(vm = %name, "cannot settle its directory from before incarnations: {e}");
                        None
                    }
                }
            }
        }
    }

    async fn one(&mut self, rec: &VmRecord) {
        let name = rec.spec.name.clone();
        let vm = instance_of(rec);
        let mut local = self.vms.remove(&name).unwrap_or_default();
        if local.create_index != rec.placed_index {
            // First sight (e.g. after a daemon restart) or a new incarnation of this name: start
            // from what this node last reported through Raft, so a restart already done is not
            // done again and the counters carry on.
            local = Local { create_index: rec.placed_index, ..Default::default() };
            if let Some(o) = &rec.observed {
                local.restarts = o.restarts;
                local.generation_done = o.restart_generation;
                local.last_exit = o.last_exit.clone();
                local.started_here = o.pid.is_some();
            }
        }
        let obs = match self.driver.status(&vm).await {
            Ok(o) => o,
            Err(e) => {
                local.error = Some(format!("cannot read status: {e}"));
                VmObserved::not_found(&vm)
            }
        };
        if obs.state == VmState::Running && obs.boot_ms.is_some() {
            self.check_health(rec, &mut local).await;
        }
        let obs = if local.unhealthy.is_some() && obs.state == VmState::Running {
            self.driver.status(&vm).await.unwrap_or(obs)
        } else {
            obs
        };
        let fenced = self.lease.was_fenced(&vm);
        if fenced && obs.state != VmState::Stopped {
            self.lease.forget_fenced(&vm);
        }
        let seen = match &obs.state {
            VmState::NotFound => Seen::Absent,
            VmState::Running => Seen::Running,
            _ if local.unhealthy.is_some() => Seen::Failed,
            // Killed by fencing: a failure, not the guest's own power-off.
            VmState::Stopped if fenced => Seen::Failed,
            VmState::Stopped => Seen::Stopped { on_its_own: local.started_here && !local.stopped_by_us },
            VmState::Failed(_) => Seen::Failed,
        };
        if seen == Seen::Running && local.started_at.is_some_and(|t| t.elapsed() > STABLE_AFTER) {
            local.streak = 0;
        }
        let restart_requested = rec.restart_generation > local.generation_done;
        let action = decide(wanted(rec), rec.spec.restart_policy, seen, restart_requested);
        let automatic = matches!(seen, Seen::Failed | Seen::Stopped { on_its_own: true }) && action == Action::Start;
        if matches!(seen, Seen::Failed | Seen::Stopped { on_its_own: true }) {
            let why = match (&local.unhealthy, &obs.state) {
                (Some(u), _) => Some(u.clone()),
                (None, VmState::Stopped) if fenced => Some("fenced: this node lost its lease".to_string()),
                (None, VmState::Failed(r)) => Some(r.clone()),
                (None, _) => obs.exit_reason.clone(),
            };
            if why.is_some() {
                local.last_exit = why;
            }
        }
        let waiting = automatic && local.not_before.is_some_and(|t| Instant::now() < t);
        if !waiting {
            // Why it is restarted, for the metrics.
            let reason = match (&local.unhealthy, &obs.state) {
                (Some(_), _) => "unhealthy",
                (None, VmState::Stopped) if fenced => "fenced",
                (None, VmState::Failed(_)) => "failed",
                _ => "exited",
            };
            self.act(rec, &mut local, action, automatic.then_some(reason)).await;
        }
        let obs = self.driver.status(&vm).await.unwrap_or(obs);
        if let Some(ms) = obs.boot_ms.filter(|_| local.boot_pending && obs.state == VmState::Running) {
            local.boot_pending = false;
            tracing::info!(vm = %name, boot_ms = ms, "guest booted");
            self.work.booted(ms);
        }
        self.report(rec, &mut local, &obs).await;
        self.vms.insert(name, local);
    }

    /// Runs the VM's health check when due; `threshold` failures in a row stop the VM and mark
    /// it unhealthy, so the restart policy decides what happens next.
    async fn check_health(&self, rec: &VmRecord, local: &mut Local) {
        let Some(h) = &rec.spec.health else { return };
        let now = Instant::now();
        if local.next_check.is_some_and(|t| now < t) {
            return;
        }
        let interval = Duration::from_millis(u64::from(h.interval_ms));
        local.next_check = Some(now + interval);
        let Some(port) = rec.spec.host_port_for(h.guest_port) else { return };
        match crate::health::probe(&h.kind, port, interval.min(Duration::from_secs(2))).await {
            Ok(()) => local.health_failures = 0,
            Err(e) => {
                self.work.health_check_failed();
                local.health_failures += 1;
                tracing::debug!(vm = %rec.spec.name, failures = local.health_failures, "health check failed: {e}");
                if local.health_failures >= h.threshold {
                    let why = format!("unhealthy: {} health checks failed in a row (last: {e})", local.health_failures);
                    tracing::warn!(vm = %rec.spec.name, "{why}; stopping it");
                    local.stopped_by_us = true;
                    let r = self.driver.stop(&instance_of(rec), STOP_TIMEOUT).await;
                    self.work.action("stop", r.is_ok());
                    if let Err(e) = r {
                        tracing::warn!(vm = %rec.spec.name, "stopping the unhealthy VM failed: {e}");
                    }
                    local.last_exit = Some(why.clone());
                    local.unhealthy = Some(why);
                    local.health_failures = 0;
                }
            }
        }
    }

    /// Carries out `action`; `automatic` is the reason of a restart per the restart policy.
    async fn act(&self, rec: &VmRecord, local: &mut Local, action: Action, automatic: Option<&'static str>) {
        let name = &rec.spec.name;
        let vm = instance_of(rec);
        let result = match action {
            Action::Nothing => return,
            Action::Stop => {
                local.stopped_by_us = true;
                let r = self.driver.stop(&vm, STOP_TIMEOUT).await;
                self.work.action("stop", r.is_ok());
                r.map(|how| tracing::info!(vm = %name, ?how, "stopped"))
            }
            Action::Start | Action::Restart if !self.lease.valid(self.raft.status().applied) => {
                local.error = Some("fenced: waiting for a lease from the leader before starting it".into());
                return;
            }
            // The pass read its records before this node held the lease (and had applied what the
            // lease needs): the VM may have been moved away or deleted since. Start it only if the
            // state now, read after the lease check, still puts this instance here.
            Action::Start | Action::Restart if !self.still_here(rec) => return,
            Action::Start | Action::Restart => {
                let what = if action == Action::Restart { "restart" } else { "start" };
                if action == Action::Restart {
                    self.work.restart("requested");
                    local.stopped_by_us = true;
                    if let Err(e) = self.driver.stop(&vm, STOP_TIMEOUT).await {
                        self.work.action(what, false);
                        local.error = Some(format!("restart: stop failed: {e}"));
                        return;
                    }
                    local.generation_done = rec.restart_generation;
                }
                if let Some(avail) = available_memory_mib() {
                    if avail < u64::from(rec.spec.memory_mib) {
                        local.error = Some(format!(
                            "not enough host memory to start: needs {} MiB, {avail} MiB available",
                            rec.spec.memory_mib
                        ));
                        local.not_before = Some(Instant::now() + Duration::from_secs(5));
                        self.work.action(what, false);
                        return;
                    }
                }
                if let Some(reason) = automatic {
                    self.work.restart(reason);
                    local.streak += 1;
                    local.restarts += 1;
                    local.not_before = Some(Instant::now() + Duration::from_millis(backoff_ms(local.streak + 1)));
                    tracing::info!(vm = %name, restarts = local.restarts, "restarting per policy {}", rec.spec.restart_policy);
                }
                local.stopped_by_us = false;
                local.generation_done = local.generation_done.max(rec.restart_generation);
                // Each step timed for the log (where a VM's start time goes, e.g. after a move).
                let t0 = Instant::now();
                let prepared = self.driver.prepare(&vm, &rec.spec).await;
                let prepare_ms = t0.elapsed().as_millis() as u64;
                let r = match prepared {
                    Ok(()) => self.driver.start(&vm).await,
                    Err(e) => Err(e),
                };
                let start_ms = (t0.elapsed().as_millis() as u64).saturating_sub(prepare_ms);
                self.work.action(what, r.is_ok());
                if r.is_ok() {
                    local.boot_pending = true;
                    local.unhealthy = None;
                    local.health_failures = 0;
                    local.next_check = None;
                    local.started_here = true;
                    local.started_at = Some(Instant::now());
                    tracing::info!(vm = %name, prepare_ms, start_ms, "started");
                }
                r
            }
        };
        match result {
            Ok(()) => local.error = None,
            Err(e) => {
                tracing::warn!(vm = %name, "{action:?} failed: {e}");
                local.error = Some(format!("{action:?} failed: {e}").to_lowercase());
                if local.not_before.is_none() {
                    local.not_before = Some(Instant::now() + Duration::from_millis(backoff_ms(1)));
                }
            }
        }
    }

    async fn report(&self, rec: &VmRecord, local: &mut Local, obs: &VmObserved) {
        let (phase, mut reason) = match &obs.state {
            VmState::Running if obs.boot_ms.is_some() => (Phase::Running, None),
            VmState::Running => (Phase::Starting, None),
            VmState::Stopped => (Phase::Stopped, obs.exit_reason.clone()),
            VmState::Failed(r) => (Phase::Failed, Some(r.clone())),
            VmState::NotFound if wanted(rec) == PowerState::Running => (Phase::Pending, None),
            VmState::NotFound => (Phase::Stopped, None),
        };
        let phase = match (&local.unhealthy, phase) {
            (Some(why), Phase::Stopped) => {
                reason = Some(why.clone());
                Phase::Failed
            }
            (_, p) => p,
        };
        if let Some(e) = &local.error {
            reason = Some(e.clone());
        }
        let o = Observed {
            phase,
            reason,
            pid: obs.pid,
            boot_ms: obs.boot_ms,
            started_at_ms: obs.started_at_ms,
            restarts: local.restarts,
            restart_generation: local.generation_done,
            accel: obs.accel.map(|a| a.to_string()).or_else(|| Some(self.accel.clone())),
            last_exit: local.last_exit.clone(),
            reported_at_ms: 0,
        };
        if local.last_report.as_ref() == Some(&o) {
            return;
        }
        let cmd = Command::VmReport {
            name: rec.spec.name.clone(),
            incarnation: rec.placed_index,
            node: self.id,
            observed: o.clone(),
        };
        match crate::internal::propose(&self.raft, cmd).await {
            Ok((_, Ok(_))) => local.last_report = Some(o),
            Ok((_, Err(e))) => tracing::debug!(vm = %rec.spec.name, "report refused: {e}"),
            Err(s) => tracing::debug!(vm = %rec.spec.name, "report not accepted yet: {}", s.message()),
        }
    }
}
