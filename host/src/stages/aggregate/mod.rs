//! Stored events → aggregate rows → PostgreSQL and the search index.
//!
//! Every `aggregate.interval_ms`, the store's log of window changes is taken
//! into `aggregate_windows` ([`changes`]), and the windows whose events
//! changed are re-aggregated: their events, plus
//! each user's next event after the range (the lookahead time spent needs),
//! stream from PostgreSQL to the aggregate plugin sorted by (user, time, event
//! id), and the rows replace the windows' rows in `aggregates` ([`run`]). A
//! window is held by one host at a time through a PostgreSQL advisory lock,
//! and the result depends only on the stored events, so any host computes the
//! same. Publishing the rows to the search index is the next stage's job;
//! a pass that wrote rows says so through a `Notify`.
//!
//! One bad window must not stop the others: a run that fails for a reason of
//! its own (the plugin trapped, ran out of time or memory, returned rows it
//! should not, or PostgreSQL refused its rows) is retried window by window,
//! and a window that still fails is set aside with its error and retried
//! with backoff ([`failures`]).

mod changes;
pub mod config;
mod failures;
pub mod rollup;
mod run;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use crate::plugin::aggregate::LoadedAggregate;
use crate::plugin::{PluginError, Slot};
use crate::postgres::{blame, Blame};
use crate::stats::Stats;
use config::AggregateConfig;

pub use changes::apply_window_changes;
pub use failures::{failing_windows, FailingWindow};

/// Most windows aggregated in one plugin run; bounds a run's memory and
/// the time a window's lock is held.
const MAX_WINDOWS_PER_RUN: usize = 30;

/// Most dirty windows picked up per pass.
const MAX_WINDOWS_PER_PASS: i64 = 600;

/// Aggregation errors.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// PostgreSQL refused.
    #[error("PostgreSQL: {}", crate::postgres::describe(.0))]
    Database(#[from] sqlx::Error),
    /// The plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

impl AggregateError {
    /// Whether the windows being aggregated are at fault (and are set aside),
    /// rather than the database (and the pass stops).
    fn is_the_windows(&self) -> bool {
        match self {
            AggregateError::Plugin(_) => true,
            AggregateError::Database(e) => matches!(blame(e), Blame::Records { .. }),
        }
    }

    /// A short label for metrics (`trap`, `deadline`, `contract`, `database`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            AggregateError::Plugin(e) => e.kind(),
            AggregateError::Database(_) => "database",
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Windows aggregated.
    pub windows: u64,
    /// Windows skipped because another host held them.
    pub windows_busy: u64,
    /// Windows that failed and were set aside for a later retry.
    pub windows_failed: u64,
    /// Rows written to `aggregates`.
    pub rows: u64,
}

/// The aggregation stage.
pub struct Aggregator {
    pool: PgPool,
    plugin: Arc<Slot<LoadedAggregate>>,
    /// Live: interval, lateness, batch size, idleness and skew may change
    /// while running; window, timeout and query handling never do (reload
    /// refuses that).
    config: watch::Receiver<AggregateConfig>,
    /// The subscribed topics: only their partitions hold the watermark.
    topics: Vec<String>,
    stats: Arc<Stats>,
    /// The plugin version the last pass ran (its content hash): a swap
    /// retries the set-aside windows at once, as the swap may be the fix.
    last_plugin: std::sync::Mutex<String>,
}

impl Aggregator {
    /// An aggregator over the store's pool, for the events of `topics`.
    pub fn new(
        pool: PgPool,
        plugin: Arc<Slot<LoadedAggregate>>,
        config: watch::Receiver<AggregateConfig>,
        topics: Vec<String>,
        stats: Arc<Stats>,
    ) -> Aggregator {
        Aggregator { pool, plugin, config, topics, stats, last_plugin: Default::default() }
    }

    fn settings(&self) -> AggregateConfig {
        self.config.borrow().clone()
    }

    fn window_ms(&self) -> i64 {
        self.settings().window_secs as i64 * 1000
    }

    fn session_timeout_ms(&self) -> i64 {
        self.settings().session_timeout_secs as i64 * 1000
    }

    /// Runs passes every `interval_ms` until `shutdown`; after a pass that
    /// wrote rows, notifies `rows_written`.
    pub async fn run(self, rows_written: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let interval = Duration::from_millis(self.settings().interval_ms);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            match self.pass().await {
                Ok(o) if o.windows + o.windows_failed > 0 => {
                    tracing::debug!(windows = o.windows, failed = o.windows_failed, rows = o.rows, "aggregation pass");
                    rows_written.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "aggregation pass failed; retrying next interval"),
            }
        }
    }

    /// One pass: marks windows that became final, and aggregates changed
    /// windows, setting aside those that fail.
    pub async fn pass(&self) -> Result<PassOutcome, AggregateError> {
        let mut outcome = PassOutcome::default();
        let aggregated = self.aggregate_changed(&mut outcome).await;
        self.stats.aggregation_passes.inc();
        self.stats.windows_aggregated.inc_by(outcome.windows);
        if let Ok(failing) = self.count_failing().await {
            self.stats.windows_failing.set(failing);
        }
        aggregated.map(|()| outcome)
    }

    /// The aggregation half of a pass.
    async fn aggregate_changed(&self, outcome: &mut PassOutcome) -> Result<(), AggregateError> {
        let serving = self.plugin.current().info.content_hash.clone();
        let swapped = {
            let mut last = self.last_plugin.lock().unwrap_or_else(|e| e.into_inner());
            let swapped = !last.is_empty() && *last != serving;
            *last = serving;
            swapped
        };
        if swapped {
            let n = sqlx::query("UPDATE aggregate_windows SET retry_at = NULL WHERE last_error IS NOT NULL")
                .execute(&self.pool)
                .await?
                .rows_affected();
            if n > 0 {
                tracing::info!(windows = n, "aggregate plugin swapped; retrying the set-aside windows now");
            }
        }
        apply_window_changes(&self.pool, self.settings().windows()).await?;
        let watermark = self.watermark().await?;
        if let Some(watermark) = watermark {
            // Windows that turned final with no new events still need their
            // rows rewritten with `final = true`.
            sqlx::query(
                "UPDATE aggregate_windows SET version = version + 1
                 WHERE NOT is_final AND version = aggregated_version AND window_start_ms + $1 + $2 <= $3",
            )
            .bind(self.window_ms())
            .bind(self.session_timeout_ms())
            .bind(watermark)
            .execute(&self.pool)
            .await?;
        }
        // Windows set aside after a failure wait for their retry time.
        let dirty: Vec<i64> = sqlx::query_scalar(
            "SELECT window_start_ms FROM aggregate_windows
             WHERE version > aggregated_version AND (retry_at IS NULL OR retry_at <= now())
             ORDER BY window_start_ms LIMIT $1",
        )
        .bind(MAX_WINDOWS_PER_PASS)
        .fetch_all(&self.pool)
        .await?;
        for run in contiguous_runs(&dirty, self.window_ms(), MAX_WINDOWS_PER_RUN) {
            self.aggregate_run(&run, watermark, false, outcome).await?;
        }
        Ok(())
    }

    /// The lowest newest-event-time over the subscribed topics' partitions
    /// that are not idle, minus the allowed lateness: every window ending
    /// before it has all its events (docs/aggregates.md, the watermark rule).
    ///
    /// A partition is idle when nothing was stored from it for
    /// `idle_partition_secs`; when every partition is idle the stream is
    /// quiet, and the newest event time of any of them counts. Event times
    /// count at most `clock_skew_secs` ahead of PostgreSQL's clock.
    pub async fn watermark(&self) -> Result<Option<i64>, sqlx::Error> {
        let settings = self.settings();
        let newest: Option<i64> = sqlx::query_scalar(
            "WITH p AS (
                 SELECT LEAST(max_ts_ms, (extract(epoch FROM now()) * 1000)::bigint + $2) AS ts,
                        updated_at > now() - make_interval(secs => $3) AS active
                 FROM ingest_offsets
                 WHERE topic = ANY($1) AND max_ts_ms IS NOT NULL
             )
             SELECT COALESCE(min(ts) FILTER (WHERE active), max(ts)) FROM p",
        )
        .bind(&self.topics)
        .bind(settings.clock_skew_secs as i64 * 1000)
        .bind(settings.idle_partition_secs as f64)
        .fetch_one(&self.pool)
        .await?;
        Ok(newest.map(|m| m - settings.allowed_lateness_secs as i64 * 1000))
    }

    /// Re-aggregates every window of `[from_ms, to_ms)` that has events,
    /// reporting `(windows done, windows total)` as it goes. A window that
    /// fails is set aside with its error (as in a pass) and the backfill goes
    /// on; the outcome counts it.
    pub async fn backfill(&self, from_ms: i64, to_ms: i64, progress: impl Fn(u64, u64)) -> Result<PassOutcome, AggregateError> {
        let w = self.window_ms();
        let windows: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO aggregate_windows (window_start_ms)
             SELECT DISTINCT ts_ms - ((ts_ms % $3) + $3) % $3 FROM events WHERE ts_ms >= $1 AND ts_ms < $2
             ORDER BY 1
             ON CONFLICT (window_start_ms) DO UPDATE SET version = aggregate_windows.version + 1, changed_at = now()
             RETURNING window_start_ms",
        )
        .bind(from_ms.div_euclid(w) * w)
        .bind(to_ms)
        .bind(w)
        .fetch_all(&self.pool)
        .await?;
        let mut windows = windows;
        windows.sort_unstable();
        let watermark = self.watermark().await?;
        let total = windows.len() as u64;
        let mut outcome = PassOutcome::default();
        let mut done = 0;
        for run in contiguous_runs(&windows, w, MAX_WINDOWS_PER_RUN) {
            self.aggregate_run(&run, watermark, true, &mut outcome).await?;
            done += run.len() as u64;
            progress(done, total);
        }
        Ok(outcome)
    }

    /// Aggregates a run of consecutive windows; when it fails for a reason
    /// of its windows', each window alone, setting aside those that still
    /// fail. An error is the database's or the search server's: the pass
    /// stops there. `wait`: wait for windows another host holds (a backfill
    /// promises its windows are done) instead of skipping them.
    async fn aggregate_run(
        &self,
        run: &[i64],
        watermark: Option<i64>,
        wait: bool,
        outcome: &mut PassOutcome,
    ) -> Result<(), AggregateError> {
        let error = match self.attempt(run, watermark, wait, outcome).await {
            Ok(()) => return Ok(()),
            Err(e) if !e.is_the_windows() => return Err(e),
            Err(e) => e,
        };
        if let [window] = run {
            self.window_failed(*window, &error).await?;
            outcome.windows_failed += 1;
            return Ok(());
        }
        tracing::debug!(error = %error, windows = run.len(), "aggregation run failed; retrying its windows one by one");
        for window in run {
            match self.attempt(std::slice::from_ref(window), watermark, wait, outcome).await {
                Ok(()) => {}
                Err(e) if !e.is_the_windows() => return Err(e),
                Err(e) => {
                    self.window_failed(*window, &e).await?;
                    outcome.windows_failed += 1;
                }
            }
        }
        Ok(())
    }

    /// One [`aggregate_windows`](Self::aggregate_windows), counted.
    async fn attempt(&self, windows: &[i64], watermark: Option<i64>, wait: bool, outcome: &mut PassOutcome) -> Result<(), AggregateError> {
        loop {
            match self.aggregate_windows(windows, watermark).await? {
                Some(rows) => {
                    outcome.windows += windows.len() as u64;
                    outcome.rows += rows;
                    return Ok(());
                }
                None if wait => tokio::time::sleep(Duration::from_millis(200)).await,
                None => {
                    outcome.windows_busy += windows.len() as u64;
                    return Ok(());
                }
            }
        }
    }
}

/// Splits sorted window starts into runs of consecutive windows, at most
/// `max` long, so each run is one contiguous range for the plugin.
pub fn contiguous_runs(windows: &[i64], window_ms: i64, max: usize) -> Vec<Vec<i64>> {
    let mut runs: Vec<Vec<i64>> = Vec::new();
    for &w in windows {
        match runs.last_mut() {
            Some(run) if run.len() < max && run.last().is_some_and(|&l| l + window_ms == w) => run.push(w),
            _ => runs.push(vec![w]),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::contiguous_runs;

    #[test]
    fn runs_split_at_gaps_and_at_the_maximum_length() {
        let runs = contiguous_runs(&[0, 60, 120, 300, 360, 420, 480], 60, 3);
        assert_eq!(runs, vec![vec![0, 60, 120], vec![300, 360, 420], vec![480]]);
        assert!(contiguous_runs(&[], 60, 3).is_empty());
    }
}
