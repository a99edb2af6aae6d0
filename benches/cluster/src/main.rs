//! The cluster benchmark's load generator: the same workload against Domicile (through its client library)
//! and etcd (through the `etcd-client` crate), one system per invocation, results as JSON lines that
//! `report` turns into the Markdown table. `benches/cluster.sh` starts the clusters and calls it; run that.
//!
//! Every step is a fixed number of operations (after a short unmeasured warm-up) spread over a fixed number
//! of concurrent clients; each operation's latency is recorded, and the servers' CPU time is read from
//! `/proc/PID/stat` before and after, so CPU per operation can be compared too.

// A benchmark binary: it reads the wall clock and spawns tokio tasks directly.
#![allow(clippy::disallowed_methods)]

mod certs;
mod fsync;
mod report;
mod stats;
mod target;
mod workload;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Domicile vs etcd: the load generator of benches/cluster.sh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, for etcd's TLS.
    EtcdCerts {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Prints `count` free loopback ports (TCP and UDP both free), one a line.
    FreePorts {
        #[arg(long)]
        count: usize,
    },
    /// Runs the steps against one system and appends one JSON line per step to `--out`.
    Run(workload::RunArgs),
    /// The single durable fsync loop with the same batching: the ceiling no durable write rate may pass.
    FsyncBaseline {
        /// A directory on the same file system as the clusters' data.
        #[arg(long)]
        dir: PathBuf,
        /// Entries per fdatasync, comma-separated (the client counts of the put steps).
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        batches: Vec<usize>,
        #[arg(long, default_value_t = 300)]
        entry_bytes: usize,
        #[arg(long, default_value_t = 1.5)]
        seconds: f64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Reads the JSON lines and prints the Markdown report.
    Report {
        #[arg(long)]
        input: PathBuf,
        /// The title line: date, machine, load.
        #[arg(long, default_value = "")]
        title: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::EtcdCerts { dir } => certs::write_etcd_certs(&dir),
        Command::FreePorts { count } => {
            for port in free_ports(count)? {
                println!("{port}");
            }
            Ok(())
        }
        Command::Run(args) => workload::run(args).await,
        Command::FsyncBaseline {
            dir,
            batches,
            entry_bytes,
            seconds,
            out,
        } => fsync::baseline(&dir, &batches, entry_bytes, seconds, &out),
        Command::Report { input, title } => {
            print!("{}", report::render(&input, &title)?);
            Ok(())
        }
    }
}

/// Ports free for both TCP and UDP on 127.0.0.1, all held until every one is found (so none repeats).
fn free_ports(count: usize) -> anyhow::Result<Vec<u16>> {
    let mut held = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..count * 20 {
        if ports.len() == count {
            break;
        }
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if let Ok(udp) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            ports.push(port);
            held.push((tcp, udp));
        }
    }
    anyhow::ensure!(ports.len() == count, "found only {} free ports", ports.len());
    Ok(ports)
}
