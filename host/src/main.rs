//! The `clickstream` binary: parses the command line and dispatches to the
//! subcommand's module in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "clickstream", version, about = "Real-time clickstream pipeline with WASM plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(cli::run::Args),
    Validate(cli::validate::Args),
    Aggregate(cli::aggregate::Args),
    DeadLetters(cli::dead_letters::Args),
    Produce(cli::produce::Args),
    /// Plugin author tools.
    Plugin {
        #[command(subcommand)]
        command: cli::plugin::Command,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match Cli::parse().command {
        Command::Run(args) => cli::run::run(args),
        Command::Validate(args) => cli::validate::run(args),
        Command::Aggregate(args) => cli::aggregate::run(args),
        Command::DeadLetters(args) => cli::dead_letters::run(args),
        Command::Produce(args) => cli::produce::run(args),
        Command::Plugin { command } => cli::plugin::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
