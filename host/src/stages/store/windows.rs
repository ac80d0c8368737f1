//! Which aggregate windows a batch of new events changes.

use crate::stages::record::{Event, WindowSpec};

/// Where an event sits in its user's order: (time, event id).
type Position<'a> = (i64, &'a str);

/// Marks the windows new events change: their own, and the window of each
/// one's user's previous event within the session timeout, whose time spent
/// the new event completes (a late event can change a neighbour window).
///
/// One probe per user rather than per event: with a user's new events
/// n1 < … < nk (by time, then id), the previous event of n1 is looked up,
/// and the previous event of any later ni is either an earlier new event
/// (its window is marked as its own) or a stored event between n1 and nk —
/// so the windows of the user's stored events between n1 and nk are marked
/// too (a superset: usually none, as events arrive in order).
pub(crate) async fn mark_windows_changed(tx: &mut sqlx::PgConnection, events: &[&Event], windows: WindowSpec) -> Result<(), sqlx::Error> {
    let own: std::collections::BTreeSet<i64> = events.iter().map(|e| windows.window_start(e.raw.timestamp_ms)).collect();
    // Per user: (first, last) new event by (time, id).
    let mut span: std::collections::HashMap<&str, (Position, Position)> = std::collections::HashMap::new();
    for e in events {
        let key = (e.raw.timestamp_ms, e.raw.event_id.as_str());
        span.entry(e.raw.user_id.as_str())
            .and_modify(|(first, last)| {
                *first = (*first).min(key);
                *last = (*last).max(key);
            })
            .or_insert((key, key));
    }
    let users: Vec<&str> = span.keys().copied().collect();
    let (first, last): (Vec<Position>, Vec<Position>) = users.iter().map(|u| span[u]).unzip();
    sqlx::query(
        "INSERT INTO aggregate_windows (window_start_ms)
         SELECT w FROM (
             SELECT UNNEST($1::bigint[]) AS w
             UNION
             SELECT p.ts_ms - ((p.ts_ms % $7) + $7) % $7
             FROM UNNEST($2::text[], $3::bigint[], $4::text[]) AS f(u, t, id)
             CROSS JOIN LATERAL (
                 SELECT e.ts_ms FROM events e
                 WHERE e.user_id = f.u AND (e.ts_ms, e.event_id) < (f.t, f.id) AND e.ts_ms >= f.t - $8
                 ORDER BY e.ts_ms DESC, e.event_id DESC LIMIT 1
             ) p
             UNION
             SELECT e.ts_ms - ((e.ts_ms % $7) + $7) % $7
             FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::bigint[], $6::text[]) AS s(u, t, id, lt, lid)
             JOIN events e ON e.user_id = s.u AND (e.ts_ms, e.event_id) > (s.t, s.id) AND (e.ts_ms, e.event_id) < (s.lt, s.lid)
         ) changed
         ORDER BY w
         ON CONFLICT (window_start_ms) DO UPDATE
         SET version = aggregate_windows.version + 1, changed_at = now()",
    )
    .bind(own.into_iter().collect::<Vec<_>>())
    .bind(&users)
    .bind(first.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(first.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(last.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(last.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(windows.window_ms)
    .bind(windows.session_timeout_ms)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
