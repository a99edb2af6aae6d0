//! `domicile`: the command-line entry point (the node and the operator verbs will live here too).

mod certs_cli;
mod demo;
mod placement_cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "domicile",
    version,
    about = "A Raft-replicated key-value store fenced to jurisdictions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Show the placement layer at work on the embedded example topology.
    Demo,
}

/// Exit codes: 0 success; 1 the answer is "no" (a refusal, no compliant placement); 2 bad input.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Placement { command } => placement_cli::run(command),
        Command::Certs { command } => certs_cli::run(command),
        Command::Demo => demo::run(),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}
