//! One invocation: connect to one system, preload the key space, run the steps, append their results.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::stats::{load_average, own_cpu_seconds, process_context_switches, process_cpu_seconds, quantile};
use crate::target::{Op, Target};

/// Keys are 8 bytes (hex of an index); values 256 bytes.
const VALUE_BYTES: usize = 256;
/// Odd, so `(offset + i * STRIDE) % keys` visits every key of a power-of-two key space.
const STRIDE: u64 = 7919;

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long, value_parser = ["domicile", "etcd"])]
    system: String,
    /// Domicile: `nID@127.0.0.1:PORT,...`; etcd: `https://127.0.0.1:PORT,...`.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    /// Domicile: the directory with `ca.pem` and `client-NAME.pem/.key`; etcd: with `ca.pem`, `client.pem/.key`.
    #[arg(long)]
    certs: PathBuf,
    #[arg(long, default_value = "bench")]
    client_name: String,
    /// Steps as `op:clients:operations`, e.g. `put:1:3000,get:256:40000`.
    #[arg(long, value_delimiter = ',', required = true)]
    steps: Vec<String>,
    /// At most this many connections (clients share them round-robin); a step uses min(clients, this).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Distinct keys; every get reads one the preload wrote. A power of two.
    #[arg(long, default_value_t = 4096)]
    keys: u64,
    /// Write every key once before the steps (needed before gets on a fresh cluster).
    #[arg(long)]
    preload: bool,
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// Replica groups serving the keys (a label for the groups mode).
    #[arg(long, default_value_t = 1)]
    groups: u32,
    /// The server processes whose CPU time is measured.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// etcd: talk to all endpoints instead of the leader only.
    #[arg(long)]
    etcd_all_endpoints: bool,
    #[arg(long)]
    out: PathBuf,
}

struct Step {
    op: Op,
    clients: usize,
    operations: u64,
}

fn parse_step(text: &str) -> anyhow::Result<Step> {
    let parts: Vec<&str> = text.split(':').collect();
    let [op, clients, operations] = parts[..] else {
        bail!("step `{text}`: expected op:clients:operations");
    };
    let op = match op {
        "put" => Op::Put,
        "get" => Op::Get,
        other => bail!("step `{text}`: unknown op `{other}`"),
    };
    Ok(Step {
        op,
        clients: clients.parse().context("clients")?,
        operations: operations.parse().context("operations")?,
    })
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.keys.is_power_of_two(), "--keys must be a power of two");
    let steps: Vec<Step> = args
        .steps
        .iter()
        .map(|s| parse_step(s))
        .collect::<Result<_, _>>()?;
    let connections_max = steps
        .iter()
        .map(|s| s.clients)
        .max()
        .unwrap_or(1)
        .min(args.connections)
        .max(1);
    let target = Arc::new(connect(&args, connections_max).await?);
    let value = Arc::new(
        (0..VALUE_BYTES)
            .map(|i| (i * 131 % 251) as u8)
            .collect::<Vec<u8>>(),
    );

    if args.preload {
        let mut missing = u64::MAX;
        for _ in 0..3 {
            let outcome = drive(&target, Op::Put, 64, args.keys, args.keys, 0, &value).await;
            missing = outcome.errors;
            if missing == 0 {
                break;
            }
            eprintln!(
                "preload: {} errors (first: {}), again",
                outcome.errors, outcome.first_error
            );
        }
        anyhow::ensure!(missing == 0, "{}: the preload failed", args.system);
    }

    let mut output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.out)?;
    for (index, step) in steps.iter().enumerate() {
        let offset = u64::from(args.round) * 1_000_003 + index as u64 * 10_007;
        // Warm-up: connections open, leaders known, caches filled; not measured.
        let warm = (step.operations / 10).clamp(step.clients as u64 * 2, 2_000);
        drive(&target, step.op, step.clients, warm, args.keys, offset, &value).await;

        let load = load_average();
        let servers_before: f64 = args.pids.iter().map(|&pid| process_cpu_seconds(pid)).sum();
        let switches_before: u64 = args.pids.iter().map(|&pid| process_context_switches(pid)).sum();
        let own_before = own_cpu_seconds();
        let outcome = drive(
            &target,
            step.op,
            step.clients,
            step.operations,
            args.keys,
            offset + warm,
            &value,
        )
        .await;
        let server_cpu = args.pids.iter().map(|&pid| process_cpu_seconds(pid)).sum::<f64>() - servers_before;
        let client_cpu = own_cpu_seconds() - own_before;
        let switches = args
            .pids
            .iter()
            .map(|&pid| process_context_switches(pid))
            .sum::<u64>()
            - switches_before;

        let mut latencies = outcome.latencies_us;
        latencies.sort_unstable();
        let seconds = outcome.elapsed.as_secs_f64();
        let ok = latencies.len() as f64;
        let record = json!({
            "kind": "step",
            "system": args.system,
            "round": args.round,
            "groups": args.groups,
            "op": step.op,
            "clients": step.clients,
            "connections": step.clients.min(target.connections()),
            "operations": step.operations,
            "errors": outcome.errors,
            "first_error": outcome.first_error,
            "seconds": seconds,
            "ops_per_s": ok / seconds,
            "p50_us": quantile(&latencies, 0.50),
            "p99_us": quantile(&latencies, 0.99),
            "p999_us": quantile(&latencies, 0.999),
            "max_us": latencies.last().copied().unwrap_or(0),
            "server_cpu_s": server_cpu,
            "client_cpu_s": client_cpu,
            "server_context_switches": switches,
            "load_avg": load,
        });
        eprintln!(
            "{} round {} {:?} x{}: {:.0} ops/s, p50 {} us, p99 {} us, p99.9 {} us, server CPU {:.2} s, {:.1} server context switches/op, client CPU {:.2} s, errors {}",
            args.system,
            args.round,
            step.op,
            step.clients,
            ok / seconds,
            quantile(&latencies, 0.50),
            quantile(&latencies, 0.99),
            quantile(&latencies, 0.999),
            server_cpu,
            switches as f64 / step.operations as f64,
            client_cpu,
            outcome.errors
        );
        writeln!(output, "{record}")?;
    }
    Ok(())
}

async fn connect(args: &RunArgs, connections: usize) -> anyhow::Result<Target> {
    match args.system.as_str() {
        "domicile" => {
            // The nodes may still be electing: retry the connection for a bounded time.
            let started = Instant::now();
            loop {
                match Target::domicile(&args.endpoints, &args.certs, &args.client_name, connections).await {
                    Ok(target) => return Ok(target),
                    Err(error) if started.elapsed() < Duration::from_secs(30) => {
                        eprintln!("domicile not ready ({error:#}); retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        #[cfg(feature = "etcd")]
        _ => {
            let endpoints = if args.etcd_all_endpoints {
                args.endpoints.clone()
            } else {
                vec![crate::target::etcd_leader(&args.endpoints, &args.certs).await?]
            };
            Target::etcd(&endpoints, &args.certs, connections).await
        }
        #[cfg(not(feature = "etcd"))]
        _ => bail!("built without the `etcd` feature: `cargo build -p cluster-bench --features etcd`"),
    }
}

struct Outcome {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: String,
    elapsed: Duration,
}

/// `operations` operations over `clients` concurrent tasks; operation `i` uses key
/// `(offset + i * STRIDE) % keys`.
async fn drive(
    target: &Arc<Target>,
    op: Op,
    clients: usize,
    operations: u64,
    keys: u64,
    offset: u64,
    value: &Arc<Vec<u8>>,
) -> Outcome {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for task in 0..clients {
        let (target, next, value) = (target.clone(), next.clone(), value.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let (mut errors, mut first_error) = (0u64, String::new());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= operations {
                    break;
                }
                let key = format!("{:08x}", (offset + i * STRIDE) % keys);
                let began = Instant::now();
                match target.op(task, op, &key, &value).await {
                    Ok(()) => latencies.push(began.elapsed().as_micros().min(u32::MAX as u128) as u32),
                    Err(error) => {
                        errors += 1;
                        if first_error.is_empty() {
                            first_error = format!("{error:#}");
                        }
                    }
                }
            }
            (latencies, errors, first_error)
        }));
    }
    let mut outcome = Outcome {
        latencies_us: Vec::with_capacity(operations as usize),
        errors: 0,
        first_error: String::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (latencies, errors, first_error) = task.await.expect("a load task panicked");
        outcome.latencies_us.extend(latencies);
        outcome.errors += errors;
        if outcome.first_error.is_empty() {
            outcome.first_error = first_error;
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}
