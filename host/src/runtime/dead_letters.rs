//! The dead-letter workflow: list what was refused and why, and replay it
//! through the current chain of transforms once the cause is fixed.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::postgres::pg_text;
use crate::stages::decode::{decode_batch, DecodeLimits};
use crate::stages::record::{Consumed, DeadLetter, Provenance, WindowSpec};
use crate::stages::store::partitions::{Partitions, Unplaced};
use crate::stages::store::{insert_isolating, Item, Refused, MAX_REASON_BYTES};
use crate::stages::transform::ChainRunner;
use crate::stats::Stats;

/// One dead letter, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRow {
    /// Row id, the replay order and the paging cursor.
    pub id: i64,
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// `decode`, `transform` or `store`.
    pub stage: String,
    /// Short label, e.g. `not_json`.
    pub kind: String,
    /// Why, for a human.
    pub reason: String,
    /// The start of the raw record, as text; absent unless asked for (the
    /// payload is what a client sent and may hold personal data).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_preview: Option<String>,
    /// Size of the raw record in bytes.
    pub payload_bytes: i64,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
    /// When a replay stored it, if one did.
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Bytes of the payload a preview shows.
const PREVIEW_BYTES: i32 = 120;

/// The page query: the rows after a cursor (`$1`, an id), oldest first, at
/// most `$2`. Keyset paging: each day partition's primary key `(id,
/// dead_at)` (or, for pending rows, the partial index on `id`) starts at
/// the cursor and a merge of the partitions stops after `$2` rows, so a
/// page costs the same wherever it is, and replaying rows (or adding them)
/// skips or repeats none (`OFFSET` reads and throws away every row before
/// the page, and shifts when rows before it change). Ids come from a
/// sequence: a row whose transaction took its id before a page passed it
/// and committed after is only seen by the next walk.
/// Two texts rather than a parameter for `pending_only`, so a generic plan
/// can still use the partial index.
pub fn page_sql(pending_only: bool, previews: bool) -> String {
    let preview =
        if previews { format!("encode(substring(payload from 1 for {PREVIEW_BYTES}), 'escape')") } else { "NULL::text".to_string() };
    let pending = if pending_only { "AND replayed_at IS NULL" } else { "" };
    format!(
        "SELECT id, topic, \"partition\", \"offset\", stage, kind, reason, {preview} AS preview,
                length(payload)::bigint, dead_at, replayed_at
         FROM dead_letters
         WHERE id > $1 {pending}
         ORDER BY id
         LIMIT $2"
    )
}

/// Lists up to `limit` dead letters with an id above `after`, oldest
/// first; `pending_only` hides replayed ones, `previews` includes the start
/// of each payload. The next page starts after the last id returned.
pub async fn list(pool: &PgPool, pending_only: bool, after: i64, limit: i64, previews: bool) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
    let rows = sqlx::query(&page_sql(pending_only, previews)).bind(after).bind(limit).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|r| DeadLetterRow {
            id: r.get(0),
            topic: r.get(1),
            partition: r.get(2),
            offset: r.get(3),
            stage: r.get(4),
            kind: r.get(5),
            reason: r.get(6),
            payload_preview: previews.then(|| r.get::<Option<String>, _>(7).unwrap_or_default()),
            payload_bytes: r.get(8),
            dead_at: r.get(9),
            replayed_at: r.get(10),
        })
        .collect())
}

/// Pending dead letters, counted up to `cap` (the count stops there): a
/// bounded walk of the pending index, whatever the table holds.
pub async fn pending_up_to(pool: &PgPool, cap: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM dead_letters WHERE replayed_at IS NULL LIMIT $1) pending")
        .bind(cap)
        .fetch_one(pool)
        .await
}

/// Exact counts of dead letters, all and pending: a scan of the whole
/// table, for the CLI (the API counts pending ones up to a cap instead).
pub async fn counts(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query("SELECT count(*), count(*) FILTER (WHERE replayed_at IS NULL) FROM dead_letters").fetch_one(pool).await?;
    Ok((row.get(0), row.get(1)))
}

/// What a replay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayOutcome {
    /// Dead letters now stored as events.
    pub stored: u64,
    /// Dead letters refused again; their reason is updated.
    pub still_failing: u64,
    /// Dead letters a transform now drops: marked replayed, kind `dropped`.
    pub dropped: u64,
    /// Dead letters left pending because their event's day is before the
    /// oldest day kept (`store.retention_days`): stored, the event would
    /// recreate a dropped day that the next hourly upkeep drops again, with
    /// it. Their reason says so.
    pub expired: u64,
}

/// The reason a replay leaves a dead letter of an expired day pending.
fn not_replayed(why: &Unplaced) -> String {
    match why {
        Unplaced::Expired { .. } => format!(
            "{why}. Not replayed: storing it would recreate the dropped day, which the next upkeep drops again within the hour, \
             losing the event and this record of it. To replay it, raise store.retention_days so that its day is kept, then replay again"
        ),
        Unplaced::OutOfRange { .. } => format!("{why}. Not replayed"),
    }
}

/// Replays every pending dead letter through `runner` (the current chain)
/// with the current decode limits. A success is stored and marked replayed
/// in the same transaction; a failure (PostgreSQL refusing the event
/// included) stays pending with its new reason. An event whose day is
/// before the oldest kept by `retention_days` (`store.retention_days`) is
/// not stored and stays pending ([`ReplayOutcome::expired`]). `progress` is
/// called after each page with the running totals.
pub async fn replay(
    pool: &PgPool,
    windows: WindowSpec,
    runner: &mut ChainRunner,
    limits: &DecodeLimits,
    retention_days: u32,
    mut progress: impl FnMut(ReplayOutcome),
) -> Result<ReplayOutcome, sqlx::Error> {
    const PAGE: i64 = 500;
    let stats = Stats::default();
    let mut outcome = ReplayOutcome::default();
    let mut after_id = 0i64;
    // Days seen exist for the rest of the replay.
    let partitions = Partitions::new(retention_days);
    loop {
        let rows = sqlx::query(
            "SELECT id, topic, \"partition\", \"offset\", record_key, payload, received_at
             FROM dead_letters WHERE replayed_at IS NULL AND id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after_id = last.get(0);
        let records: Vec<Consumed> = rows
            .iter()
            .map(|r| Consumed {
                provenance: Provenance { topic: r.get(1), partition: r.get(2), offset: r.get(3), received_at: r.get(6) },
                key: r.get(4),
                payload: r.get(5),
            })
            .collect();
        // Plugin calls block; this is a batch job, so blocking this task is fine.
        let batch = tokio::task::block_in_place(|| runner.process(decode_batch(records, limits), &stats));
        let place = partitions.placer();
        let (placed, unplaced): (Vec<_>, Vec<_>) =
            batch.events.iter().map(|e| (e, place(e.raw.timestamp_ms))).partition(|(_, day)| day.is_ok());
        // A replayed event may belong to a day with no partition yet.
        partitions.ensure_all(pool, placed.iter().filter_map(|(_, day)| day.as_ref().ok().copied())).await?;
        let mut tx = pool.begin().await?;
        let items: Vec<Item<'_>> = placed.iter().map(|(e, _)| Item::Event(e)).collect();
        let inserted = insert_isolating(&mut tx, &items, windows).await?;
        let refused: Vec<DeadLetter> = inserted.refused.iter().map(Refused::dead_letter).collect();
        let refused_at: std::collections::HashSet<(&str, i32, i64)> = refused.iter().map(|d| d.provenance.key()).collect();
        let stored: Vec<_> = placed.iter().map(|(e, _)| *e).filter(|e| !refused_at.contains(&e.provenance.key())).collect();
        let mut expired = 0;
        for (event, why) in &unplaced {
            let Err(why) = why else { continue };
            expired += u64::from(matches!(why, Unplaced::Expired { .. }));
            let p = &event.provenance;
            sqlx::query(
                "UPDATE dead_letters SET stage = 'store', kind = $4, reason = $5
                 WHERE topic = $1 AND \"partition\" = $2 AND \"offset\" = $3",
            )
            .bind(&p.topic)
            .bind(p.partition)
            .bind(p.offset)
            .bind(why.kind())
            .bind(pg_text(&not_replayed(why), MAX_REASON_BYTES))
            .execute(&mut *tx)
            .await?;
        }
        for event in &stored {
            let p = &event.provenance;
            sqlx::query(
                "UPDATE dead_letters SET replayed_at = now(), replayed_event_id = $4
                 WHERE topic = $1 AND \"partition\" = $2 AND \"offset\" = $3",
            )
            .bind(&p.topic)
            .bind(p.partition)
            .bind(p.offset)
            .bind(&event.raw.event_id)
            .execute(&mut *tx)
            .await?;
        }
        for dead in batch.dead_letters.iter().chain(&refused) {
            let p = &dead.provenance;
            sqlx::query(
                "UPDATE dead_letters SET stage = $4, kind = $5, reason = $6, plugin_version = $7
                 WHERE topic = $1 AND \"partition\" = $2 AND \"offset\" = $3",
            )
            .bind(&p.topic)
            .bind(p.partition)
            .bind(p.offset)
            .bind(dead.stage.as_str())
            .bind(&dead.kind)
            .bind(pg_text(&dead.reason, MAX_REASON_BYTES))
            .bind(dead.plugin_version.as_deref().map(|v| pg_text(v, MAX_REASON_BYTES)))
            .execute(&mut *tx)
            .await?;
        }
        for dropped in &batch.dropped {
            let p = &dropped.provenance;
            sqlx::query(
                "UPDATE dead_letters SET replayed_at = now(), stage = 'transform', kind = 'dropped', reason = $4
                 WHERE topic = $1 AND \"partition\" = $2 AND \"offset\" = $3",
            )
            .bind(&p.topic)
            .bind(p.partition)
            .bind(p.offset)
            .bind(pg_text(&format!("dropped on replay by transform `{}`: {}", dropped.transform, dropped.reason), MAX_REASON_BYTES))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        outcome.stored += stored.len() as u64;
        outcome.dropped += batch.dropped.len() as u64;
        outcome.expired += expired;
        outcome.still_failing += (batch.dead_letters.len() + refused.len() + unplaced.len()) as u64 - expired;
        progress(outcome);
    }
    Ok(outcome)
}
