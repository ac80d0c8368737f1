//! The dead-letter workflow: list what was refused and why, and replay it
//! through the current chain of transforms once the cause is fixed.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use crate::postgres::pg_text;
use crate::stages::decode::{decode_batch, DecodeLimits};
use crate::stages::record::{Consumed, DeadLetter, Provenance, WindowSpec};
use crate::stages::store::partitions::{day_of, Partitions};
use crate::stages::store::{insert_isolating, Item, Refused, MAX_REASON_BYTES};
use crate::stages::transform::ChainRunner;
use crate::stats::Stats;

/// One dead letter, as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRow {
    /// Row id, the replay order.
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
    /// The start of the raw record, as text.
    pub payload_preview: String,
    /// Size of the raw record in bytes.
    pub payload_bytes: i64,
    /// When it was dead-lettered.
    pub dead_at: DateTime<Utc>,
    /// When a replay stored it, if one did.
    pub replayed_at: Option<DateTime<Utc>>,
}

/// Lists dead letters, oldest first; `pending_only` hides replayed ones.
pub async fn list(pool: &PgPool, pending_only: bool, limit: i64, offset: i64) -> Result<Vec<DeadLetterRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, topic, \"partition\", \"offset\", stage, kind, reason,
                encode(substring(payload from 1 for 120), 'escape') AS preview,
                length(payload)::bigint, dead_at, replayed_at
         FROM dead_letters
         WHERE NOT $1 OR replayed_at IS NULL
         ORDER BY id
         LIMIT $2 OFFSET $3",
    )
    .bind(pending_only)
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
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
            payload_preview: r.get::<Option<String>, _>(7).unwrap_or_default(),
            payload_bytes: r.get(8),
            dead_at: r.get(9),
            replayed_at: r.get(10),
        })
        .collect())
}

/// Counts of dead letters.
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
}

/// Replays every pending dead letter through `runner` (the current chain)
/// with the current decode limits. A success is stored and marked replayed
/// in the same transaction; a failure (PostgreSQL refusing the event
/// included) stays pending with its new reason. `progress` is called after
/// each page with the running totals.
pub async fn replay(
    pool: &PgPool,
    windows: WindowSpec,
    runner: &mut ChainRunner,
    limits: &DecodeLimits,
    mut progress: impl FnMut(ReplayOutcome),
) -> Result<ReplayOutcome, sqlx::Error> {
    const PAGE: i64 = 500;
    let stats = Stats::default();
    let mut outcome = ReplayOutcome::default();
    let mut after_id = 0i64;
    // Days seen exist for the rest of the replay.
    let partitions = Partitions::new(0);
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
        // A replayed event may belong to a day with no partition yet.
        partitions.ensure(pool, batch.events.iter().filter_map(|e| day_of(e.raw.timestamp_ms))).await?;
        let mut tx = pool.begin().await?;
        let items: Vec<Item<'_>> = batch.events.iter().map(Item::Event).collect();
        let inserted = insert_isolating(&mut tx, &items, windows).await?;
        let refused: Vec<DeadLetter> = inserted.refused.iter().map(Refused::dead_letter).collect();
        let refused_at: std::collections::HashSet<(&str, i32, i64)> = refused.iter().map(|d| d.provenance.key()).collect();
        let stored: Vec<_> = batch.events.iter().filter(|e| !refused_at.contains(&e.provenance.key())).collect();
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
        outcome.still_failing += (batch.dead_letters.len() + refused.len()) as u64;
        progress(outcome);
    }
    Ok(outcome)
}
