//! `volume-bench`: a legacy group with `--records` records migrated into the EEA by `placement apply` on
//! real node processes while a client keeps writing; see `volume.rs` and `benches/volume.sh`.

// A benchmark binary: it reads the wall clock and spawns threads and tokio tasks directly.
#![allow(clippy::disallowed_methods)]

mod volume;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "A legacy group migrated at volume: copy rate, memory, write latency, correctness")]
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
    /// Closed-loop writers of new keys before and during the migration.
    #[arg(long, default_value_t = 8)]
    live_writers: usize,
    /// Instead of closed-loop writers: this many writes of new keys a second, on a fixed schedule
    /// (each write's latency counted from when it was due).
    #[arg(long, conflicts_with = "live_writers")]
    live_rate: Option<f64>,
    #[arg(long, default_value_t = 20.0)]
    baseline_s: f64,
    #[arg(long, default_value_t = 3600)]
    time_limit_s: u64,
    /// A snapshot every this many applied entries (the nodes' default unless given).
    #[arg(long, requires = "log_kept_behind_snapshot_entries")]
    snapshot_every_entries: Option<u64>,
    /// Entries kept in the log behind the last snapshot (with --snapshot-every-entries).
    #[arg(long, requires = "snapshot_every_entries")]
    log_kept_behind_snapshot_entries: Option<u64>,
    /// The MB/s every node's snapshot builds may write together (`[raft] snapshot_build_mb_per_s`; 0: no
    /// limit; the nodes' default unless given).
    #[arg(long)]
    snapshot_build_mb_per_s: Option<u64>,
    /// How `placement apply` copies the new replicas: one-at-a-time or side-by-side (its default unless
    /// given).
    #[arg(long)]
    copies: Option<String>,
    /// The report as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        !cli.dir.exists() || std::fs::read_dir(&cli.dir)?.next().is_none(),
        "{} is not empty",
        cli.dir.display()
    );
    let config = volume::Config {
        domicile: std::path::absolute(&cli.domicile)?,
        dir: std::path::absolute(&cli.dir)?,
        records: cli.records,
        value_bytes: cli.value_bytes,
        in_flight: cli.in_flight,
        live_writers: cli.live_writers,
        live_rate: cli.live_rate.filter(|per_s| *per_s > 0.0),
        baseline_s: cli.baseline_s,
        time_limit: Duration::from_secs(cli.time_limit_s),
        verbose: true,
        snapshot_policy: cli
            .snapshot_every_entries
            .zip(cli.log_kept_behind_snapshot_entries),
        snapshot_build_mb_per_s: cli.snapshot_build_mb_per_s,
        copies: cli.copies,
    };
    let report = volume::run(config).await?;
    print!("{}", report.render());
    if let Some(out) = &cli.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
    }
    let failures = report.failures();
    anyhow::ensure!(
        failures.is_empty(),
        "the migration did not keep everything: {failures:#?}"
    );
    Ok(())
}
