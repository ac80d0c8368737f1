//! Windows set aside after a failed aggregation: recorded with their error,
//! retried with backoff, visible in the API, the metrics and the logs.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{AggregateError, Aggregator};

/// Longest wait before a failing window is tried again: a plugin fixed by a
/// hot swap gets its windows back within the hour even after many failures.
const MAX_RETRY_SECS: f64 = 3600.0;

/// Longest error kept per window.
const MAX_ERROR_BYTES: usize = 4096;

/// A window whose last aggregation failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailingWindow {
    /// Window start, Unix milliseconds.
    pub window_start_ms: i64,
    /// Failed attempts in a row.
    pub failures: i32,
    /// The last error.
    pub last_error: String,
    /// When it last failed.
    pub failed_at: DateTime<Utc>,
    /// When it is tried again (on the first pass after this).
    pub retry_at: DateTime<Utc>,
}

// By hand rather than derived: sqlx's derive macros would build a second
// copy of sqlx and its PostgreSQL driver for the compiler, in every build.
impl<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> for FailingWindow {
    fn from_row(row: &'r sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(FailingWindow {
            window_start_ms: row.try_get("window_start_ms")?,
            failures: row.try_get("failures")?,
            last_error: row.try_get("last_error")?,
            failed_at: row.try_get("failed_at")?,
            retry_at: row.try_get("retry_at")?,
        })
    }
}

impl Aggregator {
    /// Sets a window aside: counts the failure, stores the error, and
    /// schedules a retry after `interval × 2^failures` (at most an hour).
    /// Its rows stay as they were until it aggregates again.
    pub(super) async fn window_failed(&self, window: i64, error: &AggregateError) -> Result<(), AggregateError> {
        let message = crate::postgres::pg_text(&error.to_string(), MAX_ERROR_BYTES).into_owned();
        let base_secs = self.settings().interval_ms as f64 / 1000.0;
        let (failures, retry_at): (i32, DateTime<Utc>) = sqlx::query_as(
            "UPDATE aggregate_windows
             SET failures = failures + 1, last_error = $2, failed_at = now(),
                 retry_at = now() + make_interval(secs => LEAST($3 * power(2, failures), $4))
             WHERE window_start_ms = $1
             RETURNING failures, retry_at",
        )
        .bind(window)
        .bind(&message)
        .bind(base_secs)
        .bind(MAX_RETRY_SECS)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or((1, Utc::now()));
        self.stats.window_failures(error.kind());
        tracing::warn!(window_start_ms = window, failures, %retry_at, error = %message, "window aggregation failed; set aside, the other windows go on");
        Ok(())
    }

    /// How many windows are set aside now.
    pub(super) async fn count_failing(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM aggregate_windows WHERE last_error IS NOT NULL").fetch_one(&self.pool).await
    }
}

/// The windows set aside now, oldest first, at most `limit`.
pub async fn failing_windows(pool: &PgPool, limit: i64) -> Result<Vec<FailingWindow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT window_start_ms, failures, last_error, failed_at, retry_at FROM aggregate_windows
         WHERE last_error IS NOT NULL ORDER BY window_start_ms LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
