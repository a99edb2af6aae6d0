//! `domicile`: the node, the operator verbs, the demo and the development tools, in one binary.

// The binary is the outermost layer: it owns the tokio runtime, reads the wall clock for timings shown to
// people and certificate validity, and spawns tasks directly. Library code the simulator runs may not.
#![allow(clippy::disallowed_methods)]

/// `print!` and `println!` for a report verb's output: see [`write_report`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_report(format_args!($($arg)*), false) };
}
macro_rules! outln {
    ($($arg:tt)*) => { $crate::write_report(format_args!($($arg)*), true) };
}

mod admin;
mod admin_api;
mod admin_faults;
mod admin_range_copy;
mod admin_shard_map;
mod admin_tls;
mod apply_cli;
mod apply_report;
mod audit_cli;
mod certs_cli;
mod cluster_view;
mod demo;
mod drill;
mod incident_sink;
mod metrics;
mod node;
mod node_config;
mod operator_cli;
mod placement_cli;
mod pseudonym_keys;
mod purge_log;
mod record_cli;
mod round_trip_watch;
mod shard_auto;
mod shard_cli;
mod shard_leaders;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use node_config::NodeConfig;

#[derive(Parser)]
#[command(
    name = "domicile",
    version,
    about = "A Raft-replicated key-value store fenced to jurisdictions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the verbs that call admin endpoints authenticate (`operator_cli`).
    #[command(flatten)]
    credentials: operator_cli::AdminCredentials,
}

#[derive(Subcommand)]
enum Command {
    /// Plan and check replica placement against a topology file.
    Placement {
        #[command(subcommand)]
        command: placement_cli::PlacementCommand,
    },
    /// Create a development cluster CA and node certificates that attest each node's site and country.
    Certs {
        #[command(subcommand)]
        command: certs_cli::CertsCommand,
    },
    /// Start a local 5-site cluster (real QUIC, TLS and disks under a temp dir) and show it working.
    Demo {
        /// Records to write through the client library.
        #[arg(long, default_value_t = 600)]
        records: u64,
    },
    /// Run a node (`--config node.toml`), or act on one (`drain`, `decommission`).
    Node {
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        #[command(subcommand)]
        action: Option<NodeAction>,
    },
    /// The cluster's groups, leaders and replicas by site, from the admin endpoints.
    Status {
        #[arg(long, default_value = "127.0.0.1:7200")]
        admin: String,
        #[arg(short, long, value_enum, default_value = "table")]
        output: operator_cli::Output,
    },
    /// Move replicas onto emptier nodes (a node or site added) until the healthy nodes inside each
    /// jurisdiction hold within one replica of each other, one step at a time through the fence.
    Rebalance {
        /// Only the groups fenced to this jurisdiction (as the topology spells it).
        #[arg(long)]
        jurisdiction: Option<String>,
        #[command(flatten)]
        run: apply_cli::RunArgs,
    },
    /// Site operations: `evacuate` moves every replica and leadership off a site.
    Site {
        #[command(subcommand)]
        command: apply_cli::SiteCommand,
    },
    /// Check a node's audit trail with the cluster CA alone, or export its entries for a monitor.
    Audit {
        #[command(subcommand)]
        command: audit_cli::AuditCommand,
    },
    /// A user's records through the client library, under a client service's certificate and grants.
    Record {
        #[command(subcommand)]
        command: record_cli::RecordCommand,
    },
    /// Rehearse a failure on a live cluster (a site's outage, a leader's loss, a partition) under a client
    /// workload, and report per group the time to a new leader, writes lost, errors, latency,
    /// linearizability and residency.
    Drill {
        #[command(subcommand)]
        command: drill::DrillCommand,
    },
    /// Split or move a range of a jurisdiction's shard map, with its records, while it serves.
    Shard {
        #[command(subcommand)]
        command: shard_cli::ShardCommand,
    },
    /// Leadership operations.
    Leader {
        #[command(subcommand)]
        command: operator_cli::LeaderCommand,
    },
    /// The deterministic simulator: run or sweep seeds of a scenario against the real Raft code.
    #[cfg(feature = "sim")]
    Sim {
        #[command(subcommand)]
        command: simulator::cli::SimCommand,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Move every leadership off a node (inside each group's jurisdiction), e.g. before maintenance.
    Drain {
        node: placement::NodeId,
        #[arg(long, default_value = "127.0.0.1:7200")]
        admin: String,
    },
    /// Move every replica and leadership off a node, onto healthy nodes inside each group's jurisdiction,
    /// and wait for its copies to be purged: before the node is retired for good.
    Decommission {
        node: placement::NodeId,
        #[command(flatten)]
        run: apply_cli::RunArgs,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// A node's runtime: `worker_threads` workers if the node's config says so, one per core if not.
fn node_runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = worker_threads {
        builder.worker_threads(workers);
    }
    Ok(builder.enable_all().build()?)
}

/// Exit codes: 0 success; 1 the answer is "no" (a refusal, no compliant placement); 2 bad input.
/// A node's log: `info`, less openraft's per-request network warnings — each replication stream and
/// heartbeat worker warns on every failed send, several lines a second for each peer that is down. The
/// node logs a peer once as it becomes unreachable and once as it is back (`raft::network`); errors
/// still show. `RUST_LOG` replaces the whole filter.
const NODE_LOG_FILTER: &str = "info,openraft::replication=error,openraft::core::heartbeat=error,\
                               openraft::engine::handler::replication_handler=error";

/// Logs to stderr, filtered by `RUST_LOG` or the command's default.
fn init_logging(command: &Command) {
    let default_filter = match command {
        // A simulated run prints its own summary; library logs only on request, in simulated time.
        #[cfg(feature = "sim")]
        Command::Sim { .. } => return simulator::cli::init_logging(),
        Command::Node { action: None, .. } => NODE_LOG_FILTER,
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Writes a report verb's output on stdout. A reader that closed the pipe (`domicile status | head -1`)
/// ends the command quietly, as a Unix tool's would, with status 141 (128 + SIGPIPE), not a panic.
///
/// SIGPIPE itself stays ignored (Rust's default), in every command: the report verbs hold HTTPS
/// connections to nodes, and a node that dies with a request unread resets its connection: a write on
/// that connection after the reset raises SIGPIPE. A drill that let SIGPIPE end it died so,
/// silently, between a fault that SIGKILLed a node and the heal that starts it again
/// (`tests/drill.rs`, the multi-host suite). A write to a reset connection must be an error the command
/// handles; only a closed stdout ends it.
pub(crate) fn write_report(text: std::fmt::Arguments, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(text)
        .and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(error) => {
            eprintln!("error: can't write the report on stdout: {error}");
            std::process::exit(1)
        }
    }
}

/// Whether a command calls admin endpoints with the operator's credentials. Not the demo: it makes its
/// own cluster CA and operator.
fn calls_admin_endpoints(command: &Command) -> bool {
    match command {
        Command::Demo { .. }
        | Command::Certs { .. }
        | Command::Audit { .. }
        | Command::Record { .. }
        | Command::Node { action: None, .. } => false,
        #[cfg(feature = "sim")]
        Command::Sim { .. } => false,
        _ => true,
    }
}

fn main() -> ExitCode {
    // The process's one rustls crypto provider, ring, for whatever builds a TLS configuration without
    // naming one (reqwest's, in the incident webhook and the admin client).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    init_logging(&cli.command);
    if calls_admin_endpoints(&cli.command)
        && let Err(error) = operator_cli::use_credentials(&cli.credentials)
    {
        eprintln!("error: {error:#}");
        return ExitCode::from(2);
    }
    let outcome = match cli.command {
        Command::Placement { command } => placement_cli::run(command),
        Command::Certs { command } => certs_cli::run(command),
        Command::Demo { records } => runtime().and_then(|runtime| runtime.block_on(demo::run(records))),
        Command::Node { config, action } => match (config, action) {
            (_, Some(NodeAction::Drain { node, admin })) => {
                runtime().and_then(|runtime| runtime.block_on(operator_cli::drain(&admin, node)))
            }
            (_, Some(NodeAction::Decommission { node, run })) => {
                apply_cli::run_blocking(apply_cli::Scope::Decommission { node }, run)
            }
            (Some(path), None) => NodeConfig::load(&path).and_then(|config| {
                node_runtime(config.worker_threads).and_then(|runtime| runtime.block_on(node::run(config)))
            }),
            (None, None) => Err(anyhow::anyhow!(
                "give --config node.toml to run a node (see deploy/node.example.toml)"
            )),
        },
        Command::Status { admin, output } => {
            runtime().and_then(|runtime| runtime.block_on(operator_cli::status(&admin, output)))
        }
        Command::Site {
            command: apply_cli::SiteCommand::Evacuate { site, run },
        } => apply_cli::run_blocking(apply_cli::Scope::Evacuate { site }, run),
        Command::Rebalance { jurisdiction, run } => {
            apply_cli::run_blocking(apply_cli::Scope::Rebalance { jurisdiction }, run)
        }
        Command::Audit { command } => audit_cli::run(command),
        Command::Shard { command } => shard_cli::run_blocking(command),
        Command::Drill { command } => drill::run_blocking(command),
        Command::Record { command } => {
            let certs = cli.credentials.certs_dir.clone();
            runtime().and_then(|runtime| runtime.block_on(record_cli::run(command, certs)))
        }
        Command::Leader {
            command: operator_cli::LeaderCommand::Move { admin, group, to },
        } => runtime().and_then(|runtime| runtime.block_on(operator_cli::move_leader(&admin, &group, to))),
        #[cfg(feature = "sim")]
        Command::Sim { command } => simulator::cli::run(command),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
