//! Conversions for placement, nodes and plans (issue 13's types) between the wire and core.

use blixard_core::placement::{Constraint, OnNodeLoss, PlacementSpec, Strategy};
use blixard_core::scheduler::{Plan, Verdict};
use blixard_core::{NodeRecord, ValidationError, VmEvent};

use crate::v1;

pub fn placement_from_wire(p: Option<v1::Placement>) -> Result<PlacementSpec, ValidationError> {
    let Some(p) = p else { return Ok(PlacementSpec::default()) };
    let constraints = p.constraints.iter().map(|c| Constraint::parse(c)).collect::<Result<Vec<_>, _>>()?;
    let strategy = match p.strategy.as_str() {
        "" | "binpack" => Strategy::Binpack,
        "spread" => Strategy::Spread,
        other => {
            return Err(ValidationError::new(
                "strategy",
                format!("must be binpack or spread (got {})", blixard_core::quoted(other)),
            ))
        }
    };
    let on_node_loss = match p.on_node_loss.as_str() {
        "" | "restart-elsewhere" => OnNodeLoss::RestartElsewhere,
        "wait" => OnNodeLoss::Wait,
        other => {
            return Err(ValidationError::new(
                "on_node_loss",
                format!("must be restart-elsewhere or wait (got {})", blixard_core::quoted(other)),
            ))
        }
    };
    Ok(PlacementSpec {
        constraints,
        require: p.require,
        group: Some(p.group).filter(|g| !g.is_empty()),
        hard: p.hard,
        spread: Some(p.spread).filter(|s| !s.is_empty()),
        strategy,
        on_node_loss,
    })
}

pub fn placement_to_wire(p: PlacementSpec) -> Option<v1::Placement> {
    if p == PlacementSpec::default() {
        return None;
    }
    Some(v1::Placement {
        constraints: p.constraints.iter().map(ToString::to_string).collect(),
        require: p.require,
        group: p.group.unwrap_or_default(),
        hard: p.hard,
        spread: p.spread.unwrap_or_default(),
        strategy: match p.strategy {
            Strategy::Binpack => "binpack",
            Strategy::Spread => "spread",
        }
        .into(),
        on_node_loss: match p.on_node_loss {
            OnNodeLoss::RestartElsewhere => "restart-elsewhere",
            OnNodeLoss::Wait => "wait",
        }
        .into(),
    })
}

impl From<VmEvent> for v1::VmEvent {
    fn from(e: VmEvent) -> Self {
        v1::VmEvent { at_ms: e.at_ms, index: e.index, what: e.what }
    }
}

impl From<Plan> for v1::Plan {
    fn from(p: Plan) -> Self {
        v1::Plan {
            chosen: p.chosen.unwrap_or(0),
            nodes: p
                .nodes
                .into_iter()
                .map(|(node, v)| match v {
                    Verdict::Feasible { score } => {
                        v1::NodeVerdict { node, feasible: true, score, stage: String::new(), reason: String::new() }
                    }
                    Verdict::Rejected(r) => v1::NodeVerdict {
                        node,
                        feasible: false,
                        score: 0.0,
                        stage: r.stage().into(),
                        reason: r.to_string(),
                    },
                })
                .collect(),
        }
    }
}

/// A node record on the wire; `addr` and `heartbeat_age_ms` come from elsewhere.
pub fn node_to_wire(n: NodeRecord, addr: String, heartbeat_age_ms: Option<u64>) -> v1::NodeInfo {
    v1::NodeInfo {
        id: n.id,
        addr,
        status: n.state.as_str().into(),
        status_since_ms: n.state_since_ms,
        eligible: n.eligible,
        draining: n.drain.is_some(),
        drain_deadline_ms: n.drain.as_ref().map_or(0, |d| d.deadline_ms),
        vcpus: n.vcpus,
        memory_mib: n.memory_mib,
        disk_gib: n.disk_gib,
        used_vcpus: n.used.vcpus,
        used_memory_mib: n.used.memory_mib,
        used_disk_gib: n.used.disk_gib,
        vms: n.used.vms,
        accel: n.accel,
        backend: n.backend,
        labels: n.labels.into_iter().collect(),
        agent_version: n.agent_version,
        heartbeat_age_ms,
        usage: None,
        usage_unavailable: String::new(),
    }
}
