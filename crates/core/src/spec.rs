//! VM specifications and the pure validation rules for them.
//!
//! Each rule has its own unit test. Validation runs at the API edge (to answer fast) and again in
//! [`crate::state::apply`] (so a bad command in the log can never corrupt state).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Bad input: which field, and the rule it broke.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("invalid {field}: {rule}")]
pub struct ValidationError {
    pub field: String,
    pub rule: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        Self { field: field.into(), rule: rule.into() }
    }
}

/// How many characters of a user's value an error message quotes.
pub const QUOTE_CHARS: usize = 64;

/// `s` quoted for an error message, and bounded: a longer value shows its first
/// [`QUOTE_CHARS`] characters, `…` and its length. Input is never echoed whole: the message may
/// travel in an HTTP/2 header (a 100 KB VM name there broke the connection instead of naming
/// the rule), and a reader needs only enough to recognise the value.
pub fn quoted(s: &str) -> String {
    match s.char_indices().nth(QUOTE_CHARS) {
        None => format!("{s:?}"),
        Some((cut, _)) => format!("{:?} ({} bytes)", format!("{}…", &s[..cut]), s.len()),
    }
}

/// What the cluster does when a VM's process exits on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Never,
    #[default]
    OnFailure,
    Always,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Always => "always",
        }
    }

    /// Parses the user-facing spelling; `field` names the field in the error.
    pub fn parse(s: &str) -> Result<Self, ValidationError> {
        match s {
            "never" => Ok(Self::Never),
            "on-failure" | "" => Ok(Self::OnFailure),
            "always" => Ok(Self::Always),
            other => Err(ValidationError::new(
                "restart_policy",
                format!("must be one of never, on-failure, always (got {})", quoted(other)),
            )),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host port forwarded to a guest port (TCP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortForward {
    pub host: u16,
    pub guest: u16,
}

/// What a guest health check probes, through the host port forwarded to `guest_port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers with a 2xx or 3xx status.
    Http { path: String },
}

/// A guest health check: `threshold` failures in a row make the VM unhealthy, which restarts it
/// per its restart policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub kind: HealthKind,
    pub guest_port: u16,
    pub interval_ms: u32,
    pub threshold: u32,
}

pub const HEALTH_INTERVAL_MS: (u32, u32) = (100, 3_600_000);
pub const HEALTH_THRESHOLD: (u32, u32) = (1, 100);

/// The desired shape of a VM, as the user asked for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub disk_gib: Option<u32>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub rootfs: Option<String>,
    pub cmdline: Option<String>,
    pub ports: Vec<PortForward>,
    pub labels: BTreeMap<String, String>,
    pub restart_policy: RestartPolicy,
    pub health: Option<HealthCheck>,
    pub placement: crate::placement::PlacementSpec,
}

/// Whether the user wants the VM running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    Running,
    #[default]
    Stopped,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerState::Running => "running",
            PowerState::Stopped => "stopped",
        }
    }
}

/// What a node last reported about a VM it hosts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    #[default]
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
    /// Its node was lost (see `VmRecord::lost`).
    Lost,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
            Phase::Lost => "lost",
        }
    }
}

/// Observed state, reported by the hosting node's reconciler through Raft.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub phase: Phase,
    /// Why it is in this phase (always set for `Failed`; e.g. the exit reason, a failed check).
    pub reason: Option<String>,
    pub pid: Option<u32>,
    /// From process start to the guest's boot marker.
    pub boot_ms: Option<u64>,
    pub started_at_ms: Option<u64>,
    /// Restarts the reconciler made on its own (per restart policy).
    pub restarts: u32,
    /// The `restart_generation` of the record this report acted on.
    pub restart_generation: u64,
    /// Hypervisor acceleration in use (`kvm` or `tcg`).
    pub accel: Option<String>,
    /// Why it last ended without being asked to (what the last automatic restart answered).
    pub last_exit: Option<String>,
    pub reported_at_ms: u64,
}

/// A VM as recorded in the replicated state: the user's desired state, where the cluster
/// placed it, and what its node last observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub spec: VmSpec,
    /// Proposer's wall clock when the create was proposed, in ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Raft index of the entry that created it; a recreated VM of the same name gets a new one.
    pub create_index: u64,
    pub desired: PowerState,
    /// The node it is placed on; `None` while it waits for capacity (see `pending`).
    pub node: Option<crate::NodeId>,
    /// Raft index of the entry that placed it on its node: the incarnation its node runs (its
    /// directory, disk and process), new whenever it is placed again.
    pub placed_index: u64,
    /// Bumped by `vm restart`: the hosting node restarts the VM once per bump.
    pub restart_generation: u64,
    pub observed: Option<Observed>,
    /// Why no node holds it yet (the scheduler's reasons), while it is pending.
    pub pending: Option<String>,
    /// The node it is moving from: the new node starts it only once that one stopped it.
    pub handoff_from: Option<crate::NodeId>,
    /// Its node was lost and its restart policy is `never`: it will not run again by itself.
    pub lost: bool,
    /// It was moved off its node: the new node starts it from a fresh disk.
    pub fresh_disk: bool,
    /// What happened to it, oldest first (at most [`MAX_EVENTS`]).
    pub events: Vec<VmEvent>,
}

/// One entry of a VM's history ("placed on node 2", "node 2 down", "moved to node 3").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEvent {
    /// Cluster time, ms since the Unix epoch.
    pub at_ms: u64,
    /// The Raft entry that recorded it.
    pub index: u64,
    pub what: String,
}

pub const MAX_EVENTS: usize = 32;

impl VmRecord {
    /// Whether it holds resources on its node: wanted running, placed, not lost.
    pub fn reserves(&self) -> bool {
        self.desired == PowerState::Running && self.node.is_some() && !self.lost
    }

    /// Appends an event, dropping the oldest past [`MAX_EVENTS`].
    pub fn event(&mut self, at_ms: u64, index: u64, what: impl Into<String>) {
        self.events.push(VmEvent { at_ms, index, what: what.into() });
        if self.events.len() > MAX_EVENTS {
            let extra = self.events.len() - MAX_EVENTS;
            self.events.drain(..extra);
        }
    }
}

pub const VCPUS: (u32, u32) = (1, 32);
pub const MEMORY_MIB: (u32, u32) = (64, 65536);
pub const DISK_GIB: (u32, u32) = (1, 1024);
pub const MAX_NAME_LEN: usize = 63;
pub const MAX_PATH_LEN: usize = 4096;
/// x86 Linux COMMAND_LINE_SIZE.
pub const MAX_CMDLINE_LEN: usize = 2048;
pub const MAX_PORTS: usize = 32;
pub const MAX_LABELS: usize = 64;
pub const MAX_LABEL_KEY_LEN: usize = 63;
pub const MAX_LABEL_VALUE_LEN: usize = 255;

/// Validates a VM name: a DNS label (`[a-z0-9-]`, 1–63 chars, starts with a letter, does not end
/// with a hyphen). Names become directory names on hosts, so this rule is also what keeps a VM's
/// files inside its own directory.
pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let err = |rule: &str| Err(ValidationError::new("name", format!("{rule} (got {})", quoted(name))));
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return err("must be 1 to 63 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return err("may contain only lowercase letters, digits and '-'");
    }
    if !name.as_bytes()[0].is_ascii_lowercase() {
        return err("must start with a lowercase letter");
    }
    if name.ends_with('-') {
        return err("must not end with '-'");
    }
    Ok(())
}

fn range(field: &str, v: u32, (lo, hi): (u32, u32)) -> Result<(), ValidationError> {
    if v < lo || v > hi {
        return Err(ValidationError::new(field, format!("must be between {lo} and {hi} (got {v})")));
    }
    Ok(())
}

fn text(field: &str, v: &str, max: usize) -> Result<(), ValidationError> {
    if v.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if v.len() > max {
        return Err(ValidationError::new(field, format!("must be at most {max} bytes (got {})", v.len())));
    }
    if v.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "must not contain control characters"));
    }
    Ok(())
}

fn validate_ports(ports: &[PortForward]) -> Result<(), ValidationError> {
    if ports.len() > MAX_PORTS {
        return Err(ValidationError::new("ports", format!("at most {MAX_PORTS} port forwards (got {})", ports.len())));
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in ports {
        if p.host == 0 || p.guest == 0 {
            return Err(ValidationError::new(
                "ports",
                format!("ports must be 1 to 65535 (got {}:{})", p.host, p.guest),
            ));
        }
        if !seen.insert(p.host) {
            return Err(ValidationError::new("ports", format!("host port {} is forwarded twice", p.host)));
        }
    }
    Ok(())
}

/// A label key: 1 to 63 of `[A-Za-z0-9._/-]`, starting with a letter or digit.
pub fn label_key_ok(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= MAX_LABEL_KEY_LEN
        && k.as_bytes()[0].is_ascii_alphanumeric()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// Validates node or VM labels.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(ValidationError::new("labels", format!("at most {MAX_LABELS} labels (got {})", labels.len())));
    }
    for (k, v) in labels {
        if !label_key_ok(k) {
            return Err(ValidationError::new(
                "labels",
                format!("key {} must be 1 to 63 of [A-Za-z0-9._/-], starting with a letter or digit", quoted(k)),
            ));
        }
        if v.len() > MAX_LABEL_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(ValidationError::new(
                "labels",
                format!("value of {k:?} must be at most {MAX_LABEL_VALUE_LEN} bytes without control characters"),
            ));
        }
    }
    Ok(())
}

impl VmSpec {
    /// Checks every rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(&self.name)?;
        range("vcpus", self.vcpus, VCPUS)?;
        range("memory_mib", self.memory_mib, MEMORY_MIB)?;
        if let Some(d) = self.disk_gib {
            range("disk_gib", d, DISK_GIB)?;
        }
        for (field, v) in [("kernel", &self.kernel), ("initrd", &self.initrd), ("rootfs", &self.rootfs)] {
            if let Some(v) = v {
                text(field, v, MAX_PATH_LEN)?;
                crate::image_ref::parse(field, v)?;
            }
        }
        if let Some(c) = &self.cmdline {
            if c.len() > MAX_CMDLINE_LEN {
                return Err(ValidationError::new(
                    "cmdline",
                    format!("must be at most {MAX_CMDLINE_LEN} bytes (got {})", c.len()),
                ));
            }
            if c.chars().any(char::is_control) {
                return Err(ValidationError::new("cmdline", "must not contain control characters"));
            }
        }
        validate_ports(&self.ports)?;
        validate_labels(&self.labels)?;
        if let Some(h) = &self.health {
            self.validate_health(h)?;
        }
        self.placement.validate()
    }

    /// The host port that reaches `guest_port`, if it is forwarded.
    pub fn host_port_for(&self, guest_port: u16) -> Option<u16> {
        self.ports.iter().find(|p| p.guest == guest_port).map(|p| p.host)
    }

    fn validate_health(&self, h: &HealthCheck) -> Result<(), ValidationError> {
        if h.guest_port == 0 {
            return Err(ValidationError::new("health", "port must be 1 to 65535 (got 0)"));
        }
        if self.host_port_for(h.guest_port).is_none() {
            return Err(ValidationError::new(
                "health",
                format!("guest port {0} is not forwarded (add --port HOSTPORT:{0})", h.guest_port),
            ));
        }
        range("health.interval_ms", h.interval_ms, HEALTH_INTERVAL_MS)?;
        range("health.threshold", h.threshold, HEALTH_THRESHOLD)?;
        if let HealthKind::Http { path } = &h.kind {
            if !path.starts_with('/') || path.len() > 1024 || path.chars().any(|c| c.is_control() || c == ' ') {
                return Err(ValidationError::new(
                    "health",
                    format!("path must start with '/', be at most 1024 bytes, without spaces (got {})", quoted(path)),
                ));
            }
        }
        Ok(())
    }
}

/// Validates a KV key: 1 to [`crate::MAX_KEY_LEN`] bytes.
pub fn validate_key(key: &[u8]) -> Result<(), ValidationError> {
    if key.is_empty() || key.len() > crate::MAX_KEY_LEN {
        return Err(ValidationError::new(
            "key",
            format!("must be 1 to {} bytes (got {})", crate::MAX_KEY_LEN, key.len()),
        ));
    }
    Ok(())
}

/// Validates a KV value: at most [`crate::MAX_VALUE_LEN`] bytes.
pub fn validate_value(value: &[u8]) -> Result<(), ValidationError> {
    if value.len() > crate::MAX_VALUE_LEN {
        return Err(ValidationError::new(
            "value",
            format!("must be at most {} bytes (got {})", crate::MAX_VALUE_LEN, value.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> VmSpec {
        VmSpec { name: "web-1".into(), vcpus: 1, memory_mib: 128, ..Default::default() }
    }

    fn field_of(spec: VmSpec) -> String {
        spec.validate().expect_err("spec should be invalid").field
    }

    #[test]
    fn a_minimal_spec_is_valid() {
        assert_eq!(good().validate(), Ok(()));
    }

    #[test]
    fn name_must_be_1_to_63_chars() {
        assert_eq!(validate_name("").unwrap_err().field, "name");
        assert!(validate_name(&"a".repeat(63)).is_ok());
        let e = validate_name(&"a".repeat(64)).unwrap_err();
        assert!(e.rule.contains("1 to 63"), "{e}");
    }

    #[test]
    fn name_allows_only_lowercase_digits_and_hyphen() {
        for bad in ["Web", "web_1", "web.1", "wéb", "web 1", "../x", "a/b"] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.field, "name");
            assert!(e.rule.contains("only lowercase"), "{bad}: {e}");
        }
        assert!(validate_name("a-0-b").is_ok());
    }

    #[test]
    fn name_must_start_with_a_letter() {
        for bad in ["1web", "-web"] {
            assert!(validate_name(bad).unwrap_err().rule.contains("start with"), "{bad}");
        }
    }

    #[test]
    fn name_must_not_end_with_hyphen() {
        assert!(validate_name("web-").unwrap_err().rule.contains("end with"));
    }

    #[test]
    fn vcpus_between_1_and_32() {
        for (v, ok) in [(0, false), (1, true), (32, true), (33, false)] {
            let s = VmSpec { vcpus: v, ..good() };
            assert_eq!(s.validate().is_ok(), ok, "vcpus={v}");
            if !ok {
                assert_eq!(field_of(s), "vcpus");
            }
        }
    }

    #[test]
    fn memory_between_64_and_65536_mib() {
        for (v, ok) in [(63, false), (64, true), (65536, true), (65537, false)] {
            let s = VmSpec { memory_mib: v, ..good() };
            assert_eq!(s.validate().is_ok(), ok, "memory={v}");
            if !ok {
                assert_eq!(field_of(s), "memory_mib");
            }
        }
    }

    #[test]
    fn disk_between_1_and_1024_gib() {
        assert_eq!(field_of(VmSpec { disk_gib: Some(0), ..good() }), "disk_gib");
        assert_eq!(field_of(VmSpec { disk_gib: Some(1025), ..good() }), "disk_gib");
        assert!(VmSpec { disk_gib: Some(10), ..good() }.validate().is_ok());
    }

    #[test]
    fn image_references_must_be_non_empty_text() {
        assert_eq!(field_of(VmSpec { kernel: Some(String::new()), ..good() }), "kernel");
        assert_eq!(field_of(VmSpec { initrd: Some("a\nb".into()), ..good() }), "initrd");
        assert_eq!(field_of(VmSpec { rootfs: Some("x".repeat(MAX_PATH_LEN + 1)), ..good() }), "rootfs");
        assert!(VmSpec { kernel: Some("/boot/vmlinuz".into()), ..good() }.validate().is_ok());
    }

    #[test]
    fn cmdline_at_most_2048_bytes_without_control_chars() {
        assert_eq!(field_of(VmSpec { cmdline: Some("x".repeat(2049)), ..good() }), "cmdline");
        assert_eq!(field_of(VmSpec { cmdline: Some("a\u{0}b".into()), ..good() }), "cmdline");
        assert!(VmSpec { cmdline: Some("console=ttyS0 quiet".into()), ..good() }.validate().is_ok());
    }

    #[test]
    fn ports_non_zero_and_host_ports_unique() {
        let p = |host, guest| PortForward { host, guest };
        assert_eq!(field_of(VmSpec { ports: vec![p(0, 80)], ..good() }), "ports");
        assert_eq!(field_of(VmSpec { ports: vec![p(8080, 0)], ..good() }), "ports");
        let dup = VmSpec { ports: vec![p(8080, 80), p(8080, 81)], ..good() };
        assert!(dup.validate().unwrap_err().rule.contains("twice"));
        let many = VmSpec { ports: (1..=33).map(|i| p(i, 80)).collect(), ..good() };
        assert_eq!(field_of(many), "ports");
        assert!(VmSpec { ports: vec![p(8080, 80), p(8443, 443)], ..good() }.validate().is_ok());
    }

    #[test]
    fn labels_keys_and_values_are_bounded() {
        let l = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(field_of(VmSpec { labels: l("", "x"), ..good() }), "labels");
        assert_eq!(field_of(VmSpec { labels: l("-x", "x"), ..good() }), "labels");
        assert_eq!(field_of(VmSpec { labels: l("k", &"v".repeat(256)), ..good() }), "labels");
        assert_eq!(field_of(VmSpec { labels: l("k", "a\tb"), ..good() }), "labels");
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(field_of(VmSpec { labels: many, ..good() }), "labels");
        assert!(VmSpec { labels: l("app.io/tier", "web"), ..good() }.validate().is_ok());
    }

    #[test]
    fn health_checks_need_a_forwarded_port_and_sane_timing() {
        let fwd = vec![PortForward { host: 8080, guest: 80 }];
        let h = |port, kind, interval_ms, threshold| HealthCheck { kind, guest_port: port, interval_ms, threshold };
        let http = |p: &str| HealthKind::Http { path: p.into() };
        let with = |hc| VmSpec { ports: fwd.clone(), health: Some(hc), ..good() };
        assert!(with(h(80, http("/healthz"), 1000, 3)).validate().is_ok());
        assert!(with(h(80, HealthKind::Tcp, 100, 1)).validate().is_ok());
        let e = with(h(81, HealthKind::Tcp, 1000, 3)).validate().unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.rule.as_str()),
            ("health", "guest port 81 is not forwarded (add --port HOSTPORT:81)")
        );
        assert_eq!(with(h(80, HealthKind::Tcp, 99, 3)).validate().unwrap_err().field, "health.interval_ms");
        assert_eq!(with(h(80, HealthKind::Tcp, 1000, 0)).validate().unwrap_err().field, "health.threshold");
        assert_eq!(with(h(80, http("healthz"), 1000, 3)).validate().unwrap_err().field, "health");
        assert_eq!(with(h(80, http("/a b"), 1000, 3)).validate().unwrap_err().field, "health");
    }

    #[test]
    fn restart_policy_parses_the_three_spellings() {
        assert_eq!(RestartPolicy::parse("never"), Ok(RestartPolicy::Never));
        assert_eq!(RestartPolicy::parse("on-failure"), Ok(RestartPolicy::OnFailure));
        assert_eq!(RestartPolicy::parse("always"), Ok(RestartPolicy::Always));
        assert_eq!(RestartPolicy::parse("sometimes").unwrap_err().field, "restart_policy");
    }

    #[test]
    fn long_values_are_quoted_in_part_with_their_length() {
        assert_eq!(quoted("web"), "\"web\"");
        assert_eq!(quoted(&"a".repeat(QUOTE_CHARS)), format!("{:?}", "a".repeat(QUOTE_CHARS)));
        let long = "é".repeat(100_000);
        assert_eq!(quoted(&long), format!("\"{}…\" (200000 bytes)", "é".repeat(QUOTE_CHARS)));
        let e = validate_name(&"a".repeat(100_000)).unwrap_err();
        assert_eq!(e.rule, format!("must be 1 to 63 characters (got \"{}…\" (100000 bytes))", "a".repeat(64)));
        let e = RestartPolicy::parse(&"x".repeat(10_000)).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
        let labels = BTreeMap::from([("-".repeat(10_000), String::new())]);
        assert!(VmSpec { labels, ..good() }.validate().unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn keys_are_1_to_1024_bytes_and_values_at_most_1_mib() {
        assert_eq!(validate_key(b"").unwrap_err().field, "key");
        assert!(validate_key(&[b'k'; 1024]).is_ok());
        assert_eq!(validate_key(&[b'k'; 1025]).unwrap_err().field, "key");
        assert!(validate_value(b"").is_ok());
        assert!(validate_value(&vec![0; 1 << 20]).is_ok());
        assert_eq!(validate_value(&vec![0; (1 << 20) + 1]).unwrap_err().field, "value");
    }
}
