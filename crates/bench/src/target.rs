//! The two systems under test behind one `put`: a blixard node (our gRPC API) or an etcd member
//! (the v3 KV API through `etcd-client`). Both are tonic clients over one HTTP/2 connection per
//! endpoint, so the client side costs the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use blixard_proto::v1::cluster_service_client::ClusterServiceClient;
use blixard_proto::v1::kv_service_client::KvServiceClient;
use blixard_proto::v1::{ClusterStatusRequest, PutRequest};
use tonic::transport::{Channel, Endpoint};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Metadata a blixard follower sets on "not the leader" (see crates/node/src/status.rs).
const LEADER_ADDR_KEY: &str = "x-blixard-leader-addr";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Blixard,
    Etcd,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Blixard => "blixard",
            Target::Etcd => "etcd",
        }
    }
}

/// What one put did besides succeeding.
#[derive(Clone, Copy, Debug, Default)]
pub struct PutOk {
    /// A blixard follower answered "not the leader" and the put was re-sent to the leader it named.
    pub redirected: bool,
}

/// A cheap-to-clone handle that writes through one endpoint.
#[derive(Clone)]
pub enum Writer {
    Blixard { kv: KvServiceClient<Channel>, leaders: Arc<Mutex<HashMap<String, KvServiceClient<Channel>>>> },
    Etcd(Box<etcd_client::KvClient>),
}

fn blixard_endpoint(addr: &str) -> anyhow::Result<Endpoint> {
    let url = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    Ok(Endpoint::from_shared(url)
        .with_context(|| format!("invalid endpoint {addr:?}"))?
        .connect_timeout(CONNECT_TIMEOUT))
}

async fn blixard_channel(addr: &str) -> anyhow::Result<Channel> {
    blixard_endpoint(addr)?.connect().await.with_context(|| format!("cannot connect to blixard at {addr}"))
}

async fn etcd_client(addr: &str) -> anyhow::Result<etcd_client::Client> {
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    etcd_client::Client::connect([addr], Some(opts)).await.with_context(|| format!("cannot connect to etcd at {addr}"))
}

impl Writer {
    /// Connects to `addr` (HOST:PORT) now, so connection setup is never part of a measurement.
    pub async fn connect(target: Target, addr: &str) -> anyhow::Result<Writer> {
        Ok(match target {
            Target::Blixard => Writer::Blixard {
                kv: KvServiceClient::new(blixard_channel(addr).await?),
                leaders: Arc::new(Mutex::new(HashMap::new())),
            },
            Target::Etcd => Writer::Etcd(Box::new(etcd_client(addr).await?.kv_client())),
        })
    }

    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<PutOk> {
        match self {
            Writer::Etcd(kv) => {
                kv.put(key, value, None).await?;
                Ok(PutOk::default())
            }
            Writer::Blixard { kv, leaders } => {
                let req = PutRequest { key, value };
                match kv.put(req.clone()).await {
                    Ok(_) => Ok(PutOk::default()),
                    Err(s) => {
                        // A node that does not forward writes names the leader; follow it once.
                        let Some(leader) = s.metadata().get(LEADER_ADDR_KEY).and_then(|v| v.to_str().ok()) else {
                            bail!("{}: {}", code_name(s.code()), s.message());
                        };
                        let mut to_leader = {
                            let mut m = leaders.lock().unwrap_or_else(|p| p.into_inner());
                            match m.get(leader) {
                                Some(c) => c.clone(),
                                None => {
                                    let c = KvServiceClient::new(blixard_endpoint(leader)?.connect_lazy());
                                    m.insert(leader.to_string(), c.clone());
                                    c
                                }
                            }
                        };
                        match to_leader.put(req).await {
                            Ok(_) => Ok(PutOk { redirected: true }),
                            Err(s) => bail!("{} (via leader {leader}): {}", code_name(s.code()), s.message()),
                        }
                    }
                }
            }
        }
    }
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

/// The endpoint (one of `endpoints`) of the current leader, and its id in that system.
pub async fn find_leader(target: Target, endpoints: &[String]) -> anyhow::Result<(String, u64)> {
    match target {
        Target::Blixard => {
            let mut last = None;
            for ep in endpoints {
                let ch = match blixard_channel(ep).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                };
                let s = match ClusterServiceClient::new(ch).status(ClusterStatusRequest {}).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => {
                        last = Some(anyhow::anyhow!("status from {ep}: {}", e.message()));
                        continue;
                    }
                };
                if s.leader_id == 0 {
                    last = Some(anyhow::anyhow!("{ep} knows no leader"));
                    continue;
                }
                let addr = s
                    .members
                    .iter()
                    .find(|m| m.id == s.leader_id)
                    .map(|m| m.addr.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or(s.leader_addr);
                return match endpoints.iter().find(|e| same_addr(e, &addr)) {
                    Some(e) => Ok((e.clone(), s.leader_id)),
                    None => bail!("leader {} is at {addr:?}, which is not one of the endpoints", s.leader_id),
                };
            }
            Err(last.unwrap_or_else(|| anyhow::anyhow!("no endpoints")))
        }
        Target::Etcd => {
            // Each member reports its own id and the leader's: the leader is the one whose are equal.
            let mut leader = 0;
            for ep in endpoints {
                let Ok(mut c) = etcd_client(ep).await else { continue };
                let Ok(s) = c.status().await else { continue };
                let me = s.header().map(|h| h.member_id()).unwrap_or(0);
                if s.leader() != 0 {
                    leader = s.leader();
                }
                if me != 0 && me == s.leader() {
                    return Ok((ep.clone(), me));
                }
            }
            if leader == 0 {
                bail!("no etcd member reports a leader");
            }
            bail!("the etcd leader {leader:x} is not one of the endpoints")
        }
    }
}

fn same_addr(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim_start_matches("http://").trim_end_matches('/').to_string();
    strip(a) == strip(b)
}
