//! systemd's readiness protocol (`Type=notify`), without a library: one datagram such as
//! `READY=1` to the unix socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
//! namespace). Nothing is sent when the variable is unset (not started by systemd).

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `socket`.
pub fn notify_to(socket: &str, state: &str) -> std::io::Result<()> {
    let s = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        s.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        s.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

/// Sends `state` to `$NOTIFY_SOCKET` when it is set; a failure is logged (the service manager
/// then times the start out, which says more than a node that refuses to run).
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let socket = socket.to_string_lossy();
    match notify_to(&socket, state) {
        Ok(()) => tracing::debug!("told the service manager {state:?}"),
        Err(e) => tracing::warn!("cannot notify the service manager at {socket}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_reaches_a_path_socket_and_an_abstract_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        notify_to(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("blixard-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        notify_to(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(notify_to("/nonexistent/dir/sock", "READY=1").is_err());
    }
}
