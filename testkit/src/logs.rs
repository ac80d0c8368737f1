//! Logs: the pipeline's own in a test's output, and the last lines of a
//! process's log when something fails.

use std::path::Path;

/// Sends the pipeline's logs to the test output (shown for failing tests).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()))
        .with_test_writer()
        .try_init();
}

/// The last `n` lines of a log file (empty while it does not exist).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Prints the last lines of a service's log to the test output, for a test
/// that is failing: its own assertion rarely says why the service misbehaved.
pub(crate) fn eprint_tail(path: &Path) {
    eprintln!("--- last lines of {} ---\n{}", path.display(), tail(path, 40));
}
