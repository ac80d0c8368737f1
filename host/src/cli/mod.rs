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
