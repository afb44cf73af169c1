//! `blixard config show`: the node's effective configuration and where each value came from.

use serde_json::{json, Value};

use crate::config::node::{Kind, Resolved, Source};
use crate::output::{emit, Table};
use crate::Format;

#[derive(clap::Subcommand)]
pub enum ConfigCmd {
    /// Print the configuration `blixard node` would run with, given the same --config file,
    /// flags and environment: every key, its value and its source (flag, env, file, default).
    Show {
        #[command(flatten)]
        daemon: Box<super::node::NodeArgs>,
    },
}

fn json_value(kind: Kind, values: &[String], source: &Source) -> Value {
    if *source == Source::Unset {
        return Value::Null;
    }
    match kind {
        Kind::List | Kind::Labels => json!(values),
        Kind::Int => values.first().and_then(|v| v.parse::<u64>().ok()).map_or(Value::Null, |n| json!(n)),
        Kind::Bool => json!(values.first().is_some_and(|v| v == "true")),
        Kind::Str => values.first().map_or(Value::Null, |v| json!(v)),
    }
}

pub fn show(fmt: Format, r: &Resolved) {
    let rows: Vec<Value> = r
        .entries
        .iter()
        .map(|e| {
            json!({
                "key": e.key.name(),
                "value": json_value(e.key.kind, &e.values, &e.source),
                "source": e.source.kind(),
                "origin": e.source.origin(),
            })
        })
        .collect();
    emit(fmt, &rows, || {
        let mut t = Table::new(vec!["KEY", "VALUE", "SOURCE"]);
        for e in &r.entries {
            let value = if e.source == Source::Unset { "-".to_string() } else { e.values.join(",") };
            let source = match e.source.origin() {
                Some(o) => format!("{} {o}", e.source.kind()),
                None => e.source.kind().to_string(),
            };
            t = t.row(vec![e.key.name(), value, source]);
        }
        t
    });
}
