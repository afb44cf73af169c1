//! The one error type of this crate. Messages are short and never repeat their `#[source]`.

use std::path::PathBuf;

/// Why a driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid VM name {0:?}")]
    InvalidName(String),
    #[error("no VM named {0:?}")]
    NotFound(String),
    #[error("VM {0:?} has no spec (prepare it first)")]
    NotPrepared(String),
    #[error("VM {0:?} is not running")]
    NotRunning(String),
    #[error("VM instance {0} already has files")]
    InstanceExists(crate::Instance),
    #[error("VM instance {instance} cannot be prepared with the spec of VM {spec:?}")]
    SpecMismatch { instance: crate::Instance, spec: String },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed: {detail}")]
    Command { program: String, detail: String },
    #[error("bad file {path}")]
    BadFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("QEMU for VM {name:?} exited during start: {detail}")]
    StartFailed { name: String, detail: String },
    #[error("socket path {path} is longer than {max} bytes")]
    PathTooLong { path: PathBuf, max: usize },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("timed out after {after_ms} ms waiting for {what}")]
    Timeout { what: String, after_ms: u64 },
    #[error("microvm-nix backend needs nix on the host: not found on PATH")]
    NixMissing,
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    /// A spec's kernel, initrd or rootfs names a host file VMs may not use.
    #[error("{field} {reference:?} refused: {rule}")]
    HostFileRefused { field: String, reference: String, rule: String },
    /// A failure injected by the fake driver (simulation only).
    #[error("injected failure: {0}")]
    Injected(String),
}

impl VmmError {
    #[cfg_attr(madsim, allow(dead_code))]
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| VmmError::Io { action, path, source }
    }
}

/// The error and its causes in one line (`a: b: c`), for reasons shown to users.
#[cfg_attr(madsim, allow(dead_code))]
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

pub type Result<T, E = VmmError> = std::result::Result<T, E>;
