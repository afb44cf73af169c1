//! `blixard`: `blixard node ...` runs the daemon; every other subcommand is a gRPC client.
//!
//! Exit codes: 0 success; 1 an error, with one line on stderr; 2 a usage error (clap, or a bad
//! configuration file or environment variable).

mod addr;
mod client;
mod cmd;
mod config;
mod output;
mod page;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

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
    /// An API token (`blixard token create`; a new cluster's first one is in
    /// <data-dir>/admin.token), sent as `authorization: Bearer TOKEN`. For `blixard node`: the
    /// token it joins with.
    #[arg(long, global = true, env = "BLIXARD_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Print this invocation's request id on stderr (the node logs it with the request).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Top,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
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
    /// The node's configuration (`blixard node --config FILE`).
    #[command(subcommand)]
    Config(cmd::config::ConfigCmd),
    /// API tokens and their roles (viewer, operator, admin).
    #[command(subcommand)]
    Token(cmd::token::TokenCmd),
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

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let _ = client::TOKEN.set(cli.token.clone());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Exhaustive on purpose: a new subcommand must say whether it is a client of the cluster
    // (and so gets the client config and --tls-dir).
    let client_cmd = match &cli.command {
        Top::Node(top) => top.cmd.is_some(),
        Top::Cluster(_) | Top::Kv(_) | Top::Vm(_) | Top::Backup(_) | Top::Task(_) | Top::Token(_) => true,
        Top::Config(_) | Top::Image(_) | Top::Cert(_) | Top::FenceWatch { .. } | Top::Completions { .. } => false,
    };
    let result = rt.block_on(async {
        if client_cmd {
            // The client config: flags and environment variables win over it.
            let c = config::client::load(&env)?;
            let default = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue);
            if let Some(a) = c.addr.filter(|_| default("addr")) {
                cli.addr = a;
            }
            if let Some(o) = c.output.filter(|_| default("output")) {
                cli.output = o;
            }
            let _ = cmd::cert::TLS_DIR.set(cli.tls_dir.clone().or(c.tls_dir));
            if cli.verbose {
                eprintln!("request-id: {}", client::request_id());
            }
        }
        match cli.command {
            Top::Node(top) => match top.cmd {
                Some(c) => cmd::nodes::run(&cli.addr, cli.output, c).await,
                None => {
                    let m = matches.subcommand_matches("node").expect("the node subcommand");
                    let r = config::node::resolve(m, &matches, &env)?;
                    r.require()?;
                    let _ = cmd::cert::TLS_DIR.set(r.tls_dir());
                    cmd::node::run(r.args).await
                }
            },
            Top::Config(cmd::config::ConfigCmd::Show { .. }) => {
                let m = matches.subcommand_matches("config").and_then(|m| m.subcommand_matches("show"));
                let r = config::node::resolve(m.expect("config show"), &matches, &env)?;
                cmd::config::show(cli.output, &r);
                Ok(())
            }
            Top::Cluster(c) => cmd::cluster::run(&cli.addr, cli.output, c).await,
            Top::Kv(c) => cmd::kv::run(&cli.addr, cli.output, c).await,
            Top::Vm(c) => cmd::vm::run(&cli.addr, cli.output, c).await,
            Top::Task(c) => cmd::task::run(&cli.addr, cli.output, c).await,
            Top::Image(c) => cmd::image::run(c).await,
            Top::Cert(c) => {
                let _ = cmd::cert::TLS_DIR.set(cli.tls_dir.clone());
                cmd::cert::run(c)
            }
            Top::Token(c) => cmd::token::run(&cli.addr, cli.output, c).await,
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
        Err(e) if e.downcast_ref::<config::ConfigError>().is_some() => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
