//! The `clickstream` binary: parses the command line and dispatches to the
//! subcommand's module in `cli/`.

mod cli;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "clickstream", version, about = "Real-time clickstream pipeline with WASM plugins")]
struct Cli {
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log shippers. RUST_LOG filters either.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "CLICKSTREAM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    /// Print shell completions.
    Completions(cli::docs::CompletionsArgs),
    /// Print the manual page (or write all of them with --out).
    Man(cli::docs::ManArgs),
}

/// Logs go to stderr, so stdout stays the command's output.
fn init_logs(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        // Flattened: a line's message and fields are top-level keys, as
        // shippers (Vector, Fluent Bit, Loki) index them.
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(true).init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let stdout = &mut std::io::stdout().lock();
    let result = match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Validate(args) => cli::validate::run(args),
        Command::Aggregate(args) => cli::aggregate::run(args),
        Command::DeadLetters(args) => cli::dead_letters::run(args),
        Command::Produce(args) => cli::produce::run(args),
        Command::Plugin { command } => cli::plugin::run(command),
        Command::Completions(args) => cli::docs::completions(args, Cli::command(), stdout),
        Command::Man(args) => cli::docs::man(args, Cli::command(), stdout),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = cli::error_chain(&e);
            match cli.log_format {
                LogFormat::Text => eprintln!("error: {message}"),
                // One JSON object like every other line, for log shippers.
                LogFormat::Json => tracing::error!(error = %message, "exiting"),
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(args: &[&str]) -> String {
        let cli = Cli::try_parse_from(args).unwrap();
        let mut out = Vec::new();
        match cli.command {
            Command::Completions(args) => cli::docs::completions(args, Cli::command(), &mut out).unwrap(),
            Command::Man(args) => cli::docs::man(args, Cli::command(), &mut out).unwrap(),
            _ => unreachable!(),
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completions_offer_every_subcommand_and_the_log_format() {
        let bash = output(&["clickstream", "completions", "bash"]);
        for word in ["run", "validate", "dead-letters", "completions", "man", "--log-format"] {
            assert!(bash.contains(word), "bash completions lack {word}");
        }
        assert!(output(&["clickstream", "completions", "zsh"]).starts_with("#compdef clickstream"));
    }

    #[test]
    fn the_manual_page_documents_the_commands_and_writes_one_page_per_subcommand() {
        let page = output(&["clickstream", "man"]);
        assert!(page.contains(".TH clickstream 1"), "{page}");
        assert!(page.contains("dead\\-letters") && page.contains("log\\-format"), "{page}");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("man");
        output(&["clickstream", "man", "--out", out.to_str().unwrap()]);
        for page in ["clickstream.1", "clickstream-run.1", "clickstream-plugin.1", "clickstream-plugin-new.1"] {
            assert!(out.join(page).is_file(), "no {page}");
        }
    }
}
