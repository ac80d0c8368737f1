//! Stored events → aggregate rows → PostgreSQL and the search index.
//!
//! Every `aggregate.interval_ms`, the windows whose events changed (the store
//! marks them in `aggregate_windows`) are re-aggregated: their events, plus
//! each user's next event after the range (the lookahead time spent needs),
//! stream from PostgreSQL to the aggregate plugin sorted by (user, time, event
//! id), and the rows replace the windows' rows in `aggregates`. A window is
//! held by one host at a time through a PostgreSQL advisory lock, and the
//! result depends only on the stored events, so any host computes the same.
//! Rows not yet in the search index are indexed after; the table tracks what
//! the index holds, so an outage only delays indexing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::{PgPool, Row};
use tokio::sync::watch;

use crate::config::AggregateConfig;
use crate::index::{AggregateDoc, IndexError, Indexer};
use crate::plugin::aggregate::{AggregateParams, AggregateRun, LoadedAggregate, StoredClick};
use crate::plugin::{PluginError, Slot};
use crate::stats::{BatchStage, Stats};
use crate::store::WindowSpec;

/// Most windows aggregated in one plugin run; bounds a run's memory and
/// the time a window's lock is held.
const MAX_WINDOWS_PER_RUN: usize = 30;

/// Most dirty windows picked up per pass.
const MAX_WINDOWS_PER_PASS: i64 = 600;

/// Most rows sent to the search index per pass.
const MAX_ROWS_PER_INDEX_PASS: i64 = 20_000;

/// Aggregation errors.
#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    /// PostgreSQL refused.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// The plugin failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The search server failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Windows aggregated.
    pub windows: u64,
    /// Windows skipped because another host held them.
    pub windows_busy: u64,
    /// Rows written to `aggregates`.
    pub rows: u64,
    /// Rows indexed.
    pub indexed: u64,
    /// Rows the search server refused (reason stored in `index_error`).
    pub rejected: u64,
}

/// The aggregation stage.
pub struct Aggregator {
    pool: PgPool,
    plugin: Arc<Slot<LoadedAggregate>>,
    /// Live: interval, lateness and batch size may change while running;
    /// window, timeout and query handling never do (reload refuses that).
    config: watch::Receiver<AggregateConfig>,
    indexer: Indexer,
    stats: Arc<Stats>,
}

impl Aggregator {
    /// An aggregator over the store's pool.
    pub fn new(pool: PgPool, plugin: Arc<Slot<LoadedAggregate>>, config: watch::Receiver<AggregateConfig>, indexer: Indexer, stats: Arc<Stats>) -> Aggregator {
        Aggregator { pool, plugin, config, indexer, stats }
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

    /// Runs passes every `interval_ms` until `shutdown`.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut mapped = false;
        loop {
            let interval = Duration::from_millis(self.settings().interval_ms);
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
            if !mapped {
                match self.indexer.ensure_mapping().await {
                    Ok(()) => mapped = true,
                    Err(e) => tracing::warn!(error = %e, "cannot set up the search index yet; aggregates wait in PostgreSQL"),
                }
            }
            match self.pass(mapped).await {
                Ok(o) if o.windows + o.indexed + o.rejected > 0 => {
                    tracing::debug!(windows = o.windows, rows = o.rows, indexed = o.indexed, rejected = o.rejected, "aggregation pass")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "aggregation pass failed; retrying next interval"),
            }
        }
    }

    /// One pass: marks windows that became final, aggregates changed
    /// windows, and indexes rows the search index lacks (when `index`).
    pub async fn pass(&self, index: bool) -> Result<PassOutcome, AggregateError> {
        let mut outcome = PassOutcome::default();
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
        let dirty: Vec<i64> = sqlx::query_scalar(
            "SELECT window_start_ms FROM aggregate_windows WHERE version > aggregated_version
             ORDER BY window_start_ms LIMIT $1",
        )
        .bind(MAX_WINDOWS_PER_PASS)
        .fetch_all(&self.pool)
        .await?;
        for run in contiguous_runs(&dirty, self.window_ms(), MAX_WINDOWS_PER_RUN) {
            match self.aggregate_windows(&run, watermark).await? {
                Some(rows) => {
                    outcome.windows += run.len() as u64;
                    outcome.rows += rows;
                }
                None => outcome.windows_busy += run.len() as u64,
            }
        }
        self.stats.aggregation_passes.inc();
        self.stats.windows_aggregated.add(outcome.windows);
        if index {
            let (indexed, rejected) = self.index_pending().await?;
            outcome.indexed = indexed;
            outcome.rejected = rejected;
        }
        Ok(outcome)
    }

    /// The lowest newest-event-time over the stored partitions, minus the
    /// allowed lateness: every window ending before it has all its events.
    pub async fn watermark(&self) -> Result<Option<i64>, sqlx::Error> {
        let min: Option<i64> = sqlx::query_scalar("SELECT min(max_ts_ms) FROM ingest_offsets WHERE max_ts_ms IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(min.map(|m| m - self.settings().allowed_lateness_secs as i64 * 1000))
    }

    /// Aggregates consecutive windows in one plugin run and replaces their
    /// rows, all in one transaction holding each window's advisory lock.
    /// `None` when another host holds one of them.
    pub async fn aggregate_windows(&self, windows: &[i64], watermark: Option<i64>) -> Result<Option<u64>, AggregateError> {
        let (Some(&first), Some(&last)) = (windows.first(), windows.last()) else {
            return Ok(Some(0));
        };
        let (from, to) = (first, last + self.window_ms());
        let mut tx = self.pool.begin().await?;
        for w in windows {
            let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)").bind(w).fetch_one(&mut *tx).await?;
            if !locked {
                return Ok(None);
            }
        }
        // Versions read under the lock: a change committed after this point
        // bumps the version again and leaves the window dirty.
        let versions: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT window_start_ms, version FROM aggregate_windows WHERE window_start_ms = ANY($1)",
        )
        .bind(windows)
        .fetch_all(&mut *tx)
        .await?;

        let settings = self.settings();
        let params = AggregateParams {
            window_ms: self.window_ms(),
            session_timeout_ms: self.session_timeout_ms(),
            keep_query: settings.keep_query,
        };
        let spec = WindowSpec { window_ms: params.window_ms, session_timeout_ms: params.session_timeout_ms };
        let started = std::time::Instant::now();
        let mut streamed = 0usize;
        let mut newest: HashMap<i64, i64> = HashMap::new();
        let mut run = tokio::task::block_in_place(|| AggregateRun::start(&self.plugin, params, from, to))?;
        {
            let mut events = sqlx::query(
                "WITH in_range AS (
                     SELECT event_id, user_id, ts_ms, url, country FROM events WHERE ts_ms >= $1 AND ts_ms < $2
                 ), lookahead AS (
                     SELECT n.event_id, n.user_id, n.ts_ms, n.url, n.country
                     FROM (SELECT DISTINCT user_id FROM in_range) u
                     CROSS JOIN LATERAL (
                         SELECT event_id, user_id, ts_ms, url, country FROM events e
                         WHERE e.user_id = u.user_id AND e.ts_ms >= $2 AND e.ts_ms <= $2 + $3
                         ORDER BY e.ts_ms, e.event_id LIMIT 1
                     ) n
                 )
                 SELECT * FROM in_range UNION ALL SELECT * FROM lookahead
                 ORDER BY user_id, ts_ms, event_id",
            )
            .bind(from)
            .bind(to)
            .bind(self.session_timeout_ms())
            .fetch(&mut *tx);
            let mut batch = Vec::with_capacity(settings.batch_size);
            while let Some(row) = events.try_next().await? {
                let ts: i64 = row.get(2);
                if ts < to {
                    let newest = newest.entry(spec.window_start(ts)).or_insert(ts);
                    *newest = (*newest).max(ts);
                }
                streamed += 1;
                batch.push(StoredClick {
                    event_id: row.get(0),
                    user_id: row.get(1),
                    timestamp_ms: ts,
                    url: row.get(3),
                    country: row.get(4),
                });
                if batch.len() >= settings.batch_size {
                    tokio::task::block_in_place(|| run.push(&batch))?;
                    batch.clear();
                }
            }
            if !batch.is_empty() {
                tokio::task::block_in_place(|| run.push(&batch))?;
            }
        }
        let plugin = run.plugin().clone();
        let rows = tokio::task::block_in_place(|| run.finish())?;

        let is_final = |w: i64| watermark.is_some_and(|wm| w + self.window_ms() + self.session_timeout_ms() <= wm);
        sqlx::query("DELETE FROM aggregates WHERE window_start_ms = ANY($1)").bind(windows).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO aggregates (window_start_ms, window_end_ms, url, country, clicks, unique_users,
                                     time_spent_total_ms, time_spent_samples, is_final, newest_event_ms,
                                     plugin_name, plugin_version, aggregated_at)
             SELECT *, $11, $12, now() FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[],
                                                 $6::bigint[], $7::bigint[], $8::bigint[], $9::bool[], $10::bigint[])",
        )
        .bind(rows.iter().map(|r| r.window_start_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.window_start_ms + self.window_ms()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.url.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.country.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.clicks as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.unique_users as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.time_spent_total_ms as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.time_spent_samples as i64).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| is_final(r.window_start_ms)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| newest.get(&r.window_start_ms).copied()).collect::<Vec<_>>())
        .bind(&plugin.name)
        .bind(&plugin.version)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE aggregate_windows w SET aggregated_version = v.version, is_final = v.final, aggregated_at = now()
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bool[]) AS v(start, version, final)
             WHERE w.window_start_ms = v.start",
        )
        .bind(versions.iter().map(|v| v.0).collect::<Vec<_>>())
        .bind(versions.iter().map(|v| v.1).collect::<Vec<_>>())
        .bind(versions.iter().map(|v| is_final(v.0)).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.stats.batch(BatchStage::Aggregate, streamed, started.elapsed());
        Ok(Some(rows.len() as u64))
    }

    /// Sends rows the index lacks; marks each indexed or refused. A row
    /// re-aggregated meanwhile stays pending (its `aggregated_at` moved).
    pub async fn index_pending(&self) -> Result<(u64, u64), AggregateError> {
        let mut total = (0, 0);
        loop {
            let rows = sqlx::query(
                "SELECT window_start_ms, window_end_ms, url, country, clicks, unique_users, time_spent_total_ms,
                        time_spent_samples, is_final, plugin_name, plugin_version, aggregated_at, newest_event_ms
                 FROM aggregates WHERE indexed_at IS NULL AND index_error IS NULL
                 ORDER BY window_start_ms LIMIT $1",
            )
            .bind(MAX_ROWS_PER_INDEX_PASS)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let stamps: Vec<chrono::DateTime<chrono::Utc>> = rows.iter().map(|r| r.get(11)).collect();
            let docs: Vec<AggregateDoc> = rows
                .iter()
                .map(|r| {
                    let (total_ms, samples): (i64, i64) = (r.get(6), r.get(7));
                    AggregateDoc {
                        window_start_ms: r.get(0),
                        window_end_ms: r.get(1),
                        url: r.get(2),
                        country: r.get(3),
                        clicks: r.get::<i64, _>(4) as u64,
                        unique_users: r.get::<i64, _>(5) as u64,
                        time_spent_total_ms: total_ms as u64,
                        time_spent_samples: samples as u64,
                        avg_time_spent_s: AggregateDoc::average_time_spent_s(total_ms as u64, samples as u64),
                        is_final: r.get(8),
                        plugin_name: r.get(9),
                        plugin_version: r.get(10),
                        aggregated_at_ms: r.get::<chrono::DateTime<chrono::Utc>, _>(11).timestamp_millis(),
                    }
                })
                .collect();
            let started = std::time::Instant::now();
            let outcome = self.indexer.index(&docs).await?;
            self.stats.batch(BatchStage::Index, docs.len(), started.elapsed());
            let mut rejected = vec![None; docs.len()];
            for r in &outcome.rejected {
                rejected[r.position] = Some(format!("{} ({})", r.reason, r.status));
                tracing::warn!(url = %docs[r.position].url, window = docs[r.position].window_start_ms, reason = %r.reason, "search server refused an aggregate");
            }
            sqlx::query(
                "UPDATE aggregates a
                 SET indexed_at = CASE WHEN v.error IS NULL THEN now() END, index_error = v.error
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) AS v(w, url, country, at, error)
                 WHERE a.window_start_ms = v.w AND a.url = v.url AND a.country = v.country AND a.aggregated_at = v.at",
            )
            .bind(docs.iter().map(|d| d.window_start_ms).collect::<Vec<_>>())
            .bind(docs.iter().map(|d| d.url.as_str()).collect::<Vec<_>>())
            .bind(docs.iter().map(|d| d.country.as_str()).collect::<Vec<_>>())
            .bind(&stamps)
            .bind(&rejected)
            .execute(&self.pool)
            .await?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            for (row, error) in rows.iter().zip(&rejected) {
                if let (None, Some(newest)) = (error, row.get::<Option<i64>, _>(12)) {
                    self.stats.event_to_index_seconds.observe((now_ms - newest).max(0) as f64 / 1000.0);
                }
            }
            let refused = outcome.rejected.len() as u64;
            self.stats.documents_indexed.add(outcome.indexed as u64);
            self.stats.documents_rejected.add(refused);
            total.0 += outcome.indexed as u64;
            total.1 += refused;
        }
    }

    /// Re-aggregates and re-indexes every window of `[from_ms, to_ms)` that
    /// has events, reporting `(windows done, windows total)` as it goes.
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
        for run in contiguous_runs(&windows, w, MAX_WINDOWS_PER_RUN) {
            loop {
                match self.aggregate_windows(&run, watermark).await? {
                    Some(rows) => {
                        outcome.rows += rows;
                        break;
                    }
                    // Another host is on it; its result would be the same,
                    // but a backfill promises these windows are done.
                    None => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            outcome.windows += run.len() as u64;
            progress(outcome.windows, total);
        }
        self.indexer.ensure_mapping().await?;
        let (indexed, rejected) = self.index_pending().await?;
        outcome.indexed = indexed;
        outcome.rejected = rejected;
        Ok(outcome)
    }
}

/// Splits sorted window starts into runs of consecutive windows, at most
/// `max` long, so each run is one contiguous range for the plugin.
pub(crate) fn contiguous_runs(windows: &[i64], window_ms: i64, max: usize) -> Vec<Vec<i64>> {
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
