//! One aggregation run: consecutive windows, one plugin run, one transaction.

use std::collections::{HashMap, HashSet};

use futures::TryStreamExt;
use sqlx::Row;

use super::{AggregateError, Aggregator};
use crate::plugin::aggregate::AggregateRun;
use crate::plugin::{PluginError, PluginInfo};
use crate::stages::record::limits::{check_text, LABEL_MAX_BYTES, TEXT_MAX_BYTES};
use crate::stages::record::{AggregateRow, StoredEvent};
use crate::stats::BatchStage;

impl Aggregator {
    /// Aggregates consecutive windows in one plugin run and replaces their
    /// rows, all in one transaction holding each window's advisory lock.
    /// `None` when another host holds one of them.
    ///
    /// Rows are upserted; a group the new rows no longer have (the plugin
    /// that computed it was replaced, say) stays as a tombstone (`deleted`)
    /// until its document is deleted from the search index. Every row's
    /// `aggregated_at` is PostgreSQL's clock read once the locks are held:
    /// a later aggregation of the same window (by any host) takes the locks
    /// after this one commits, so its stamp is later, and the search index
    /// keeps the document with the latest stamp (its version).
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
        let versions: HashMap<i64, i64> =
            sqlx::query_as("SELECT window_start_ms, version FROM aggregate_windows WHERE window_start_ms = ANY($1)")
                .bind(windows)
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
        let stamp: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()").fetch_one(&mut *tx).await?;

        let settings = self.settings();
        let (params, spec) = (settings.params(), settings.windows());
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
                batch.push(StoredEvent {
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
        check_rows(&rows, from, to, params.window_ms).map_err(|reason| contract(&plugin, reason))?;

        let is_final = |w: i64| watermark.is_some_and(|wm| w + self.window_ms() + self.session_timeout_ms() <= wm);
        // Every row of these windows becomes a tombstone; the upsert below
        // revives the groups that still exist.
        sqlx::query(
            "UPDATE aggregates SET deleted = true, aggregated_at = $2, indexed_at = NULL, index_error = NULL
             WHERE window_start_ms = ANY($1)",
        )
        .bind(windows)
        .bind(stamp)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO aggregates (window_start_ms, window_end_ms, url, country, clicks, unique_users,
                                     time_spent_total_ms, time_spent_samples, is_final, newest_event_ms,
                                     plugin_name, plugin_version, aggregated_at, deleted)
             SELECT *, $11, $12, $13, false
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::bool[], $10::bigint[])
             ON CONFLICT (window_start_ms, url_md5, country) DO UPDATE SET
                 window_end_ms = EXCLUDED.window_end_ms, clicks = EXCLUDED.clicks, unique_users = EXCLUDED.unique_users,
                 time_spent_total_ms = EXCLUDED.time_spent_total_ms, time_spent_samples = EXCLUDED.time_spent_samples,
                 is_final = EXCLUDED.is_final, newest_event_ms = EXCLUDED.newest_event_ms,
                 plugin_name = EXCLUDED.plugin_name,
                 plugin_version = EXCLUDED.plugin_version, aggregated_at = EXCLUDED.aggregated_at,
                 deleted = false, indexed_at = NULL, index_error = NULL",
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
        .bind(stamp)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE aggregate_windows w SET aggregated_version = v.version, is_final = v.final, aggregated_at = now(),
                    failures = 0, last_error = NULL, failed_at = NULL, retry_at = NULL
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bool[]) AS v(start, version, final)
             WHERE w.window_start_ms = v.start",
        )
        .bind(versions.keys().copied().collect::<Vec<_>>())
        .bind(versions.values().copied().collect::<Vec<_>>())
        .bind(versions.keys().map(|w| is_final(*w)).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.stats.batch(BatchStage::Aggregate, streamed, started.elapsed());
        Ok(Some(rows.len() as u64))
    }
}

fn contract(plugin: &PluginInfo, reason: String) -> AggregateError {
    AggregateError::Plugin(PluginError::Contract { plugin: plugin.slot.clone(), version: plugin.version.clone(), reason })
}

/// The rows a run may return: each in a window of the run's range, one per
/// (window, url, country), counts that fit PostgreSQL's `bigint`, strings
/// within the limits events have.
pub(crate) fn check_rows(rows: &[AggregateRow], from_ms: i64, to_ms: i64, window_ms: i64) -> Result<(), String> {
    let mut seen: HashSet<(i64, &str, &str)> = HashSet::with_capacity(rows.len());
    for r in rows {
        let w = r.window_start_ms;
        if !(from_ms..to_ms).contains(&w) || w.rem_euclid(window_ms) != 0 {
            return Err(format!("returned a row for window {w}, which is not a window of the run [{from_ms}, {to_ms})"));
        }
        for (name, value) in [
            ("clicks", r.clicks),
            ("unique_users", r.unique_users),
            ("time_spent_total_ms", r.time_spent_total_ms),
            ("time_spent_samples", r.time_spent_samples),
        ] {
            if i64::try_from(value).is_err() {
                return Err(format!("returned {name} = {value} for window {w}, more than a bigint holds"));
            }
        }
        check_text("url", &r.url, TEXT_MAX_BYTES).map_err(|e| format!("returned a row for window {w} whose {e}"))?;
        check_text("country", &r.country, LABEL_MAX_BYTES).map_err(|e| format!("returned a row for window {w} whose {e}"))?;
        if !seen.insert((w, &r.url, &r.country)) {
            return Err(format!("returned two rows for window {w}, url {:?}, country {:?}", r.url, r.country));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(w: i64, url: &str, clicks: u64) -> AggregateRow {
        AggregateRow {
            window_start_ms: w,
            url: url.into(),
            country: "DE".into(),
            clicks,
            unique_users: 1,
            time_spent_total_ms: 0,
            time_spent_samples: 0,
        }
    }

    #[test]
    fn rows_a_plugin_should_not_return_are_refused_with_what_was_wrong() {
        assert!(check_rows(&[row(0, "/a", 1), row(60_000, "/a", 1)], 0, 120_000, 60_000).is_ok());
        let outside = check_rows(&[row(120_000, "/a", 1)], 0, 120_000, 60_000).unwrap_err();
        assert!(outside.contains("not a window of the run"), "{outside}");
        assert!(check_rows(&[row(30_000, "/a", 1)], 0, 120_000, 60_000).is_err(), "misaligned");
        let twice = check_rows(&[row(0, "/a", 1), row(0, "/a", 2)], 0, 60_000, 60_000).unwrap_err();
        assert!(twice.contains("two rows"), "{twice}");
        let huge = check_rows(&[row(0, "/a", u64::MAX)], 0, 60_000, 60_000).unwrap_err();
        assert!(huge.contains("more than a bigint"), "{huge}");
        let nul = check_rows(&[row(0, "/a\0", 1)], 0, 60_000, 60_000).unwrap_err();
        assert!(nul.contains("NUL"), "{nul}");
    }
}
