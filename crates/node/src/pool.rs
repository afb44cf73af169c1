//! One lazily-connected gRPC channel per peer address, shared by the Raft transport and
//! request forwarding (never a channel per RPC).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

#[derive(Default)]
pub struct ChannelPool {
    channels: Mutex<HashMap<String, Channel>>,
}

impl ChannelPool {
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
        let c = ep.connect_lazy();
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
