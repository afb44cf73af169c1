//! Addresses given on the command line, checked by clap before anything runs: a bad one is a
//! usage error (exit 2) naming the flag, not a failure to connect.

use blixard_core::quoted;

/// One `HOST:PORT`: a host that is not empty (an IPv6 address in brackets) and a port from 1
/// to 65535.
pub fn endpoint(s: &str) -> Result<String, String> {
    check(s)?;
    Ok(s.to_string())
}

/// `HOST:PORT[,HOST:PORT...]` (the shape of etcdctl's `--endpoints`), each entry as
/// [`endpoint`]. The value stays the string given.
pub fn endpoints(s: &str) -> Result<String, String> {
    if !s.contains(',') {
        return endpoint(s);
    }
    for (i, e) in s.split(',').enumerate() {
        check(e).map_err(|why| format!("entry {} of HOST:PORT[,HOST:PORT...]: {why}", i + 1))?;
    }
    Ok(s.to_string())
}

fn check(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("expected HOST:PORT (got {})", quoted(s)));
    };
    if host.is_empty() {
        return Err(format!("expected HOST:PORT, the host is empty (got {})", quoted(s)));
    }
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || matches!(c, '/' | '@' | ',');
    let bracketed = host.len() > 2 && host.starts_with('[') && host.ends_with(']');
    if host.chars().any(bad_char) || (host.contains(':') && !bracketed) {
        return Err(format!(
            "expected HOST:PORT, {} is not a host name or address (IPv6 goes in brackets)",
            quoted(host)
        ));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("expected HOST:PORT, the port must be 1 to 65535 (got {})", quoted(port))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_host_and_port_1_to_65535() {
        for ok in ["127.0.0.1:7001", "localhost:1", "node-1.example.com:65535", "[::1]:7001"] {
            assert_eq!(endpoint(ok).as_deref(), Ok(ok));
        }
        for (bad, why) in [
            ("127.0.0.1:99999", "port must be 1 to 65535"),
            ("127.0.0.1:0", "port must be 1 to 65535"),
            ("127.0.0.1:", "port must be 1 to 65535"),
            ("127.0.0.1:x", "port must be 1 to 65535"),
            (":0", "host is empty"),
            (":7001", "host is empty"),
            ("", "expected HOST:PORT"),
            ("garbage", "expected HOST:PORT"),
            ("::1:7001", "IPv6 goes in brackets"),
            ("http://a:1", "not a host name"),
            ("a b:1", "not a host name"),
            ("a,b:1", "not a host name"),
        ] {
            let e = endpoint(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        assert!(endpoint(&format!("{}:1", "h".repeat(100_000))).is_ok(), "length is the resolver's business");
        assert!(endpoint(&format!("{}:x", "h".repeat(100_000))).unwrap_err().len() < 200);
    }

    #[test]
    fn endpoint_lists_check_every_entry() {
        assert!(endpoints("127.0.0.1:7001").is_ok());
        assert_eq!(endpoints(":0").unwrap_err(), "expected HOST:PORT, the host is empty (got \":0\")");
        assert_eq!(endpoints("a:1,b:2,[::1]:3").as_deref(), Ok("a:1,b:2,[::1]:3"));
        assert_eq!(
            endpoints("a:1,b:0").unwrap_err(),
            "entry 2 of HOST:PORT[,HOST:PORT...]: expected HOST:PORT, the port must be 1 to 65535 (got \"0\")"
        );
        assert!(endpoints("a:1,").unwrap_err().starts_with("entry 2 "));
        assert!(endpoints(",a:1").unwrap_err().starts_with("entry 1 "));
    }
}
