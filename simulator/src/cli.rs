//! `domicile sim run|sweep`: one seed told in words ([`crate::summary`]), as JSON, or drawn as an HTML
//! timeline ([`crate::html`]); or many seeds with a summary and, for each failure, its first violation
//! and the exact command that replays it.

use std::process::ExitCode;

use clap::Subcommand;

use crate::scenario::{self, RunConfig, Scenario};
use crate::world::Canary;

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run one seed of a scenario and say what happened. Exit 0 only when every checker found nothing.
    Run {
        #[arg(long, value_enum)]
        scenario: Scenario,
        #[arg(long)]
        seed: u64,
        /// Print one JSON object (the report) instead of the summary.
        #[arg(long)]
        json: bool,
        /// Write the run as a self-contained HTML page: a timeline of nodes by site, faults, leaders,
        /// membership, migration and violations.
        #[arg(long, value_name = "FILE.html")]
        report: Option<std::path::PathBuf>,
        /// Write the tracked keys' client history as Jepsen-shaped JSON lines.
        #[arg(long)]
        history: Option<std::path::PathBuf>,
        /// Write the trace (one line per event, virtual time first).
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
        /// Plant a bug the checkers must catch (builds with the `canaries` feature only).
        #[arg(long)]
        canary: Option<String>,
        /// Simulated seconds of faults (the scenario's default otherwise).
        #[arg(long)]
        fault_seconds: Option<u64>,
    },
    /// Run seeds A..B (B excluded) of a scenario and summarise; failures print their replay command.
    Sweep {
        #[arg(long, value_enum)]
        scenario: Scenario,
        /// A range `A..B`.
        #[arg(long)]
        seeds: String,
        #[arg(long)]
        canary: Option<String>,
        #[arg(long)]
        fault_seconds: Option<u64>,
    },
}

fn parse_canary(name: Option<&str>) -> anyhow::Result<Option<Canary>> {
    let Some(name) = name else { return Ok(None) };
    if !cfg!(feature = "canaries") {
        anyhow::bail!("canaries are compiled out; build with `--features simulator/canaries`");
    }
    let names: Vec<&str> = Canary::ALL.iter().map(|canary| canary.name()).collect();
    let canary = Canary::from_name(name)
        .ok_or_else(|| anyhow::anyhow!("unknown canary `{name}`; known: {}", names.join(", ")))?;
    Ok(Some(canary))
}

fn parse_seeds(range: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let (start, end) = range
        .split_once("..")
        .ok_or_else(|| anyhow::anyhow!("--seeds takes a range A..B, got `{range}`"))?;
    let (start, end): (u64, u64) = (start.trim().parse()?, end.trim().parse()?);
    anyhow::ensure!(start < end, "empty seed range {range}");
    Ok(start..end)
}

/// Library logs (openraft's, Domicile's own) are for whoever debugs a seed, not for the run's reader:
/// a healthy run makes openraft warn hundreds of times about the peers the faults cut off. So nothing
/// is installed unless `RUST_LOG` names a filter (`RUST_LOG=warn`, `RUST_LOG=raft=info,openraft=debug`),
/// and each line is stamped with simulated time, not the wall clock.
pub fn init_logging() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_timer(SimulatedTime)
        .init();
}

/// A log line's time: simulated seconds since the run began (`-` outside a run).
struct SimulatedTime;

impl tracing_subscriber::fmt::time::FormatTime for SimulatedTime {
    fn format_time(&self, writer: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match openraft_rt_sim::SimInstant::try_now() {
            Some(now) => {
                let elapsed = now.elapsed_since_start();
                write!(writer, "{:>4}.{:06}s", elapsed.as_secs(), elapsed.subsec_micros())
            }
            None => write!(writer, "{:>12}", "-"),
        }
    }
}

/// The wall clock, for `wall_seconds` only: it never reaches the simulation.
#[allow(clippy::disallowed_methods)]
fn wall_now() -> std::time::Instant {
    std::time::Instant::now()
}

pub fn run(command: SimCommand) -> anyhow::Result<ExitCode> {
    match command {
        SimCommand::Run {
            scenario,
            seed,
            json,
            report: report_path,
            history,
            trace,
            canary,
            fault_seconds,
        } => {
            let config = RunConfig {
                scenario,
                seed,
                canary: parse_canary(canary.as_deref())?,
                keep_trace: trace.is_some(),
                keep_history: history.is_some(),
                fault_seconds,
            };
            let started = wall_now();
            let mut outcome = scenario::run(&config);
            outcome.report.wall_seconds = started.elapsed().as_secs_f64();
            if let (Some(path), Some(text)) = (history, &outcome.history) {
                std::fs::write(&path, text)?;
            }
            if let (Some(path), Some(text)) = (trace, &outcome.trace) {
                std::fs::write(&path, text)?;
            }
            if let Some(path) = report_path {
                std::fs::write(&path, crate::html::render(&outcome, &config))?;
            }
            let report = &outcome.report;
            let failing = report.violations.failing();
            if json {
                println!("{}", serde_json::to_string_pretty(report)?);
                for detail in &outcome.details {
                    eprintln!("violation: {detail}");
                }
                if !failing.is_empty() {
                    eprintln!(
                        "seed {seed} failed: {}; replay: {}",
                        failing.join(", "),
                        config.replay_command()
                    );
                }
            } else {
                print!("{}", crate::summary::render(&outcome, &config));
            }
            Ok(if failing.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        SimCommand::Sweep {
            scenario,
            seeds,
            canary,
            fault_seconds,
        } => {
            let canary = parse_canary(canary.as_deref())?;
            let seeds = parse_seeds(&seeds)?;
            let started = wall_now();
            let (mut failed, mut sim_seconds, mut count) = (Vec::new(), 0.0, 0u64);
            for seed in seeds.clone() {
                let config = RunConfig {
                    scenario,
                    seed,
                    canary,
                    keep_trace: false,
                    keep_history: false,
                    fault_seconds,
                };
                let outcome = scenario::run(&config);
                count += 1;
                sim_seconds += outcome.report.sim_seconds;
                let failing = outcome.report.violations.failing();
                if !failing.is_empty() {
                    println!("FAIL seed {seed}: {}", failing.join(", "));
                    if let Some(first) = crate::checkers::first(&outcome.findings) {
                        let at = first.at.map_or("?".to_string(), crate::summary::seconds);
                        println!("  first at {at}: {}", first.line());
                    }
                    println!("  replay: {}", config.replay_command());
                    failed.push((seed, failing));
                }
            }
            let wall = started.elapsed().as_secs_f64();
            println!(
                "{} seeds of {}: {} passed, {} failed; {:.0} simulated s in {:.1} s ({:.1} seeds per core-minute)",
                count,
                scenario.name(),
                count - failed.len() as u64,
                failed.len(),
                sim_seconds,
                wall,
                count as f64 * 60.0 / wall.max(1e-9)
            );
            Ok(if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
