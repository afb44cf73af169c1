//! The node's configuration: every daemon flag of `blixard node` has a TOML key in a section
//! (`[raft] tick_ms` is `--tick-ms`) and an environment variable `BLIXARD_<SECTION>_<KEY>`
//! (`BLIXARD_RAFT_TICK_MS`). Precedence: flag > environment > file > default.
//!
//! The environment is read here for the known names only (not with clap's `env`: an argument
//! set from the environment would count as given and turn `blixard node list` into a daemon
//! invocation). Values from the environment and the file are checked by the flag's own value
//! parser, so every rule is the flag's rule; the effective flags are then parsed once more into
//! [`NodeArgs`].

use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Command, FromArgMatches};
use serde::Deserialize;
use toml::{Spanned, Value};

use super::{line_of, ConfigError};
use crate::cmd::node::NodeArgs;

/// A key's TOML type (and how its environment variable is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Int,
    Str,
    Bool,
    /// An array of strings; in the environment, comma-separated.
    List,
    /// A table of strings (`labels = { zone = "a" }`); in the environment `zone=a,rack=1`.
    Labels,
}

#[derive(Debug)]
pub struct Key {
    pub section: &'static str,
    pub key: &'static str,
    /// The clap argument id (the field of [`NodeArgs`]; `tls_dir` is the global `--tls-dir`).
    pub arg: &'static str,
    pub kind: Kind,
}

impl Key {
    pub fn name(&self) -> String {
        format!("{}.{}", self.section, self.key)
    }

    /// The environment variables read for it, first found wins.
    pub fn env_names(&self) -> Vec<String> {
        let mut v = vec![format!("BLIXARD_{}_{}", self.section, self.key).to_uppercase()];
        if self.arg == "image_cache" {
            v.push("BLIXARD_IMAGE_CACHE".into()); // the older name, still read
        }
        v
    }
}

type Field = Option<Spanned<Value>>;

macro_rules! sections {
    ($( $sec:ident : $ty:ident { $( $key:ident => $arg:literal $kind:ident ),* $(,)? } )*) => {
        $(
            #[derive(Deserialize, Default)]
            #[serde(deny_unknown_fields)]
            struct $ty { $( #[serde(default)] $key: Field, )* }
        )*
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct NodeFile { $( #[serde(default)] $sec: $ty, )* }

        /// Every key, in file order.
        pub const KEYS: &[Key] = &[ $( $( Key {
            section: stringify!($sec), key: stringify!($key), arg: $arg, kind: Kind::$kind,
        }, )* )* ];

        impl NodeFile {
            /// The values in the order of [`KEYS`].
            fn into_values(self) -> Vec<Field> {
                vec![ $( $( self.$sec.$key, )* )* ]
            }
        }
    };
}

sections! {
    node: NodeSec {
        id => "id" Int, bind => "bind" Str, data_dir => "data_dir" Str, advertise => "advertise" Str,
        join => "join" Str, labels => "labels" Labels,
    }
    raft: RaftSec {
        tick_ms => "tick_ms" Int, election_ticks => "election_ticks" Int, heartbeat_ticks => "heartbeat_ticks" Int,
        idle_spin_us => "idle_spin_us" Int, reply_spin_us => "reply_spin_us" Int,
        group_commit_us => "group_commit_us" Int,
        snapshot_entries => "snapshot_entries" Int, snapshot_mib => "snapshot_mib" Int,
        keep_entries => "keep_entries" Int,
    }
    vm: VmSec {
        backend => "vm_backend" Str, image_cache => "image_cache" Str, bridge => "vm_bridge" Str,
        memory_mib => "memory_mib" Int, reserve_memory_mib => "reserve_memory_mib" Int,
        vcpu_overcommit => "vcpu_overcommit" Int, disk_gib => "disk_gib" Int,
        allow_image_dirs => "allow_image_dirs" List,
    }
    liveness: LivenessSec {
        heartbeat_ms => "heartbeat_ms" Int, fence_after_ms => "fence_after_ms" Int,
        down_after_ms => "down_after_ms" Int,
    }
    tls: TlsSec { dir => "tls_dir" Str, insecure => "insecure" Bool }
    http: HttpSec { bind => "http_bind" Str, metrics => "metrics" Str }
    limits: LimitsSec {
        max_snapshot_mib => "max_snapshot_mib" Int, max_conns_per_ip => "max_conns_per_ip" Int,
        handshake_timeout_ms => "handshake_timeout_ms" Int, peer_idle_timeout_ms => "peer_idle_timeout_ms" Int,
    }
    auth: AuthSec {
        enforce => "auth" Bool, rate_requests => "rate_requests" Int, rate_write_bytes => "rate_write_bytes" Int,
        max_concurrent => "max_concurrent" Int, audit_log => "audit_log" Str,
    }
    log: LogSec { level => "log" Str, format => "log_format" Str }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    /// `FILE:LINE`.
    File(String),
    Default,
    Unset,
}

impl Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Flag => "flag",
            Source::Env(_) => "env",
            Source::File(_) => "file",
            Source::Default => "default",
            Source::Unset => "unset",
        }
    }

    /// The variable or `FILE:LINE`, when there is one.
    pub fn origin(&self) -> Option<&str> {
        match self {
            Source::Env(s) | Source::File(s) => Some(s),
            _ => None,
        }
    }
}

/// One key's effective value: its flag values (`["true"]` for a switch that is on).
#[derive(Debug)]
pub struct Entry {
    pub key: &'static Key,
    pub values: Vec<String>,
    pub source: Source,
}

pub struct Resolved {
    pub entries: Vec<Entry>,
    pub args: NodeArgs,
}

impl Resolved {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key.name() == name)
    }

    /// The node's TLS dir (`tls.dir`).
    pub fn tls_dir(&self) -> Option<PathBuf> {
        self.get("tls.dir").and_then(|e| e.values.first()).map(PathBuf::from)
    }

    /// Refuses a configuration without the keys a node needs.
    pub fn require(&self) -> Result<(), ConfigError> {
        for (name, flag) in [("node.id", "--id"), ("node.data_dir", "--data-dir")] {
            let e = self.get(name).expect("known key");
            if e.source == Source::Unset {
                return Err(ConfigError(format!(
                    "missing {name}: give {flag}, {} or `{}` in [{}] of the --config file",
                    e.key.env_names()[0],
                    e.key.key,
                    e.key.section
                )));
            }
        }
        Ok(())
    }
}

fn node_command() -> Command {
    NodeArgs::augment_args(Command::new("node").no_binary_name(true))
}

/// The rule a value parser's error states.
fn rule(e: &clap::Error) -> String {
    if let Some(s) = std::error::Error::source(e) {
        return s.to_string();
    }
    let text = e.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = text.split("\n\nFor more").next().unwrap_or(text);
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks one value with its flag's parser.
fn check(cmd: &Command, key: &Key, v: &str) -> Result<(), String> {
    if key.arg == "tls_dir" {
        return Ok(());
    }
    if key.kind == Kind::Bool {
        return Ok(()); // already true or false
    }
    let arg = cmd.get_arguments().find(|a| a.get_id() == key.arg).expect("every key names a flag");
    let long = format!("--{}", arg.get_long().expect("daemon flags are long"));
    cmd.clone().try_get_matches_from([format!("{long}={v}")]).map_err(|e| rule(&e))?;
    if key.kind == Kind::Labels {
        let (k, x) = v.split_once('=').unwrap_or((v, ""));
        let one = std::collections::BTreeMap::from([(k.to_string(), x.to_string())]);
        blixard_core::spec::validate_labels(&one).map_err(|e| e.rule)?;
    }
    Ok(())
}

/// A TOML value as flag values, or the rule it breaks.
fn from_toml(kind: Kind, v: &Value) -> Result<Vec<String>, String> {
    let str_of = |v: &Value| v.as_str().map(str::to_string).ok_or("expected a string");
    match kind {
        Kind::Int => match v.as_integer() {
            Some(i) => Ok(vec![i.to_string()]),
            None => Err("expected an integer".into()),
        },
        Kind::Str => Ok(vec![str_of(v)?]),
        Kind::Bool => v.as_bool().map(|b| vec![b.to_string()]).ok_or_else(|| "expected true or false".into()),
        Kind::List => {
            let a = v.as_array().ok_or("expected an array of strings")?;
            a.iter().map(|x| str_of(x).map_err(|_| "expected an array of strings".to_string())).collect()
        }
        Kind::Labels => {
            let t = v.as_table().ok_or("expected a table of strings, e.g. { zone = \"a\" }")?;
            t.iter()
                .map(|(k, x)| Ok(format!("{k}={}", str_of(x).map_err(|_| format!("label {k:?}: expected a string"))?)))
                .collect()
        }
    }
}

/// An environment value as flag values, or the rule it breaks.
fn from_env(kind: Kind, v: &str) -> Result<Vec<String>, String> {
    match kind {
        Kind::Int | Kind::Str => Ok(vec![v.to_string()]),
        Kind::Bool => match v {
            "true" | "1" => Ok(vec!["true".into()]),
            "false" | "0" => Ok(vec!["false".into()]),
            _ => Err("expected true, false, 1 or 0".into()),
        },
        Kind::List | Kind::Labels => {
            Ok(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
        }
    }
}

/// Reads and checks a node config file: every key known, every value of the right type.
fn load_file(path: &Path) -> Result<(String, Vec<Field>), ConfigError> {
    let text = super::read(path)?;
    let f: NodeFile = toml::from_str(&text).map_err(|e| super::toml_error(path, &text, &e))?;
    Ok((text, f.into_values()))
}

/// The effective configuration of `blixard node` (or `config show`): `m` holds the daemon
/// flags, `top` the global ones (`--tls-dir`); `env` looks a variable up.
pub fn resolve(
    m: &ArgMatches,
    top: &ArgMatches,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved, ConfigError> {
    let cmd = node_command();
    let config = m.get_one::<PathBuf>("config").cloned();
    let (text, file) = match &config {
        Some(p) => load_file(p)?,
        None => (String::new(), KEYS.iter().map(|_| None).collect()),
    };
    let mut entries = Vec::new();
    for (key, fv) in KEYS.iter().zip(file) {
        let name = key.name();
        let (src_m, id) = if key.arg == "tls_dir" { (top, "tls_dir") } else { (m, key.arg) };
        let raw = || -> Vec<String> {
            src_m.get_raw(id).map(|r| r.map(|s| s.to_string_lossy().into_owned()).collect()).unwrap_or_default()
        };
        let given = match src_m.value_source(id) {
            Some(ValueSource::CommandLine) => Some(Source::Flag),
            Some(ValueSource::EnvVariable) => Some(Source::Env("BLIXARD_TLS_DIR".into())),
            _ => None,
        };
        let entry = if let Some(source) = given {
            let values = if key.kind == Kind::Bool { vec!["true".into()] } else { raw() };
            Entry { key, values, source }
        } else if let Some((var, v)) = key.env_names().into_iter().find_map(|n| env(&n).map(|v| (n, v))) {
            let values = from_env(key.kind, &v).map_err(|r| ConfigError(format!("{var}={v:?}: {r}")))?;
            for x in &values {
                check(&cmd, key, x).map_err(|r| ConfigError(format!("{var}={v:?}: {r}")))?;
            }
            Entry { key, values, source: Source::Env(var) }
        } else if let Some(fv) = fv {
            let path = config.as_deref().expect("a file value has a file");
            let at = format!("{}:{}", path.display(), line_of(&text, fv.span().start));
            let refuse = |r: String| ConfigError(format!("{at}: {name}: {r}"));
            let values = from_toml(key.kind, fv.get_ref()).map_err(refuse)?;
            for x in &values {
                check(&cmd, key, x).map_err(|r| refuse(format!("{x:?}: {r}")))?;
            }
            let mut values = values;
            if key.arg == "tls_dir" || key.arg == "data_dir" || key.arg == "image_cache" {
                // A relative path in a file is relative to the file's directory.
                let base = path.parent().unwrap_or(Path::new("."));
                values = values.into_iter().map(|v| base.join(v).to_string_lossy().into_owned()).collect();
            }
            Entry { key, values, source: Source::File(at) }
        } else if src_m.value_source(id) == Some(ValueSource::DefaultValue) {
            Entry { key, values: raw(), source: Source::Default }
        } else {
            Entry { key, values: Vec::new(), source: Source::Unset }
        };
        entries.push(entry);
    }
    let mut argv: Vec<String> = Vec::new();
    if let Some(p) = &config {
        argv.extend(["--config".into(), p.to_string_lossy().into_owned()]);
    }
    for e in &entries {
        if matches!(e.source, Source::Default | Source::Unset) || e.key.arg == "tls_dir" {
            continue;
        }
        let arg = cmd.get_arguments().find(|a| a.get_id() == e.key.arg).expect("known flag");
        let long = format!("--{}", arg.get_long().expect("daemon flags are long"));
        for v in &e.values {
            match e.key.kind {
                Kind::Bool if v == "true" => argv.push(long.clone()),
                Kind::Bool => {}
                _ => argv.push(format!("{long}={v}")),
            }
        }
    }
    let am = cmd.try_get_matches_from(&argv).map_err(|e| ConfigError(rule(&e)))?;
    let args = NodeArgs::from_arg_matches(&am).map_err(|e| ConfigError(rule(&e)))?;
    Ok(Resolved { entries, args })
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
