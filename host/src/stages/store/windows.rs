//! Which aggregate windows a batch of new events changes, logged for the
//! aggregator.

use std::collections::{BTreeSet, HashMap};

use crate::stages::record::{Event, WindowSpec};

/// Logs what new events change, in the transaction that stores them: the
/// windows they fall in, and per user the first and last new event time.
/// The aggregator turns a log row into window versions
/// (`stages/aggregate/changes.rs`), adding each user's previous event's
/// window and the windows of the user's stored events in between, whose
/// time spent the new events complete (a late event can change a neighbour
/// window). One insert, locking nothing another batch needs.
pub(crate) async fn log_window_changes(tx: &mut sqlx::PgConnection, events: &[&Event], windows: WindowSpec) -> Result<(), sqlx::Error> {
    let own: BTreeSet<i64> = events.iter().map(|e| windows.window_start(e.raw.timestamp_ms)).collect();
    let mut span: HashMap<&str, (i64, i64)> = HashMap::new();
    for e in events {
        let t = e.raw.timestamp_ms;
        span.entry(e.raw.user_id.as_str())
            .and_modify(|(first, last)| {
                *first = (*first).min(t);
                *last = (*last).max(t);
            })
            .or_insert((t, t));
    }
    let users: Vec<&str> = span.keys().copied().collect();
    let (first, last): (Vec<i64>, Vec<i64>) = users.iter().map(|u| span[u]).unzip();
    sqlx::query("INSERT INTO window_changes (windows, users, first_ts, last_ts) VALUES ($1, $2, $3, $4)")
        .bind(own.into_iter().collect::<Vec<_>>())
        .bind(&users)
        .bind(&first)
        .bind(&last)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
