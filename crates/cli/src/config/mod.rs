//! Configuration files: the node's (`blixard node --config FILE`) and the client's
//! (`$XDG_CONFIG_HOME/blixard/config.toml`). A bad file is a usage error: exit code 2, with the
//! file, line, key and rule.

pub mod client;
pub mod node;

use std::path::Path;

/// A configuration that cannot be used (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The 1-based line of byte offset `at` in `text`.
pub fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// A parse error of `file` as `FILE:LINE: message`.
pub fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map_or(1, |s| line_of(text, s.start));
    ConfigError(format!("{}:{line}: {}", file.display(), e.message().trim()))
}

/// Reads a config file (bounded: 1 MiB).
pub fn read(file: &Path) -> Result<String, ConfigError> {
    const MAX: u64 = 1 << 20;
    let meta = std::fs::metadata(file).map_err(|e| ConfigError(format!("cannot read {}: {e}", file.display())))?;
    if meta.len() > MAX {
        return Err(ConfigError(format!("{}: larger than 1 MiB", file.display())));
    }
    std::fs::read_to_string(file).map_err(|e| ConfigError(format!("cannot read {}: {e}", file.display())))
}
