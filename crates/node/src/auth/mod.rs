//! Who may call what: roles, tokens, rate limits and the audit log, enforced in one tower layer
//! ([`layer`]) around every gRPC service of the node, never in a handler.
//!
//! Every method of the API has one entry in [`METHODS`]: the role it needs and whether it
//! changes anything (audited, and its request bytes count against the write limit). A method
//! missing from the table is refused. The roles rank `viewer < operator < admin`; a node (by
//! its certificate) may call everything. [`Need::Peer`] methods are for nodes only: with mTLS
//! they need a node certificate, on a plaintext port they stay open as before (a plaintext
//! port trusts its network; see SECURITY.md).
//!
//! Enforcement is on when the node runs with `--auth`; without it every request passes (but is
//! still rate-limited and audited, under the caller's token name if it sent a valid one).

#[cfg(not(madsim))]
pub mod audit;
#[cfg(not(madsim))]
pub mod layer;
pub mod limits;
#[cfg(not(madsim))]
pub mod secret;

/// What a method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Viewer,
    Operator,
    Admin,
    /// Cluster nodes only (Raft transport, liveness heartbeats, a member's own status).
    Peer,
}

impl Need {
    /// The rank a role must reach (`None` for [`Need::Peer`]).
    pub fn rank(self) -> Option<u8> {
        match self {
            Need::Viewer => Some(0),
            Need::Operator => Some(1),
            Need::Admin => Some(2),
            Need::Peer => None,
        }
    }
}

/// The rank of a role's name (`viewer` 0, `operator` 1, `admin` 2).
pub fn role_rank(role: &str) -> Option<u8> {
    blixard_core::state::tokens::ROLES.iter().position(|r| *r == role).map(|p| p as u8)
}

/// One gRPC method's rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub path: &'static str,
    pub need: Need,
    /// Changes state (or hands out all of it): audited; its bytes count as written.
    pub mutating: bool,
    /// The client streams its request: it is not buffered to be inspected.
    pub client_stream: bool,
}

const fn r(path: &'static str, need: Need, mutating: bool) -> Rule {
    Rule { path, need, mutating, client_stream: false }
}

use Need::*;

/// Every gRPC method the node serves, and the role it needs.
pub const METHODS: &[Rule] = &[
    r("/blixard.v1.ClusterService/Status", Viewer, false),
    r("/blixard.v1.ClusterService/Join", Admin, true),
    r("/blixard.v1.ClusterService/Leave", Admin, true),
    r("/blixard.v1.ClusterService/Local", Peer, false),
    r("/blixard.v1.ClusterService/TransferLeader", Admin, true),
    r("/blixard.v1.KvService/Put", Operator, true),
    r("/blixard.v1.KvService/Get", Viewer, false),
    r("/blixard.v1.KvService/Delete", Operator, true),
    r("/blixard.v1.KvService/List", Viewer, false),
    r("/blixard.v1.VmService/CreateVm", Operator, true),
    r("/blixard.v1.VmService/GetVm", Viewer, false),
    r("/blixard.v1.VmService/ListVms", Viewer, false),
    r("/blixard.v1.VmService/DeleteVm", Operator, true),
    r("/blixard.v1.VmService/StartVm", Operator, true),
    r("/blixard.v1.VmService/StopVm", Operator, true),
    r("/blixard.v1.VmService/RestartVm", Operator, true),
    r("/blixard.v1.VmService/VmLogs", Viewer, false),
    r("/blixard.v1.VmService/Explain", Viewer, false),
    Rule { path: "/blixard.v1.VmService/VmConsole", need: Operator, mutating: true, client_stream: true },
    r("/blixard.v1.BackupService/Save", Admin, true),
    r("/blixard.v1.NodeService/ListNodes", Viewer, false),
    r("/blixard.v1.NodeService/GetNode", Viewer, false),
    r("/blixard.v1.NodeService/Drain", Operator, true),
    r("/blixard.v1.NodeService/SetEligibility", Operator, true),
    r("/blixard.v1.NodeService/Heartbeat", Peer, false),
    Rule { path: "/blixard.v1.NodeService/Heartbeats", need: Peer, mutating: false, client_stream: true },
    r("/blixard.v1.NodeService/Usage", Viewer, false),
    r("/blixard.v1.NodeService/RegisterSimulatedNodes", Admin, true),
    r("/blixard.v1.TaskService/SubmitTask", Operator, true),
    r("/blixard.v1.TaskService/GetTask", Viewer, false),
    r("/blixard.v1.TaskService/ListTasks", Viewer, false),
    r("/blixard.v1.TaskService/CancelTask", Operator, true),
    r("/blixard.v1.TaskService/PruneTasks", Operator, true),
    r("/blixard.v1.TaskService/TaskLogs", Viewer, false),
    r("/blixard.v1.TaskService/WaitTask", Viewer, false),
    r("/blixard.v1.TokenService/CreateToken", Admin, true),
    r("/blixard.v1.TokenService/ListTokens", Admin, false),
    r("/blixard.v1.TokenService/RevokeToken", Admin, true),
    Rule { path: "/blixard.v1.RaftTransport/InstallSnapshot", need: Peer, mutating: false, client_stream: true },
];

/// The rule of a gRPC path, if it names a method of ours.
pub fn rule(path: &str) -> Option<&'static Rule> {
    rule_index(path).map(|i| &METHODS[i])
}

/// The index in [`METHODS`] of a gRPC path's rule: one hash lookup (every request asks, twice).
pub fn rule_index(path: &str) -> Option<usize> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<&'static str, usize>> = std::sync::OnceLock::new();
    INDEX.get_or_init(|| METHODS.iter().enumerate().map(|(i, m)| (m.path, i)).collect()).get(path).copied()
}

/// Authorization and admission settings (`blixard node --auth`, `--rate-*`, `--max-concurrent`).
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Refuse requests without a sufficient role.
    pub enforce: bool,
    pub rates: limits::Rates,
    /// Where audit lines go (`--audit-log`); `None`: `<data-dir>/audit.log`.
    pub audit_log: Option<std::path::PathBuf>,
    /// No audit log at all (`--audit-log off`).
    pub audit_off: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/package.Service/Method` for every rpc of a .proto file.
    fn proto_methods(package: &str, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let (Some(rest), Some(s)) = (line.strip_prefix("rpc "), &service) {
                let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                out.push(format!("/{package}.{s}/{name}"));
            }
        }
        out
    }

    #[test]
    fn every_method_of_the_protos_has_exactly_one_rule() {
        let api = include_str!("../../../proto/proto/blixard/v1/api.proto");
        let raft = include_str!("../../../proto/proto/blixard/v1/raft.proto");
        let mut all = proto_methods("blixard.v1", api);
        all.extend(proto_methods("blixard.v1", raft));
        assert!(all.len() > 20, "the proto parser found too few methods: {all:?}");
        for m in &all {
            assert_eq!(METHODS.iter().filter(|r| r.path == m).count(), 1, "{m} needs exactly one rule");
        }
        for r in METHODS {
            assert!(all.iter().any(|m| m == r.path), "{} is in the table but not in the protos", r.path);
        }
    }

    #[test]
    fn the_table_ranks_reads_writes_and_membership() {
        assert_eq!(rule("/blixard.v1.KvService/Get").unwrap().need, Viewer);
        assert_eq!(rule("/blixard.v1.KvService/Put").unwrap().need, Operator);
        assert_eq!(rule("/blixard.v1.ClusterService/Leave").unwrap().need, Admin);
        assert_eq!(rule("/blixard.v1.ClusterService/TransferLeader").unwrap().need, Admin);
        assert_eq!(rule("/blixard.v1.RaftTransport/InstallSnapshot").unwrap().need, Peer);
        assert!(rule("/blixard.v1.KvService/Nope").is_none());
        // Nothing that changes state escapes the audit log.
        for r in METHODS {
            if matches!(r.need, Operator | Admin) && !r.path.ends_with("/ListTokens") {
                assert!(r.mutating, "{} needs a write role but is not audited", r.path);
            }
        }
        assert_eq!(role_rank("viewer"), Some(0));
        assert_eq!(role_rank("admin"), Some(2));
        assert_eq!(role_rank("root"), None);
    }
}
