//! The `clickstream` subcommands, one file each; `main.rs` parses the
//! command line and dispatches here. Errors become messages at this edge
//! (`anyhow`, with what was being done).

pub mod aggregate;
pub mod dead_letters;
pub mod docs;
pub mod plugin;
pub mod produce;
pub mod run;
pub mod validate;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::stages::store::Store;

/// An error and its causes on one line, `outer: cause: root`, each cause
/// once: many errors already quote their source in their own message (a
/// plugin's "cannot read …: No such file"), and printing the chain as is
/// would repeat it.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Epoch milliseconds or an RFC 3339 time.
pub fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()))
        .map_err(|_| format!("`{s}` is neither epoch milliseconds nor an RFC 3339 time"))
}

/// `KEY=VALUE`.
pub fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// A progress bar on an interactive terminal; hidden otherwise, so logs and
/// CI output stay clean.
pub fn progress_bar(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("template"),
    );
    bar
}

/// The store of a pipeline file, for the commands that work on its tables.
pub async fn connect_store(config: &PipelineConfig) -> anyhow::Result<Store> {
    Store::open(&config.store, config.windows())
        .await
        .with_context(|| format!("while connecting to [store] database_url in {}", config.file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_quotes_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory (os error 2)");
        let plugin = clickstream::plugin::PluginError::Read { plugin: "enrich".into(), path: "/x/enrich.wasm".into(), source: io };
        let error = anyhow::Error::new(plugin).context("while running p.toml");
        let line = error_chain(&error);
        assert_eq!(line, "while running p.toml: plugin `enrich`: cannot read /x/enrich.wasm: No such file or directory (os error 2)");
        assert_eq!(line.matches("os error 2").count(), 1, "{line}");
    }

    #[test]
    fn causes_the_message_does_not_quote_are_all_printed() {
        let error = anyhow::anyhow!("root cause").context("middle").context("outer");
        assert_eq!(error_chain(&error), "outer: middle: root cause");
    }
}
