//! One lazily-connected gRPC channel per peer address, shared by the Raft transport and
//! request forwarding (never a channel per RPC).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

#[derive(Default)]
pub struct ChannelPool {
    channels: Mutex<HashMap<String, Channel>>,
    /// Mutual TLS for every channel, when the node has a TLS dir (set before the first use).
    #[cfg(not(madsim))]
    tls: std::sync::OnceLock<std::sync::Arc<crate::tls::NodeTls>>,
}

impl ChannelPool {
    /// Channels connect with TLS from now on.
    #[cfg(not(madsim))]
    pub fn set_tls(&self, tls: std::sync::Arc<crate::tls::NodeTls>) {
        let _ = self.tls.set(tls);
    }

    pub fn get(&self, addr: &str) -> Result<Channel, tonic::Status> {
        let mut m = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|_| tonic::Status::internal(format!("bad peer address {addr:?}")))?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(15))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5));
        #[cfg(not(madsim))]
        let c = match self.tls.get() {
            Some(t) => ep.connect_with_connector_lazy(crate::tls::GrpcConnector::Node(t.clone())),
            None => ep.connect_lazy(),
        };
        #[cfg(madsim)]
        let c = ep.connect_lazy();
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
