//! `split-bench`: a group with `--records` records split by `domicile shard split` on real node processes
//! while clients keep writing; see `split.rs` and `benches/split.sh`.

// A benchmark binary: it reads the wall clock and spawns threads and tokio tasks directly.
#![allow(clippy::disallowed_methods)]

mod split;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "A shard split at volume: copy rate, unavailability, memory, write latency, correctness")]
struct Cli {
    /// The `domicile` binary (a release build).
    #[arg(long, default_value = "target/release/domicile")]
    domicile: PathBuf,
    /// An empty directory for the cluster's files and data, not on tmpfs.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    #[arg(long, default_value_t = 128)]
    in_flight: usize,
    #[arg(long, default_value_t = 8)]
    live_writers: usize,
    #[arg(long, default_value_t = 20.0)]
    baseline_s: f64,
    /// Kill the CLI mid-copy and after the fence, and run it again each time.
    #[arg(long)]
    interrupt: bool,
    #[arg(long, default_value_t = 3600)]
    time_limit_s: u64,
    /// The report as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    anyhow::ensure!(
        !cli.dir.exists() || std::fs::read_dir(&cli.dir)?.next().is_none(),
        "{} is not empty",
        cli.dir.display()
    );
    let config = split::Config {
        domicile: std::path::absolute(&cli.domicile)?,
        dir: std::path::absolute(&cli.dir)?,
        records: cli.records,
        value_bytes: cli.value_bytes,
        in_flight: cli.in_flight,
        live_writers: cli.live_writers,
        baseline_s: cli.baseline_s,
        interrupt: cli.interrupt,
        move_back: false,
        time_limit: Duration::from_secs(cli.time_limit_s),
        verbose: true,
    };
    let report = split::run(config).await?;
    println!("{}", report.render());
    if let Some(out) = &cli.out {
        std::fs::write(out, report.render())?;
    }
    let failures = report.failures();
    anyhow::ensure!(failures.is_empty(), "checks failed: {failures:?}");
    Ok(())
}
