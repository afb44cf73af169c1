//! A minimal QMP client: newline-delimited JSON over a unix socket.
//!
//! QEMU serves one QMP client at a time, so each running VM has exactly one connection, owned by
//! its monitor task; commands reach it through a channel. Replies come back in command order,
//! interleaved with asynchronous events.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::{Result, VmmError};

/// One message from QEMU.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Greeting(Value),
    Return(Value),
    Error(String),
    Event { event: String, data: Value },
}

/// Parses one line of QMP output.
pub fn parse(line: &str) -> Result<Message> {
    let v: Value = serde_json::from_str(line).map_err(|e| VmmError::Qmp(format!("bad message {line:?}: {e}")))?;
    if let Some(r) = v.get("return") {
        return Ok(Message::Return(r.clone()));
    }
    if let Some(e) = v.get("error") {
        let desc = e.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
        return Ok(Message::Error(desc.to_string()));
    }
    if let Some(ev) = v.get("event").and_then(Value::as_str) {
        return Ok(Message::Event { event: ev.to_string(), data: v.get("data").cloned().unwrap_or(Value::Null) });
    }
    if let Some(g) = v.get("QMP") {
        return Ok(Message::Greeting(g.clone()));
    }
    Err(VmmError::Qmp(format!("unknown message {line:?}")))
}

/// The reason of a `SHUTDOWN` event (`guest-shutdown`, `host-qmp-quit`, `guest-panic`, …).
pub fn shutdown_reason(event: &str, data: &Value) -> Option<String> {
    (event == "SHUTDOWN").then(|| data.get("reason").and_then(Value::as_str).unwrap_or("unknown").to_string())
}

/// A connected, negotiated QMP session.
pub struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    writer: OwnedWriteHalf,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp> {
        let fut = async {
            let stream = UnixStream::connect(path).await.map_err(VmmError::io("connect to", path))?;
            let (r, writer) = stream.into_split();
            let mut qmp = Qmp { lines: BufReader::new(r).lines(), writer };
            match qmp.next().await? {
                Some(Message::Greeting(_)) => {}
                other => return Err(VmmError::Qmp(format!("expected a greeting, got {other:?}"))),
            }
            qmp.send("qmp_capabilities").await?;
            loop {
                match qmp.next().await? {
                    Some(Message::Return(_)) => return Ok(qmp),
                    Some(Message::Event { .. }) => continue,
                    other => return Err(VmmError::Qmp(format!("qmp_capabilities failed: {other:?}"))),
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| VmmError::Timeout { what: "the QMP greeting".into(), after_ms: timeout.as_millis() as u64 })?
    }

    /// Sends a command without arguments; its reply arrives through [`Qmp::next`].
    pub async fn send(&mut self, command: &str) -> Result<()> {
        let line = format!("{}\n", serde_json::json!({ "execute": command }));
        self.writer.write_all(line.as_bytes()).await.map_err(|e| VmmError::Qmp(format!("write failed: {e}")))
    }

    /// The next message, or `None` once QEMU closed the connection. Cancel safe.
    pub async fn next(&mut self) -> Result<Option<Message>> {
        loop {
            match self.lines.next_line().await {
                Ok(Some(l)) if l.trim().is_empty() => continue,
                Ok(Some(l)) => return parse(&l).map(Some),
                Ok(None) => return Ok(None),
                Err(e) => return Err(VmmError::Qmp(format!("read failed: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_four_message_kinds() {
        let g = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#;
        assert!(matches!(parse(g).unwrap(), Message::Greeting(_)));
        assert_eq!(parse(r#"{"return": {}}"#).unwrap(), Message::Return(serde_json::json!({})));
        let e = r#"{"error": {"class": "GenericError", "desc": "nope"}}"#;
        assert_eq!(parse(e).unwrap(), Message::Error("nope".into()));
        let ev = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN",
                     "data": {"guest": true, "reason": "guest-shutdown"}}"#;
        let Message::Event { event, data } = parse(ev).unwrap() else { panic!("not an event") };
        assert_eq!(shutdown_reason(&event, &data).as_deref(), Some("guest-shutdown"));
        assert_eq!(shutdown_reason("POWERDOWN", &Value::Null), None);
        assert!(parse("{}").is_err() && parse("not json").is_err());
    }
}
