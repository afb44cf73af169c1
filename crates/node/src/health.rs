//! Guest health probes, through the host port forwarded to the checked guest port.
//!
//! With user-mode networking QEMU accepts the host side of a forwarded connection whether or not
//! anything listens in the guest, and closes it at once when nothing does. So a TCP check passes
//! only if the connection is still open a moment after connecting; an HTTP check needs a status
//! line with a 2xx or 3xx code.

use std::time::Duration;

use blixard_core::HealthKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a TCP check watches a fresh connection for an immediate close.
const SETTLE: Duration = Duration::from_millis(200);

pub async fn probe(kind: &HealthKind, host_port: u16, timeout: Duration) -> Result<(), String> {
    let connect = tokio::time::timeout(timeout, TcpStream::connect(("127.0.0.1", host_port)));
    let mut s = connect
        .await
        .map_err(|_| format!("connect to port {host_port} timed out"))?
        .map_err(|e| format!("connect to port {host_port}: {e}"))?;
    match kind {
        HealthKind::Tcp => {
            let mut b = [0u8; 1];
            match tokio::time::timeout(SETTLE, s.read(&mut b)).await {
                Err(_) => Ok(()),
                Ok(Ok(0)) => Err(format!("port {host_port}: connection closed (nothing listens in the guest)")),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("port {host_port}: {e}")),
            }
        }
        HealthKind::Http { path } => {
            let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: blixard-health\r\n\r\n");
            let mut head = Vec::new();
            let exchange = async {
                s.write_all(req.as_bytes()).await?;
                let mut buf = [0u8; 256];
                while !head.contains(&b'\n') && head.len() < 4096 {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    head.extend_from_slice(&buf[..n]);
                }
                Ok::<_, std::io::Error>(())
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| format!("GET {path}: no answer within {timeout:?}"))?
                .map_err(|e| format!("GET {path}: {e}"))?;
            let line = String::from_utf8_lossy(&head);
            let code: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| format!("GET {path}: no HTTP status line"))?;
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("GET {path}: HTTP {code}"))
            }
        }
    }
}
