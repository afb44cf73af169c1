//! The JSON shapes (documented in README) and tables of VMs, plans and events.

use std::collections::BTreeMap;

use blixard_proto::v1;
use serde::Serialize;

use crate::output::Table;

#[derive(Serialize)]
struct PortOut {
    host: u32,
    guest: u32,
}

/// The JSON shape of a VM (documented in README).
#[derive(Serialize)]
pub struct VmOut {
    name: String,
    vcpus: u32,
    memory_mib: u32,
    disk_gib: Option<u32>,
    kernel: Option<String>,
    initrd: Option<String>,
    rootfs: Option<String>,
    cmdline: Option<String>,
    ports: Vec<PortOut>,
    labels: BTreeMap<String, String>,
    restart_policy: String,
    created_at_ms: u64,
    create_index: u64,
    desired: String,
    /// `null` while it is pending.
    pub node: Option<u64>,
    placed_index: u64,
    pending: Option<String>,
    handoff_from: Option<u64>,
    lost: bool,
    fresh_disk: bool,
    placement: PlacementOut,
    restart_generation: u64,
    pub observed: Option<ObservedOut>,
    pub events: Vec<EventOut>,
}

#[derive(Serialize)]
pub struct PlacementOut {
    constraints: Vec<String>,
    require: Vec<String>,
    group: Option<String>,
    hard: bool,
    spread: Option<String>,
    strategy: String,
    on_node_loss: String,
}

#[derive(Serialize)]
pub struct EventOut {
    pub at_ms: u64,
    pub index: u64,
    pub what: String,
}

/// The JSON shape of a VM's observed state (documented in README).
#[derive(Serialize)]
pub struct ObservedOut {
    pub phase: String,
    pub reason: Option<String>,
    pid: Option<u32>,
    boot_ms: Option<u64>,
    started_at_ms: Option<u64>,
    restarts: u32,
    accel: Option<String>,
    last_exit: Option<String>,
    reported_at_ms: u64,
}

fn opt(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

pub fn vm_out(v: v1::Vm) -> VmOut {
    let s = v.spec.unwrap_or_default();
    let p = s.placement.unwrap_or_default();
    let or = |x: String, d: &str| if x.is_empty() { d.to_string() } else { x };
    VmOut {
        name: s.name,
        vcpus: s.vcpus,
        memory_mib: s.memory_mib,
        disk_gib: s.disk_gib,
        kernel: opt(s.kernel),
        initrd: opt(s.initrd),
        rootfs: opt(s.rootfs),
        cmdline: opt(s.cmdline),
        ports: s.ports.into_iter().map(|p| PortOut { host: p.host, guest: p.guest }).collect(),
        labels: s.labels.into_iter().collect(),
        restart_policy: s.restart_policy,
        created_at_ms: v.created_at_ms,
        create_index: v.create_index,
        desired: v.desired,
        node: Some(v.node).filter(|n| *n != 0),
        placed_index: v.placed_index,
        pending: opt(v.pending),
        handoff_from: Some(v.handoff_from).filter(|n| *n != 0),
        lost: v.lost,
        fresh_disk: v.fresh_disk,
        placement: PlacementOut {
            constraints: p.constraints,
            require: p.require,
            group: opt(p.group),
            hard: p.hard,
            spread: opt(p.spread),
            strategy: or(p.strategy, "binpack"),
            on_node_loss: or(p.on_node_loss, "restart-elsewhere"),
        },
        restart_generation: v.restart_generation,
        events: v.events.into_iter().map(|e| EventOut { at_ms: e.at_ms, index: e.index, what: e.what }).collect(),
        observed: v.observed.map(|o| ObservedOut {
            phase: o.phase,
            reason: opt(o.reason),
            pid: o.pid,
            boot_ms: o.boot_ms,
            started_at_ms: o.started_at_ms,
            restarts: o.restarts,
            accel: opt(o.accel),
            last_exit: opt(o.last_exit),
            reported_at_ms: o.reported_at_ms,
        }),
    }
}

pub fn table(vms: &[VmOut]) -> Table {
    let mut t =
        Table::new(vec!["NAME", "NODE", "DESIRED", "OBSERVED", "VCPUS", "MEMORY", "PORTS", "RESTART", "REASON"]);
    for v in vms {
        let ports: Vec<String> = v.ports.iter().map(|p| format!("{}:{}", p.host, p.guest)).collect();
        let (phase, reason) = match (&v.observed, &v.pending) {
            (_, Some(why)) => ("pending".to_string(), why.clone()),
            _ if v.lost => ("lost".to_string(), "its node was lost (restart policy never)".into()),
            (None, None) => ("pending".to_string(), String::new()),
            (Some(o), None) => (o.phase.clone(), o.reason.clone().unwrap_or_default()),
        };
        t = t.row(vec![
            v.name.clone(),
            v.node.map_or("-".into(), |n| n.to_string()),
            v.desired.clone(),
            phase,
            v.vcpus.to_string(),
            format!("{} MiB", v.memory_mib),
            if ports.is_empty() { "-".into() } else { ports.join(",") },
            v.restart_policy.clone(),
            reason,
        ]);
    }
    t
}

/// The measured usage of a VM's process, or of the VMs of a node (documented in README).
#[derive(Serialize)]
pub struct UsageOut {
    /// VMs measured (a node's usage only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vms: Option<u32>,
    pub cpu_seconds: f64,
    pub memory_rss_bytes: u64,
}

/// `vm get`'s JSON shape: the VM, and its process's usage measured on its node now.
#[derive(Serialize)]
pub struct VmGetOut {
    #[serde(flatten)]
    pub vm: VmOut,
    /// `null` when it does not run, or could not be measured (`usage_unavailable` says why).
    pub usage: Option<UsageOut>,
    pub usage_unavailable: Option<String>,
}

pub fn vm_get_out(r: v1::GetVmResponse) -> VmGetOut {
    VmGetOut {
        vm: vm_out(r.vm.unwrap_or_default()),
        usage: r.usage.map(|u| UsageOut {
            vms: None,
            cpu_seconds: u.cpu_seconds,
            memory_rss_bytes: u.memory_rss_bytes,
        }),
        usage_unavailable: opt(r.usage_unavailable),
    }
}

/// Bytes in binary units, e.g. `118.4 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The CPU and RSS cells of a usage: `-` when there is none, `?` when it could not be measured.
pub fn usage_cells(u: Option<&UsageOut>, unavailable: Option<&String>) -> [String; 2] {
    match (u, unavailable) {
        (Some(u), _) => [format!("{:.2} s", u.cpu_seconds), bytes(u.memory_rss_bytes)],
        (None, Some(_)) => ["?".into(), "?".into()],
        (None, None) => ["-".into(), "-".into()],
    }
}

/// `vm get`'s table: the VM's row with its usage (and why it is unknown, below).
pub fn get_table(v: &VmGetOut) -> Table {
    let mut t = table(std::slice::from_ref(&v.vm));
    t.header.extend(["CPU", "RSS"]);
    if let Some(r) = t.rows.first_mut() {
        r.extend(usage_cells(v.usage.as_ref(), v.usage_unavailable.as_ref()));
    }
    if let Some(why) = &v.usage_unavailable {
        let mut note = vec![String::new(); t.header.len()];
        note[0] = format!("(usage unknown: {why})");
        t.rows.push(note);
    }
    t
}

/// The JSON shape of a plan (`vm explain`, `vm create --dry-run`).
#[derive(Serialize)]
pub struct PlanOut {
    /// The node it goes (or would go) to, `null` if none can take it.
    pub chosen: Option<u64>,
    pub nodes: Vec<VerdictOut>,
}

#[derive(Serialize)]
pub struct VerdictOut {
    pub node: u64,
    pub feasible: bool,
    pub score: Option<f64>,
    pub stage: Option<String>,
    pub reason: Option<String>,
}

pub fn plan_out(p: v1::Plan) -> PlanOut {
    PlanOut {
        chosen: Some(p.chosen).filter(|c| *c != 0),
        nodes: p
            .nodes
            .into_iter()
            .map(|n| VerdictOut {
                node: n.node,
                feasible: n.feasible,
                score: n.feasible.then_some((n.score * 1000.0).round() / 1000.0),
                stage: opt(n.stage),
                reason: opt(n.reason),
            })
            .collect(),
    }
}

pub fn plan_table(p: &PlanOut) -> Table {
    let mut t = Table::new(vec!["NODE", "FEASIBLE", "SCORE", "STAGE", "REASON"]);
    for n in &p.nodes {
        let chosen = if p.chosen == Some(n.node) { " (chosen)" } else { "" };
        t = t.row(vec![
            format!("{}{chosen}", n.node),
            if n.feasible { "yes" } else { "no" }.into(),
            n.score.map_or("-".into(), |s| format!("{s:.3}")),
            n.stage.clone().unwrap_or_else(|| "-".into()),
            n.reason.clone().unwrap_or_default(),
        ]);
    }
    t
}

pub fn events_table(events: &[EventOut]) -> Table {
    let mut t = Table::new(vec!["INDEX", "AT_MS", "WHAT"]);
    for e in events {
        t = t.row(vec![e.index.to_string(), e.at_ms.to_string(), e.what.clone()]);
    }
    t
}
