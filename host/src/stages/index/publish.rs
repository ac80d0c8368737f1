//! The index stage's task: `aggregates` rows → the search index, documents
//! written and tombstones deleted, each with its aggregation's stamp as the
//! document version. `aggregates` tracks what the index holds, so an outage
//! only delays this.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};
use tokio::sync::{watch, Notify};

use super::{AggregateDoc, IndexError, IndexOp, Indexer};
use crate::stats::{BatchStage, Stats};

/// Most rows sent to the search index per round.
const MAX_ROWS_PER_INDEX_PASS: i64 = 20_000;

/// How often pending rows are looked for when no aggregation pass says
/// there are new ones (after an outage of the search server, say).
const POLL: Duration = Duration::from_secs(5);

/// Why a round of publishing failed; the rows wait in PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// PostgreSQL refused.
    #[error("PostgreSQL: {}", crate::postgres::describe(.0))]
    Database(#[from] sqlx::Error),
    /// The search server failed.
    #[error(transparent)]
    Index(#[from] IndexError),
}

/// Sends `aggregates` rows the index lacks.
pub struct Publisher {
    pool: PgPool,
    indexer: Indexer,
    stats: Arc<Stats>,
}

impl Publisher {
    /// A publisher from the store's pool to `indexer`.
    pub fn new(pool: PgPool, indexer: Indexer, stats: Arc<Stats>) -> Publisher {
        Publisher { pool, indexer, stats }
    }

    /// Publishes whenever `rows` is notified (an aggregation pass wrote
    /// rows) and every few seconds, until `shutdown`. Sets up the index
    /// template first, retrying until the server answers.
    pub async fn run(self, rows: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
        let mut mapped = false;
        loop {
            tokio::select! {
                _ = rows.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => return,
            }
            if !mapped {
                match self.indexer.ensure_mapping().await {
                    Ok(()) => mapped = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot set up the search index yet; aggregates wait in PostgreSQL");
                        continue;
                    }
                }
            }
            match self.index_pending().await {
                Ok((0, 0)) => {}
                Ok((indexed, rejected)) => tracing::debug!(indexed, rejected, "published aggregates"),
                Err(e) => tracing::warn!(error = %e, "cannot publish aggregates now; they wait in PostgreSQL"),
            }
        }
    }

    /// Sends rows the index lacks: a document per live row, a delete per
    /// tombstone, each versioned by its `aggregated_at` so an older
    /// aggregation never replaces a newer one. Marks each row indexed or
    /// refused, and removes tombstones once deleted. A row re-aggregated
    /// meanwhile stays pending (its `aggregated_at` moved). Returns
    /// (operations done, operations refused).
    pub async fn index_pending(&self) -> Result<(u64, u64), PublishError> {
        let mut total = (0, 0);
        loop {
            let rows = sqlx::query(
                "SELECT window_start_ms, window_end_ms, url, country, clicks, unique_users, time_spent_total_ms,
                        time_spent_samples, is_final, plugin_name, plugin_version, aggregated_at, newest_event_ms, deleted
                 FROM aggregates WHERE indexed_at IS NULL AND index_error IS NULL
                 ORDER BY window_start_ms LIMIT $1",
            )
            .bind(MAX_ROWS_PER_INDEX_PASS)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                return Ok(total);
            }
            let stamps: Vec<DateTime<Utc>> = rows.iter().map(|r| r.get(11)).collect();
            let ops: Vec<IndexOp> = rows.iter().map(to_op).collect();
            let started = std::time::Instant::now();
            let outcome = self.indexer.apply(&ops).await?;
            self.stats.batch(BatchStage::Index, ops.len(), started.elapsed());
            let mut rejected = vec![None; ops.len()];
            for r in &outcome.rejected {
                rejected[r.position] = Some(format!("{} ({})", r.reason, r.status));
                let (window, url) = (rows[r.position].get::<i64, _>(0), rows[r.position].get::<String, _>(2));
                tracing::warn!(%url, window, reason = %r.reason, "search server refused an aggregate");
            }
            // Counted once the search server has them, before the rows are
            // marked: whoever sees a row marked indexed sees it counted (a
            // retry after a failed mark counts the batch again).
            let now_ms = Utc::now().timestamp_millis();
            for (row, error) in rows.iter().zip(&rejected) {
                if let (None, false, Some(newest)) = (error, row.get::<bool, _>(13), row.get::<Option<i64>, _>(12)) {
                    self.stats.event_to_index_seconds.observe((now_ms - newest).max(0) as f64 / 1000.0);
                }
            }
            self.stats.documents_indexed.inc_by(outcome.indexed as u64);
            self.stats.documents_rejected.inc_by(outcome.rejected.len() as u64);
            let windows: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
            let urls: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
            let countries: Vec<String> = rows.iter().map(|r| r.get(3)).collect();
            // Superseded operations are done too: the index holds a newer
            // aggregation of the group than this row.
            sqlx::query(
                "UPDATE aggregates a
                 SET indexed_at = CASE WHEN v.error IS NULL THEN now() END, index_error = v.error
                 FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::text[]) AS v(w, url, country, at, error)
                 WHERE a.window_start_ms = v.w AND a.url = v.url AND a.country = v.country AND a.aggregated_at = v.at",
            )
            .bind(&windows)
            .bind(&urls)
            .bind(&countries)
            .bind(&stamps)
            .bind(&rejected)
            .execute(&self.pool)
            .await?;
            sqlx::query("DELETE FROM aggregates WHERE deleted AND indexed_at IS NOT NULL AND window_start_ms = ANY($1)")
                .bind(&windows)
                .execute(&self.pool)
                .await?;
            let refused = outcome.rejected.len() as u64;
            let done = (outcome.indexed + outcome.superseded.len()) as u64;
            total.0 += done;
            total.1 += refused;
        }
    }
}

/// The index operation for one `aggregates` row (columns as selected above).
fn to_op(r: &sqlx::postgres::PgRow) -> IndexOp {
    let stamp: DateTime<Utc> = r.get(11);
    let version = stamp.timestamp_micros();
    if r.get::<bool, _>(13) {
        return IndexOp::Delete { window_start_ms: r.get(0), url: r.get(2), country: r.get(3), version };
    }
    let (total_ms, samples): (i64, i64) = (r.get(6), r.get(7));
    let doc = AggregateDoc {
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
        aggregated_at_ms: stamp.timestamp_millis(),
    };
    IndexOp::Put { doc, version: Some(version) }
}
