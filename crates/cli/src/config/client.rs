//! The client's optional configuration: `$XDG_CONFIG_HOME/blixard/config.toml` (else
//! `~/.config/blixard/config.toml`) with `addr`, `output` and `tls_dir`. Flags and environment
//! variables win over it; an unknown key or a bad value is refused with the file and line.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{line_of, ConfigError};
use crate::Format;

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    addr: Option<Spanned<String>>,
    output: Option<Spanned<String>>,
    tls_dir: Option<Spanned<String>>,
}

/// What the file sets.
#[derive(Default, Debug, PartialEq)]
pub struct ClientConfig {
    pub addr: Option<String>,
    pub output: Option<Format>,
    pub tls_dir: Option<PathBuf>,
}

/// Where the client config is looked for.
pub fn path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = match env("XDG_CONFIG_HOME").filter(|s| !s.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(env("HOME")?).join(".config"),
    };
    Some(base.join("blixard").join("config.toml"))
}

/// Parses a client config file's text.
pub fn parse(file: &Path, text: &str) -> Result<ClientConfig, ConfigError> {
    let f: ClientFile = toml::from_str(text).map_err(|e| super::toml_error(file, text, &e))?;
    let at = |s: &Spanned<String>| format!("{}:{}", file.display(), line_of(text, s.span().start));
    let mut c = ClientConfig::default();
    if let Some(a) = &f.addr {
        crate::client::endpoints(a.get_ref())
            .map_err(|_| ConfigError(format!("{}: addr: expected HOST:PORT[,HOST:PORT...]", at(a))))?;
        c.addr = Some(a.get_ref().clone());
    }
    if let Some(o) = &f.output {
        c.output = Some(match o.get_ref().as_str() {
            "table" => Format::Table,
            "json" => Format::Json,
            _ => return Err(ConfigError(format!("{}: output: expected \"table\" or \"json\"", at(o)))),
        });
    }
    if let Some(d) = &f.tls_dir {
        // Relative to the file's directory.
        c.tls_dir = Some(file.parent().unwrap_or(Path::new(".")).join(d.get_ref()));
    }
    Ok(c)
}

/// Loads the client config, if there is one.
pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<ClientConfig, ConfigError> {
    match path(env) {
        Some(p) if p.exists() => parse(&p, &super::read(&p)?),
        _ => Ok(ClientConfig::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_config_sets_keys_and_refuses_unknown_ones_by_line() {
        let f = Path::new("/c/config.toml");
        let c = parse(f, "addr = \"10.0.0.1:7001,10.0.0.2:7001\"\noutput = \"json\"\ntls_dir = \"certs\"\n").unwrap();
        assert_eq!(c.addr.as_deref(), Some("10.0.0.1:7001,10.0.0.2:7001"));
        assert!(c.output == Some(Format::Json));
        assert_eq!(c.tls_dir, Some(PathBuf::from("/c/certs")));
        let e = parse(f, "addr = \"127.0.0.1:7001\"\n\ntoken = \"x\"\n").unwrap_err().0;
        assert!(e.starts_with("/c/config.toml:3:") && e.contains("token"), "{e}");
        let e = parse(f, "\noutput = \"yaml\"\n").unwrap_err().0;
        assert!(e.starts_with("/c/config.toml:2: output:"), "{e}");
        let e = parse(f, "addr = \"nope\"\n").unwrap_err().0;
        assert!(e.starts_with("/c/config.toml:1: addr:"), "{e}");
        let e = parse(f, "addr = 7001\n").unwrap_err().0;
        assert!(e.starts_with("/c/config.toml:1:"), "{e}");
    }

    #[test]
    fn client_config_is_found_in_xdg_then_home() {
        let env = |k: &str| match k {
            "XDG_CONFIG_HOME" => Some("/x".to_string()),
            "HOME" => Some("/h".to_string()),
            _ => None,
        };
        assert_eq!(path(&env), Some(PathBuf::from("/x/blixard/config.toml")));
        let env = |k: &str| (k == "HOME").then(|| "/h".to_string());
        assert_eq!(path(&env), Some(PathBuf::from("/h/.config/blixard/config.toml")));
    }
}
