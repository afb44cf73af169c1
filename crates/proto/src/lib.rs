//! The `blixard.v1` gRPC API: generated code plus conversions to and from core types.
//!
//! Conversions from the wire are where untrusted input becomes core types: a bad field becomes a
//! [`ValidationError`] naming it, never a panic.

#[cfg(not(madsim))]
mod codec;

pub mod v1 {
    #[cfg(madsim)]
    tonic::include_proto!("blixard.v1");
    // Messages and clients, then the servers (with their own codec; see build.rs).
    #[cfg(not(madsim))]
    include!(concat!(env!("OUT_DIR"), "/blixard.v1.rs"));
    #[cfg(not(madsim))]
    include!(concat!(env!("OUT_DIR"), "/servers/blixard.v1.rs"));
}

pub mod orchestration;
pub mod rpc;
pub mod tasks;

use std::collections::BTreeMap;

/// The largest gRPC message either end sends or accepts, set explicitly on the node's services
/// and on its clients (the CLI's, and a follower's when it forwards) so that both ends agree:
/// tonic's default decoding limit, 4 MiB. The largest message is a list page (below) or a put
/// of a 1 KiB key and a 1 MiB value, each well under it.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// The most items one list page holds (`limit` in a list request; 0 there means 1000).
pub const MAX_LIST_LIMIT: u32 = 10_000;

/// Key and value bytes in one `kv list` page: two pairs of the largest size (1 KiB + 1 MiB)
/// fit. A page is at most this or its one pair, plus ~10 bytes of framing per pair (at most
/// 10,000 pairs, ~100 KiB) and the continuation key: ~2.6 MiB, far from [`MAX_MESSAGE_BYTES`].
pub const KV_PAGE_BYTES: usize = 2560 << 10;

/// Stored (postcard) bytes of VM records in one `vm list` page. A record's protobuf encoding
/// is at most twice its stored size (a tag per field, phases spelled out; tested below), so a
/// page is at most ~2 MiB plus a few bytes of framing per record; one record is at most ~40 KiB.
pub const VM_PAGE_BYTES: usize = 1 << 20;

use blixard_core::{HealthCheck, HealthKind, Observed, PortForward, RestartPolicy, ValidationError, VmRecord, VmSpec};

fn port(field: &str, v: u32) -> Result<u16, ValidationError> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| ValidationError::new(field, format!("must be a port between 1 and 65535 (got {v})")))
}

fn opt(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

impl TryFrom<v1::VmSpec> for VmSpec {
    type Error = ValidationError;

    fn try_from(s: v1::VmSpec) -> Result<Self, ValidationError> {
        let ports = s
            .ports
            .iter()
            .map(|p| Ok(PortForward { host: port("ports", p.host)?, guest: port("ports", p.guest)? }))
            .collect::<Result<Vec<_>, ValidationError>>()?;
        Ok(VmSpec {
            name: s.name,
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            disk_gib: s.disk_gib,
            kernel: opt(s.kernel),
            initrd: opt(s.initrd),
            rootfs: opt(s.rootfs),
            cmdline: opt(s.cmdline),
            ports,
            labels: s.labels.into_iter().collect::<BTreeMap<_, _>>(),
            restart_policy: RestartPolicy::parse(&s.restart_policy)?,
            health: s.health.map(health_from_wire).transpose()?,
            placement: orchestration::placement_from_wire(s.placement)?,
        })
    }
}

fn health_from_wire(h: v1::HealthCheck) -> Result<HealthCheck, ValidationError> {
    let kind = match h.kind.as_str() {
        "tcp" => HealthKind::Tcp,
        "http" => HealthKind::Http { path: if h.path.is_empty() { "/".into() } else { h.path } },
        other => {
            return Err(ValidationError::new(
                "health",
                format!("kind must be tcp or http (got {})", blixard_core::quoted(other)),
            ))
        }
    };
    Ok(HealthCheck { kind, guest_port: port("health", h.port)?, interval_ms: h.interval_ms, threshold: h.threshold })
}

fn health_to_wire(h: HealthCheck) -> v1::HealthCheck {
    let (kind, path) = match h.kind {
        HealthKind::Tcp => ("tcp", String::new()),
        HealthKind::Http { path } => ("http", path),
    };
    v1::HealthCheck {
        kind: kind.into(),
        port: h.guest_port.into(),
        path,
        interval_ms: h.interval_ms,
        threshold: h.threshold,
    }
}

impl From<VmSpec> for v1::VmSpec {
    fn from(s: VmSpec) -> Self {
        v1::VmSpec {
            name: s.name,
            vcpus: s.vcpus,
            memory_mib: s.memory_mib,
            disk_gib: s.disk_gib,
            kernel: s.kernel.unwrap_or_default(),
            initrd: s.initrd.unwrap_or_default(),
            rootfs: s.rootfs.unwrap_or_default(),
            cmdline: s.cmdline.unwrap_or_default(),
            ports: s.ports.iter().map(|p| v1::PortForward { host: p.host.into(), guest: p.guest.into() }).collect(),
            labels: s.labels.into_iter().collect(),
            restart_policy: s.restart_policy.as_str().to_string(),
            health: s.health.map(health_to_wire),
            placement: orchestration::placement_to_wire(s.placement),
        }
    }
}

impl From<Observed> for v1::VmObserved {
    fn from(o: Observed) -> Self {
        v1::VmObserved {
            phase: o.phase.as_str().into(),
            reason: o.reason.unwrap_or_default(),
            pid: o.pid,
            boot_ms: o.boot_ms,
            started_at_ms: o.started_at_ms,
            restarts: o.restarts,
            accel: o.accel.unwrap_or_default(),
            reported_at_ms: o.reported_at_ms,
            last_exit: o.last_exit.unwrap_or_default(),
        }
    }
}

impl From<VmRecord> for v1::Vm {
    fn from(r: VmRecord) -> Self {
        v1::Vm {
            spec: Some(r.spec.into()),
            created_at_ms: r.created_at_ms,
            create_index: r.create_index,
            desired: r.desired.as_str().into(),
            node: r.node.unwrap_or(0),
            restart_generation: r.restart_generation,
            observed: r.observed.map(Into::into),
            placed_index: r.placed_index,
            pending: r.pending.unwrap_or_default(),
            handoff_from: r.handoff_from.unwrap_or(0),
            lost: r.lost,
            fresh_disk: r.fresh_disk,
            events: r.events.into_iter().map(Into::into).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_the_wire_type() {
        let spec = VmSpec {
            name: "web".into(),
            vcpus: 2,
            memory_mib: 256,
            disk_gib: Some(4),
            kernel: Some("/k".into()),
            cmdline: Some("quiet".into()),
            ports: vec![PortForward { host: 8080, guest: 80 }],
            labels: BTreeMap::from([("tier".into(), "web".into())]),
            restart_policy: RestartPolicy::Always,
            health: Some(HealthCheck {
                kind: HealthKind::Http { path: "/healthz".into() },
                guest_port: 80,
                interval_ms: 500,
                threshold: 2,
            }),
            ..Default::default()
        };
        let wire: v1::VmSpec = spec.clone().into();
        assert_eq!(VmSpec::try_from(wire), Ok(spec));
    }

    /// What [`VM_PAGE_BYTES`] relies on: a record's protobuf encoding is at most twice its
    /// stored size, also for records of nothing but tiny fields (the worst ratio).
    #[test]
    fn a_vm_record_on_the_wire_is_at_most_twice_its_stored_size() {
        let small = VmRecord {
            spec: VmSpec { name: "a".into(), vcpus: 1, memory_mib: 64, ..Default::default() },
            created_at_ms: 1_700_000_000_000,
            create_index: 1,
            desired: blixard_core::PowerState::Running,
            node: Some(1),
            placed_index: 1,
            restart_generation: 0,
            observed: None,
            pending: None,
            handoff_from: None,
            lost: false,
            fresh_disk: false,
            events: Vec::new(),
        };
        let mut tiny_fields = small.clone();
        tiny_fields.spec.ports = (1..=32).map(|p| PortForward { host: p, guest: 1 }).collect();
        tiny_fields.spec.labels = (0..64).map(|i| (format!("{}", i % 10), String::new())).collect();
        tiny_fields.spec.labels.extend((0..54).map(|i| (format!("k{i}"), String::new())));
        tiny_fields.observed =
            Some(Observed { phase: blixard_core::Phase::Running, pid: Some(1), ..Default::default() });
        let mut observed = small.clone();
        observed.observed = Some(Observed {
            phase: blixard_core::Phase::Stopped,
            reason: Some("r".into()),
            pid: Some(1),
            boot_ms: Some(1),
            started_at_ms: Some(1),
            restarts: 1,
            restart_generation: 1,
            accel: Some("t".into()),
            last_exit: Some("e".into()),
            reported_at_ms: 1,
        });
        let mut big = tiny_fields.clone();
        big.spec.kernel = Some("k".repeat(4096));
        big.spec.cmdline = Some("c".repeat(2048));
        for r in [small, observed, tiny_fields, big] {
            let stored = postcard::to_stdvec(&r).unwrap().len();
            let wire = prost::Message::encoded_len(&v1::Vm::from(r.clone()));
            assert!(wire <= 2 * stored, "{wire} > 2 × {stored} for {r:?}");
        }
    }

    #[test]
    fn out_of_range_ports_and_policies_name_their_field() {
        let mut w = v1::VmSpec { name: "a".into(), ..Default::default() };
        w.ports = vec![v1::PortForward { host: 70000, guest: 80 }];
        assert_eq!(VmSpec::try_from(w.clone()).unwrap_err().field, "ports");
        w.ports.clear();
        w.restart_policy = "maybe".into();
        assert_eq!(VmSpec::try_from(w).unwrap_err().field, "restart_policy");
    }
}
