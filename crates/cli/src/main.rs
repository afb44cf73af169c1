//! `blixard`: `blixard node ...` runs the daemon; every other subcommand is a gRPC client.
//!
//! Exit codes: 0 success; 1 an error, with one line on stderr; 2 a usage error (clap).

mod addr;
mod client;
mod cmd;
mod output;
mod page;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "blixard", version, about = "Blixard: a microVM orchestrator in one binary")]
pub struct Cli {
    /// Address of any node of the cluster: HOST:PORT (port 1–65535).
    #[arg(long, global = true, env = "BLIXARD_ADDR", default_value = "127.0.0.1:7001", value_parser = addr::endpoints)]
    pub addr: String,
    /// Mutual TLS: a directory with ca.pem, client.pem and client-key.pem (`blixard cert
    /// client`); for `blixard node`, the node's ca.pem, node.pem and node-key.pem (`blixard cert
    /// node`).
    #[arg(long, global = true, env = "BLIXARD_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Top,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
pub enum Top {
    /// Run a node (the daemon).
    Node(Box<cmd::node::NodeTop>),
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(cmd::cluster::ClusterCmd),
    /// The replicated key/value store.
    #[command(subcommand)]
    Kv(cmd::kv::KvCmd),
    /// Virtual machines.
    #[command(subcommand)]
    Vm(cmd::vm::VmCmd),
    /// Batch tasks: commands run to completion on a node.
    #[command(subcommand)]
    Task(cmd::task::TaskCmd),
    /// The guest image.
    #[command(subcommand)]
    Image(cmd::image::ImageCmd),
    /// Backups of the replicated state, and new clusters restored from them.
    #[command(subcommand)]
    Backup(cmd::backup::BackupCmd),
    /// The cluster CA, and node and client certificates.
    #[command(subcommand)]
    Cert(cmd::cert::CertCmd),
    /// The fencing watchdog a node starts for itself: kills the node's VMs when its lease
    /// runs out while the daemon is gone.
    #[command(hide = true)]
    FenceWatch {
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long)]
        daemon_pid: i32,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = cmd::cert::TLS_DIR.set(cli.tls_dir.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Top::Node(top) => match (top.cmd, top.daemon) {
                (Some(c), _) => cmd::nodes::run(&cli.addr, cli.output, c).await,
                (None, Some(a)) => cmd::node::run(a).await,
                (None, None) => Err(anyhow::anyhow!(
                    "blixard node needs --id and --data-dir (or a subcommand: list, get, drain, eligibility)"
                )),
            },
            Top::Cluster(c) => cmd::cluster::run(&cli.addr, cli.output, c).await,
            Top::Kv(c) => cmd::kv::run(&cli.addr, cli.output, c).await,
            Top::Vm(c) => cmd::vm::run(&cli.addr, cli.output, c).await,
            Top::Task(c) => cmd::task::run(&cli.addr, cli.output, c).await,
            Top::Image(c) => cmd::image::run(c).await,
            Top::Cert(c) => cmd::cert::run(c),
            Top::Backup(c) => cmd::backup::run(&cli.addr, cli.output, c).await,
            Top::FenceWatch { data_dir, daemon_pid } => blixard_node::liveness::watchdog::run(&data_dir, daemon_pid),
            Top::Completions { shell } => {
                clap_complete::generate(shell, &mut Cli::command(), "blixard", &mut std::io::stdout());
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
