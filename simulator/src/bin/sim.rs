//! `domicile-sim`: the simulator's CLI on its own (the same as `domicile sim`), for tests and CI.

use clap::Parser;

#[derive(Parser)]
#[command(name = "domicile-sim", about = "Domicile's deterministic simulator")]
struct Cli {
    #[command(subcommand)]
    command: simulator::cli::SimCommand,
}

fn main() -> std::process::ExitCode {
    simulator::cli::init_logging();
    match simulator::cli::run(Cli::parse().command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(2)
        }
    }
}
