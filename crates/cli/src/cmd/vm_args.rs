//! `vm create`'s flags and their parsing.

use blixard_core::quoted;
use blixard_proto::v1;

use super::vm::parse_duration;

#[derive(clap::Args)]
pub struct CreateArgs {
    /// DNS label: [a-z0-9-], 1–63 chars, starting with a letter.
    pub name: String,
    /// Virtual CPUs (1–32).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory in MiB (64–65536).
    #[arg(long = "memory", default_value_t = 128)]
    pub memory_mib: u32,
    /// Size of a per-VM disk, in GiB (1–1024).
    #[arg(long)]
    pub disk_gib: Option<u32>,
    /// Kernel: image:NAME (see `blixard image import`) or an absolute path inside an allowed
    /// directory of the node (--allow-image-dir).
    #[arg(long)]
    pub kernel: Option<String>,
    /// Initrd: image:NAME or an absolute path inside an allowed directory of the node.
    #[arg(long)]
    pub initrd: Option<String>,
    /// Root filesystem base image (qcow2): image:NAME or an absolute path inside an allowed
    /// directory of the node; its backing chain must stay inside them too.
    #[arg(long)]
    pub rootfs: Option<String>,
    /// Extra kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Forward a host TCP port to a guest port: HOST:GUEST (repeatable).
    #[arg(long = "port", value_parser = parse_port)]
    pub ports: Vec<(u32, u32)>,
    /// A label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// never | on-failure | always.
    #[arg(long = "restart", default_value = "on-failure")]
    pub restart_policy: String,
    /// HTTP health check: GUESTPORT/PATH (the guest port must be forwarded with --port).
    #[arg(long, value_name = "PORT/PATH", conflicts_with = "health_tcp")]
    pub health_http: Option<String>,
    /// TCP health check on a forwarded guest port.
    #[arg(long, value_name = "PORT")]
    pub health_tcp: Option<u32>,
    /// Time between health checks.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub health_interval: std::time::Duration,
    /// Failed checks in a row that make the VM unhealthy (it is then restarted per --restart).
    #[arg(long, default_value_t = 3)]
    pub health_threshold: u32,
    /// Place the VM on this node (default: the scheduler picks one).
    #[arg(long)]
    pub node: Option<u64>,
    /// Start it right away (default: created stopped).
    #[arg(long)]
    pub start: bool,
    /// A condition on node labels (repeatable): K=V, K!=V, 'K in (A,B)', 'K not in (A,B)',
    /// 'K exists', 'K missing'.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// A node feature the VM needs (repeatable): kvm.
    #[arg(long = "require", value_name = "FEATURE")]
    pub require: Vec<String>,
    /// Anti-affinity group: no two VMs of the group on one node (with --soft, only avoided).
    #[arg(long)]
    pub group: Option<String>,
    /// Make --group's anti-affinity a preference instead of a rule.
    #[arg(long, requires = "group")]
    pub soft: bool,
    /// Spread VMs (of the group, else all) over the values of this node label.
    #[arg(long, value_name = "LABEL")]
    pub spread: Option<String>,
    /// binpack (fill the fullest node that fits) or spread (the emptiest).
    #[arg(long, default_value = "binpack")]
    pub strategy: String,
    /// When its node is lost: restart-elsewhere (from a fresh disk) or wait for the node.
    #[arg(long, default_value = "restart-elsewhere")]
    pub on_node_loss: String,
    /// Refuse the VM if no node can take it now (default: it waits as pending).
    #[arg(long)]
    pub no_queue: bool,
    /// Only show where it would go and why not elsewhere; create nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl CreateArgs {
    /// The wire spec these flags describe.
    pub fn spec(&self) -> anyhow::Result<v1::VmSpec> {
        let placement = v1::Placement {
            constraints: self.constraints.clone(),
            require: self.require.clone(),
            group: self.group.clone().unwrap_or_default(),
            hard: self.group.is_some() && !self.soft,
            spread: self.spread.clone().unwrap_or_default(),
            strategy: self.strategy.clone(),
            on_node_loss: self.on_node_loss.clone(),
        };
        Ok(v1::VmSpec {
            name: self.name.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            disk_gib: self.disk_gib,
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone().unwrap_or_default(),
            rootfs: self.rootfs.clone().unwrap_or_default(),
            cmdline: self.cmdline.clone().unwrap_or_default(),
            ports: self.ports.iter().map(|&(host, guest)| v1::PortForward { host, guest }).collect(),
            labels: self.labels.iter().cloned().collect(),
            restart_policy: self.restart_policy.clone(),
            health: health_arg(self)?,
            placement: Some(placement),
        })
    }
}

fn parse_port(s: &str) -> Result<(u32, u32), String> {
    let (h, g) = s.split_once(':').ok_or_else(|| format!("expected HOST:GUEST, got {}", quoted(s)))?;
    let p = |x: &str| x.parse::<u32>().map_err(|_| format!("{} is not a port number", quoted(x)));
    Ok((p(h)?, p(g)?))
}

fn health_arg(a: &CreateArgs) -> anyhow::Result<Option<v1::HealthCheck>> {
    let interval_ms = u32::try_from(a.health_interval.as_millis()).unwrap_or(u32::MAX);
    let (kind, port, path) = match (&a.health_http, a.health_tcp) {
        (Some(spec), _) => {
            let (port, path) = spec.split_once('/').unwrap_or((spec.as_str(), ""));
            let port: u32 = port
                .parse()
                .map_err(|_| anyhow::anyhow!("invalid --health-http: expected PORT/PATH, got {}", quoted(spec)))?;
            ("http", port, format!("/{path}"))
        }
        (None, Some(port)) => ("tcp", port, String::new()),
        (None, None) => return Ok(None),
    };
    Ok(Some(v1::HealthCheck { kind: kind.into(), port, path, interval_ms, threshold: a.health_threshold }))
}

pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got {}", quoted(s)))?;
    Ok((k.to_string(), v.to_string()))
}
