//! The store's window change log → window versions.
//!
//! Ingest logs, per transaction, the windows of its new events and each
//! user's first and last new event time (`window_changes`). A pass takes
//! the whole log in one transaction and bumps the version of every window
//! the changes touch:
//!
//! - the windows of the new events;
//! - per user, the window of the previous stored event before the first new
//!   one (at most a session timeout earlier), whose time spent the new event
//!   may now complete — also for an event that arrives late;
//! - per user, the windows of stored events between the first and last new
//!   event time, whose next event may now be a new one.
//!
//! Spans of one user from several log rows are merged (earliest first,
//! latest last), which only adds windows: a superset is always safe, as a
//! window re-aggregated without a change gives the same rows. The probes
//! run once per pass over every user in the log, off the ingest path. Log
//! rows are deleted in the transaction that bumps the versions, so a crash
//! in between leaves them for the next pass, and two hosts' passes each
//! take distinct rows.

use std::collections::{BTreeSet, HashMap};

use sqlx::{PgPool, Row};

use crate::stages::record::WindowSpec;

/// Log rows taken per transaction: bounds one pass's memory when the
/// aggregator has fallen behind (the rest is taken by the next round).
const MAX_LOG_ROWS: i64 = 256;

/// Takes the window change log into `aggregate_windows`; returns the log
/// rows applied.
pub async fn apply_window_changes(pool: &PgPool, windows: WindowSpec) -> Result<u64, sqlx::Error> {
    let mut applied = 0;
    loop {
        let mut tx = pool.begin().await?;
        let rows = sqlx::query(
            "DELETE FROM window_changes WHERE id IN (SELECT id FROM window_changes ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
             RETURNING windows, users, first_ts, last_ts",
        )
        .bind(MAX_LOG_ROWS)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(applied);
        }
        let mut own: BTreeSet<i64> = BTreeSet::new();
        let mut span: HashMap<String, (i64, i64)> = HashMap::new();
        for row in &rows {
            own.extend(row.get::<Vec<i64>, _>(0));
            let (users, first, last): (Vec<String>, Vec<i64>, Vec<i64>) = (row.get(1), row.get(2), row.get(3));
            for ((user, first), last) in users.into_iter().zip(first).zip(last) {
                span.entry(user)
                    .and_modify(|(f, l)| {
                        *f = (*f).min(first);
                        *l = (*l).max(last);
                    })
                    .or_insert((first, last));
            }
        }
        let users: Vec<&str> = span.keys().map(String::as_str).collect();
        let (first, last): (Vec<i64>, Vec<i64>) = users.iter().map(|u| span[*u]).unzip();
        sqlx::query(
            "INSERT INTO aggregate_windows (window_start_ms)
             SELECT w FROM (
                 SELECT UNNEST($1::bigint[]) AS w
                 UNION
                 SELECT p.ts_ms - ((p.ts_ms % $5) + $5) % $5
                 FROM UNNEST($2::text[], $3::bigint[]) AS f(u, t)
                 CROSS JOIN LATERAL (
                     SELECT e.ts_ms FROM events e
                     WHERE e.user_id = f.u AND e.ts_ms < f.t AND e.ts_ms >= f.t - $6
                     ORDER BY e.ts_ms DESC LIMIT 1
                 ) p
                 UNION
                 SELECT e.ts_ms - ((e.ts_ms % $5) + $5) % $5
                 FROM UNNEST($2::text[], $3::bigint[], $4::bigint[]) AS s(u, t, lt)
                 JOIN events e ON e.user_id = s.u AND e.ts_ms >= s.t AND e.ts_ms <= s.lt
             ) changed
             ORDER BY w
             ON CONFLICT (window_start_ms) DO UPDATE
             SET version = aggregate_windows.version + 1, changed_at = now()",
        )
        .bind(own.into_iter().collect::<Vec<_>>())
        .bind(&users)
        .bind(&first)
        .bind(&last)
        .bind(windows.window_ms)
        .bind(windows.session_timeout_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        applied += rows.len() as u64;
    }
}
