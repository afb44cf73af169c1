//! The two systems under test behind one `put`: a blixard node (our gRPC API) or an etcd member
//! (the v3 KV API through `etcd-client`). Both are tonic clients over one HTTP/2 connection per
//! endpoint, so the client side costs the same; with TLS, both through tonic's `ClientTlsConfig`
//! (see [`crate::tls`]).

use std::time::Duration;

use anyhow::{bail, Context};
use blixard_core::ClientSession;
use blixard_proto::v1::cluster_service_client::ClusterServiceClient;
use blixard_proto::v1::kv_service_client::KvServiceClient;
use blixard_proto::v1::vm_service_client::VmServiceClient;
use blixard_proto::v1::{ClusterStatusRequest, CreateVmRequest, PutRequest, VmSpec};
use tonic::transport::{Channel, Endpoint};

use crate::tls::Tls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
    /// The put was re-sent to another node (never, since every blixard node forwards writes;
    /// kept for the report's column).
    pub redirected: bool,
}

/// A cheap-to-clone handle that writes through one endpoint. Each blixard writer is a client
/// session of its own (a clone gets a new one), as a real client's is: every put carries its
/// session, like the CLI's.
#[allow(clippy::large_enum_variant)] // one per client task, never moved in a hot loop
pub enum Writer {
    Blixard {
        kv: KvServiceClient<Channel>,
        session: ClientSession,
    },
    /// Each "put" creates a (stopped) VM of a fresh name: a full placement through Raft.
    BlixardVm {
        vm: VmServiceClient<Channel>,
        session: ClientSession,
        prefix: u64,
        n: u64,
    },
    Etcd(Box<etcd_client::KvClient>),
}

impl Clone for Writer {
    fn clone(&self) -> Self {
        match self {
            Writer::Blixard { kv, .. } => {
                Writer::Blixard { kv: kv.clone(), session: ClientSession::new(rand::random::<u128>()) }
            }
            Writer::BlixardVm { vm, .. } => Writer::BlixardVm {
                vm: vm.clone(),
                session: ClientSession::new(rand::random::<u128>()),
                prefix: rand::random::<u64>(),
                n: 0,
            },
            Writer::Etcd(kv) => Writer::Etcd(kv.clone()),
        }
    }
}

fn blixard_endpoint(addr: &str, tls: &Tls) -> anyhow::Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
    let ep = Endpoint::from_shared(url)
        .with_context(|| format!("invalid endpoint {addr:?}"))?
        .connect_timeout(CONNECT_TIMEOUT);
    Ok(match tls {
        Some(t) => ep.tls_config(t.config()).with_context(|| format!("TLS configuration for {addr}"))?,
        None => ep,
    })
}

pub async fn blixard_channel(addr: &str, tls: &Tls) -> anyhow::Result<Channel> {
    blixard_endpoint(addr, tls)?.connect().await.with_context(|| format!("cannot connect to blixard at {addr}"))
}

async fn etcd_client(addr: &str, tls: &Tls) -> anyhow::Result<etcd_client::Client> {
    let mut opts = etcd_client::ConnectOptions::new().with_connect_timeout(CONNECT_TIMEOUT);
    if let Some(t) = tls {
        // etcd-client turns HOST:PORT into https://HOST:PORT when given TLS options.
        opts = opts.with_tls(t.config());
    }
    etcd_client::Client::connect([addr], Some(opts)).await.with_context(|| format!("cannot connect to etcd at {addr}"))
}

impl Writer {
    /// Connects to `addr` (HOST:PORT) now, so connection setup is never part of a measurement.
    pub async fn connect(target: Target, addr: &str, tls: &Tls) -> anyhow::Result<Writer> {
        Ok(match target {
            Target::Blixard => Writer::Blixard {
                kv: KvServiceClient::new(blixard_channel(addr, tls).await?),
                session: ClientSession::new(rand::random::<u128>()),
            },
            Target::Etcd => Writer::Etcd(Box::new(etcd_client(addr, tls).await?.kv_client())),
        })
    }

    /// A writer whose every `put` is a `vm create` of a new stopped VM (1 vCPU, 64 MiB).
    pub async fn vm_creates(addr: &str, tls: &Tls) -> anyhow::Result<Writer> {
        Ok(Writer::BlixardVm {
            vm: VmServiceClient::new(blixard_channel(addr, tls).await?),
            session: ClientSession::new(rand::random::<u128>()),
            prefix: rand::random::<u64>(),
            n: 0,
        })
    }

    pub async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<PutOk> {
        match self {
            Writer::BlixardVm { vm, session, prefix, n } => {
                *n += 1;
                let spec =
                    VmSpec { name: format!("b{prefix:016x}-{n}"), vcpus: 1, memory_mib: 64, ..Default::default() };
                let s = session.begin();
                let mut req = tonic::Request::new(CreateVmRequest { spec: Some(spec), ..Default::default() });
                blixard_proto::rpc::set_session(req.metadata_mut(), &s);
                let r = vm.create_vm(req).await;
                session.end(s.seq);
                let _ = (key, value);
                match r {
                    Ok(_) => Ok(PutOk::default()),
                    Err(st) => bail!("{}: {}", code_name(st.code()), st.message()),
                }
            }
            Writer::Etcd(kv) => {
                kv.put(key, value, None).await?;
                Ok(PutOk::default())
            }
            Writer::Blixard { kv, session } => {
                let s = session.begin();
                let mut req = tonic::Request::new(PutRequest { key, value });
                blixard_proto::rpc::set_session(req.metadata_mut(), &s);
                let r = kv.put(req).await;
                session.end(s.seq);
                match r {
                    Ok(_) => Ok(PutOk::default()),
                    Err(st) => bail!("{}: {}", code_name(st.code()), st.message()),
                }
            }
        }
    }
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

/// The endpoint (one of `endpoints`) of the current leader, and its id in that system.
pub async fn find_leader(target: Target, endpoints: &[String], tls: &Tls) -> anyhow::Result<(String, u64)> {
    match target {
        Target::Blixard => {
            let mut last = None;
            for ep in endpoints {
                let ch = match blixard_channel(ep, tls).await {
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
                let Ok(mut c) = etcd_client(ep, tls).await else { continue };
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
