//! `[aggregate]`: windowing, the metric definitions, and the watermark.

use std::path::Path;

use serde::Deserialize;

use crate::section::{in_range, invalid, Apply, ConfigError};
use crate::stages::record::{AggregateParams, WindowSpec};

/// `[aggregate]`. The window, the session timeout and query handling define
/// what existing aggregates mean: a change is refused (unless the store
/// moves to new tables). Everything else applies live, from the next pass.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Tumbling window size in seconds, aligned to the Unix epoch.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Largest gap between a user's clicks that counts as time on the first page.
    #[serde(default = "default_session_timeout_secs")]
    pub session_timeout_secs: u64,
    /// Keep the query string when normalising URLs.
    #[serde(default)]
    pub keep_query: bool,
    /// How often changed windows are re-aggregated, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How late an event may arrive before its window is considered final.
    #[serde(default = "default_allowed_lateness_secs")]
    pub allowed_lateness_secs: u64,
    /// Clicks per batch pushed to the aggregate plugin.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A partition whose newest stored record is older than this no longer
    /// holds the watermark back (docs/aggregates.md: the watermark rule).
    #[serde(default = "default_idle_partition_secs")]
    pub idle_partition_secs: u64,
    /// Event times count toward the watermark at most this far ahead of
    /// PostgreSQL's clock, so one event from a wrong clock cannot finalise
    /// every window.
    #[serde(default = "default_clock_skew_secs")]
    pub clock_skew_secs: u64,
}

const fn default_window_secs() -> u64 {
    60
}
const fn default_session_timeout_secs() -> u64 {
    30 * 60
}
const fn default_interval_ms() -> u64 {
    5000
}
const fn default_allowed_lateness_secs() -> u64 {
    60
}
const fn default_batch_size() -> usize {
    4096
}
const fn default_idle_partition_secs() -> u64 {
    300
}
const fn default_clock_skew_secs() -> u64 {
    300
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            window_secs: default_window_secs(),
            session_timeout_secs: default_session_timeout_secs(),
            keep_query: false,
            interval_ms: default_interval_ms(),
            allowed_lateness_secs: default_allowed_lateness_secs(),
            batch_size: default_batch_size(),
            idle_partition_secs: default_idle_partition_secs(),
            clock_skew_secs: default_clock_skew_secs(),
        }
    }
}

impl AggregateConfig {
    /// Checks ranges; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if self.window_secs == 0 || 86_400 % self.window_secs != 0 {
            return Err(invalid(
                file,
                "aggregate.window_secs",
                format!("is {}", self.window_secs),
                "use a size that divides a day evenly, e.g. 60, 300, 3600 (default 60)",
            ));
        }
        in_range(file, "aggregate.session_timeout_secs", self.session_timeout_secs, 1..=86_400, default_session_timeout_secs())?;
        in_range(file, "aggregate.interval_ms", self.interval_ms, 100..=3_600_000, default_interval_ms())?;
        if self.allowed_lateness_secs > 7 * 86_400 {
            return Err(invalid(
                file,
                "aggregate.allowed_lateness_secs",
                format!("is {}", self.allowed_lateness_secs),
                "use at most 604800 (a week; default 60)",
            ));
        }
        in_range(file, "aggregate.batch_size", self.batch_size, 1..=100_000, default_batch_size())?;
        in_range(file, "aggregate.idle_partition_secs", self.idle_partition_secs, 1..=7 * 86_400, default_idle_partition_secs())?;
        if self.clock_skew_secs > 7 * 86_400 {
            return Err(invalid(
                file,
                "aggregate.clock_skew_secs",
                format!("is {}", self.clock_skew_secs),
                "use 0 to 604800 (default 300)",
            ));
        }
        Ok(())
    }

    /// The windowing these settings define.
    pub fn windows(&self) -> WindowSpec {
        WindowSpec { window_ms: self.window_secs as i64 * 1000, session_timeout_ms: self.session_timeout_secs as i64 * 1000 }
    }

    /// The metric definitions passed to the aggregate plugin.
    pub fn params(&self) -> AggregateParams {
        let windows = self.windows();
        AggregateParams { window_ms: windows.window_ms, session_timeout_ms: windows.session_timeout_ms, keep_query: self.keep_query }
    }

    /// How a change to this section applies; the metric-defining keys
    /// changed are named in [`Apply::Refused`].
    pub fn change(&self, next: &AggregateConfig) -> Apply {
        let refused: Vec<&'static str> = [
            ("aggregate.window_secs", self.window_secs != next.window_secs),
            ("aggregate.session_timeout_secs", self.session_timeout_secs != next.session_timeout_secs),
            ("aggregate.keep_query", self.keep_query != next.keep_query),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect();
        if !refused.is_empty() {
            Apply::Refused(refused)
        } else if self != next {
            Apply::Live
        } else {
            Apply::Unchanged
        }
    }
}
