//! What a VM asks of the node it runs on, beyond resources: node-label constraints, required
//! features, anti-affinity groups, spreading, the scoring strategy, and what to do when its
//! node is lost. Parsed and validated here (pure); the scheduler applies it.
//!
//! Constraint language (`--constraint`), on node labels (`blixard node --label K=V`):
//! `K=V`, `K!=V`, `K in (A,B,...)`, `K not in (A,B,...)`, `K exists`, `K missing`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{quoted, ValidationError};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Eq(String),
    Ne(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    Missing,
}

/// One condition on a node's labels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    pub key: String,
    pub op: Op,
}

impl Constraint {
    /// Whether a node with `labels` satisfies it.
    pub fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        match &self.op {
            Op::Eq(x) => v == Some(x),
            Op::Ne(x) => v != Some(x),
            Op::In(xs) => v.is_some_and(|v| xs.contains(v)),
            Op::NotIn(xs) => !v.is_some_and(|v| xs.contains(v)),
            Op::Exists => v.is_some(),
            Op::Missing => v.is_none(),
        }
    }

    /// Parses the constraint language (see the module doc).
    pub fn parse(s: &str) -> Result<Constraint, ValidationError> {
        let bad = |rule: &str| ValidationError::new("constraint", format!("{rule} (got {})", quoted(s)));
        let s = s.trim();
        let set = |rest: &str| -> Result<Vec<String>, ValidationError> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| bad("a set is written (A,B,...)"))?;
            let items: Vec<String> = inner.split(',').map(|x| x.trim().to_string()).collect();
            if items.iter().any(|x| x.is_empty()) {
                return Err(bad("a set's values must not be empty"));
            }
            Ok(items)
        };
        let (key, op) = if let Some((k, v)) = s.split_once("!=") {
            (k, Op::Ne(v.trim().to_string()))
        } else if let Some((k, v)) = s.split_once("==") {
            (k, Op::Eq(v.trim().to_string()))
        } else if let Some((k, v)) = s.split_once('=') {
            (k, Op::Eq(v.trim().to_string()))
        } else if let Some((k, rest)) = s.split_once(" not in ") {
            (k, Op::NotIn(set(rest)?))
        } else if let Some((k, rest)) = s.split_once(" in ") {
            (k, Op::In(set(rest)?))
        } else if let Some(k) = s.strip_suffix(" exists") {
            (k, Op::Exists)
        } else if let Some(k) = s.strip_suffix(" missing") {
            (k, Op::Missing)
        } else {
            return Err(bad("must be K=V, K!=V, K in (A,B), K not in (A,B), K exists or K missing"));
        };
        let c = Constraint { key: key.trim().to_string(), op };
        c.validate()?;
        Ok(c)
    }

    pub(crate) fn validate(&self) -> Result<(), ValidationError> {
        if !crate::spec::label_key_ok(&self.key) {
            return Err(ValidationError::new(
                "constraint",
                format!(
                    "key {} must be 1 to 63 of [A-Za-z0-9._/-], starting with a letter or digit",
                    quoted(&self.key)
                ),
            ));
        }
        let values: Vec<&String> = match &self.op {
            Op::Eq(v) | Op::Ne(v) => vec![v],
            Op::In(vs) | Op::NotIn(vs) => vs.iter().collect(),
            Op::Exists | Op::Missing => vec![],
        };
        if values.len() > MAX_SET {
            return Err(ValidationError::new("constraint", format!("a set has at most {MAX_SET} values")));
        }
        for v in values {
            if v.is_empty() || v.len() > crate::spec::MAX_LABEL_VALUE_LEN || v.chars().any(char::is_control) {
                return Err(ValidationError::new(
                    "constraint",
                    format!(
                        "values must be 1 to {} bytes without control characters",
                        crate::spec::MAX_LABEL_VALUE_LEN
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let k = &self.key;
        match &self.op {
            Op::Eq(v) => write!(f, "{k}={v}"),
            Op::Ne(v) => write!(f, "{k}!={v}"),
            Op::In(vs) => write!(f, "{k} in ({})", vs.join(",")),
            Op::NotIn(vs) => write!(f, "{k} not in ({})", vs.join(",")),
            Op::Exists => write!(f, "{k} exists"),
            Op::Missing => write!(f, "{k} missing"),
        }
    }
}

const MAX_SET: usize = 32;
pub const MAX_CONSTRAINTS: usize = 16;
/// Node features a VM may require.
pub const FEATURES: [&str; 1] = ["kvm"];

/// How the feasible nodes are ranked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Strategy {
    /// Fill the fullest node that fits (keeps whole nodes free for big VMs).
    #[default]
    Binpack,
    /// Prefer the emptiest node.
    Spread,
}

/// What happens to the VM when its node is declared down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnNodeLoss {
    /// Placed again and started on another node (from a fresh disk), per its restart policy.
    #[default]
    RestartElsewhere,
    /// Stays assigned to its node until that node comes back.
    Wait,
}

/// Where a VM may go and how it is ranked there.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementSpec {
    pub constraints: Vec<Constraint>,
    /// Node features required (`kvm`).
    pub require: Vec<String>,
    /// Anti-affinity group: with `hard`, no two VMs of a group share a node; otherwise sharing
    /// is only penalised in the score.
    pub group: Option<String>,
    pub hard: bool,
    /// A node label to spread VMs over (of the group when there is one, else all).
    pub spread: Option<String>,
    pub strategy: Strategy,
    pub on_node_loss: OnNodeLoss,
}

impl PlacementSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.constraints.len() > MAX_CONSTRAINTS {
            return Err(ValidationError::new("constraint", format!("at most {MAX_CONSTRAINTS} constraints")));
        }
        for c in &self.constraints {
            c.validate()?;
        }
        for r in &self.require {
            if !FEATURES.contains(&r.as_str()) {
                return Err(ValidationError::new(
                    "require",
                    format!("must be one of {} (got {})", FEATURES.join(", "), quoted(r)),
                ));
            }
        }
        if let Some(g) = &self.group {
            crate::spec::validate_name(g).map_err(|e| ValidationError::new("group", e.rule))?;
        }
        if self.hard && self.group.is_none() {
            return Err(ValidationError::new("group", "hard anti-affinity needs a group"));
        }
        if let Some(k) = &self.spread {
            if !crate::spec::label_key_ok(k) {
                return Err(ValidationError::new("spread", format!("must be a label key (got {})", quoted(k))));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_constraint_language_parses_and_holds_as_written() {
        let n = labels(&[("zone", "a"), ("disk", "ssd")]);
        for (c, want) in [
            ("zone=a", true),
            ("zone = b", false),
            ("zone==a", true),
            ("zone!=b", true),
            ("zone in (a, b)", true),
            ("zone in (c)", false),
            ("zone not in (b,c)", true),
            ("disk exists", true),
            ("gpu exists", false),
            ("gpu missing", true),
            ("gpu!=x", true),
        ] {
            let p = Constraint::parse(c).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert_eq!(p.holds(&n), want, "{c}");
            assert_eq!(Constraint::parse(&p.to_string()).unwrap(), p, "round trip of {c}");
        }
    }

    #[test]
    fn bad_constraints_name_the_rule() {
        for bad in ["zone", "zone in a,b", "zone in ()", "=a", "zo ne=a", "zone in (a,,b)", "zone==", "zone="] {
            let e = Constraint::parse(bad).unwrap_err();
            assert_eq!(e.field, "constraint", "{bad}");
        }
    }

    #[test]
    fn placement_rules() {
        let ok = PlacementSpec { group: Some("web".into()), hard: true, ..Default::default() };
        assert!(ok.validate().is_ok());
        let e = PlacementSpec { hard: true, ..Default::default() }.validate().unwrap_err();
        assert_eq!(e.field, "group");
        let e = PlacementSpec { require: vec!["gpu".into()], ..Default::default() }.validate().unwrap_err();
        assert_eq!(e.field, "require");
        let e = PlacementSpec { group: Some("Web!".into()), ..Default::default() }.validate().unwrap_err();
        assert_eq!(e.field, "group");
        let many = PlacementSpec { constraints: vec![Constraint::parse("a=b").unwrap(); 17], ..Default::default() };
        assert_eq!(many.validate().unwrap_err().field, "constraint");
    }
}
