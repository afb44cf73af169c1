//! The operator's side of `blixard node`: logging (`--log`, `--log-format`), the HTTP endpoint
//! (`--http-bind`: metrics, health, readiness) and telling systemd the node is ready.

use std::sync::Arc;

use anyhow::Context;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

/// Installs the process's log subscriber, with the filter `log` (`--log`).
pub fn init_logging(format: LogFormat, log: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log))
        .context("invalid --log filter")?;
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().with_current_span(true).with_span_list(false).init(),
    }
    Ok(())
}

/// Binds the HTTP endpoint's address (before the node starts, so a taken port fails fast).
pub async fn bind_http(addr: Option<&str>) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot bind --http-bind {addr}"))?;
    Ok(Some(l))
}

/// Serves the HTTP endpoint (when bound), then tells systemd the node is ready. Returns the
/// switch that stops the endpoint.
pub fn serve(
    listener: Option<tokio::net::TcpListener>,
    ops: Arc<blixard_node::http::Ops>,
) -> tokio::sync::watch::Sender<bool> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    if let Some(l) = listener {
        if let Ok(addr) = l.local_addr() {
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz over HTTP");
        }
        tokio::spawn(blixard_node::http::serve(l, ops, stopped));
    }
    blixard_node::sd_notify::notify("READY=1\nSTATUS=serving");
    stop
}

/// Tells systemd the node is stopping, and stops the endpoint.
pub fn stopping(stop: &tokio::sync::watch::Sender<bool>) {
    blixard_node::sd_notify::notify("STOPPING=1");
    let _ = stop.send(true);
}
