//! Poison isolation: which records PostgreSQL refuses, found inside the
//! batch's own transaction.
//!
//! Every part of a batch goes in under a savepoint. When PostgreSQL refuses a
//! part for what its records hold ([`Blame::Records`]), the part is rolled
//! back to its savepoint and split in halves, down to single records; the
//! records refused on their own are returned to be dead-lettered, and every
//! other record is stored in the same transaction, so the effectively-once
//! scheme (offsets advanced in that transaction) is untouched. One poison
//! record in a batch of 4096 costs about 24 extra statements; a clean batch
//! costs two (the savepoint and its release).
//!
//! Each part that goes in logs the windows its events change
//! (`window_changes`); a part rolled back to its savepoint takes its log row
//! with it.

use std::collections::BTreeMap;

use sqlx::PgConnection;

use super::copy::insert_events;
use super::windows::log_window_changes;
use crate::postgres::{blame, describe, pg_text, Blame};
use crate::stages::record::{DeadLetter, Event, Stage, WindowSpec};

/// One record of a batch, as the store writes it.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// An event, into `events`.
    Event(&'a Event),
    /// A dead letter, into `dead_letters`.
    Dead(&'a DeadLetter),
}

/// A record PostgreSQL refused on its own, and why.
#[derive(Debug)]
pub struct Refused<'a> {
    /// The record.
    pub item: Item<'a>,
    /// The dead-letter kind ([`Blame::Records`]).
    pub kind: &'static str,
    /// PostgreSQL's message.
    pub reason: String,
}

impl Refused<'_> {
    /// The dead letter that records the refusal, with the record's raw bytes
    /// so it can be replayed.
    pub fn dead_letter(&self) -> DeadLetter {
        match self.item {
            Item::Event(e) => store_dead_letter(e, self.kind, format!("PostgreSQL refused the event: {}", self.reason)),
            Item::Dead(d) => DeadLetter {
                stage: Stage::Store,
                kind: self.kind.into(),
                reason: format!("PostgreSQL refused the dead letter ({} {}: {}): {}", d.stage.as_str(), d.kind, d.reason, self.reason),
                ..d.clone()
            },
        }
    }
}

/// The dead letter of an event the store does not take, with the record's
/// raw bytes so it can be replayed.
pub(crate) fn store_dead_letter(e: &Event, kind: &str, reason: String) -> DeadLetter {
    DeadLetter {
        provenance: e.provenance.clone(),
        key: e.key.clone(),
        payload: e.payload.clone(),
        stage: Stage::Store,
        kind: kind.into(),
        reason,
        plugin_version: Some(crate::stages::record::chain_text(&e.chain)),
    }
}

/// What [`insert_isolating`] did.
#[derive(Debug, Default)]
pub struct Inserted<'a> {
    /// Events inserted.
    pub stored: u64,
    /// Events that went in as duplicates of stored event ids (not inserted).
    pub duplicates: u64,
    /// Dead letters inserted.
    pub dead_lettered: u64,
    /// Dead letters inserted, by (stage, kind).
    pub dead_letters_by: BTreeMap<(&'static str, String), u64>,
    /// Records refused on their own, in batch order.
    pub refused: Vec<Refused<'a>>,
}

/// Inserts `items` (and logs the windows their events change) in the
/// caller's transaction, isolating the records PostgreSQL refuses; see the
/// module docs. An error blamed on the server is returned as is: the
/// transaction is then aborted and the caller retries the whole write.
pub async fn insert_isolating<'a>(conn: &mut PgConnection, items: &[Item<'a>], windows: WindowSpec) -> Result<Inserted<'a>, sqlx::Error> {
    let mut done = Inserted::default();
    // Parts still to insert, the next on top; halves are pushed second half
    // first, so records go in batch order.
    // Each with whether it failed on a taken key before.
    let mut parts: Vec<(&[Item<'a>], bool)> = vec![(items, false)];
    while let Some((part, again)) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        sqlx::query("SAVEPOINT isolate").execute(&mut *conn).await?;
        match insert_part(conn, part, windows, &mut done).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT isolate").execute(&mut *conn).await?;
            }
            Err(e) => {
                let Blame::Records { kind } = blame(&e) else {
                    return Err(e);
                };
                sqlx::query("ROLLBACK TO SAVEPOINT isolate").execute(&mut *conn).await?;
                sqlx::query("RELEASE SAVEPOINT isolate").execute(&mut *conn).await?;
                if let [item] = part {
                    if matches!(item, Item::Event(_)) && is_unique_violation(&e) && !again {
                        // Another writer stored the same event (id and time,
                        // from another partition) after this part's check,
                        // and committed while the COPY waited on its key:
                        // checked again now, it is a duplicate.
                        parts.push((part, true));
                    } else {
                        done.refused.push(Refused { item: *item, kind, reason: describe(&e) });
                    }
                } else {
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.push((second, false));
                    parts.push((first, false));
                }
            }
        }
    }
    Ok(done)
}

/// SQLSTATE 23505: a unique key (for events, their id and time) is taken.
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// Dead letters of one part go in chunks of at most this many payload bytes:
/// one statement's parameters must stay well below PostgreSQL's 1 GiB
/// message limit whatever `source.max_record_bytes` and the batch size are.
const DEAD_LETTER_CHUNK_BYTES: usize = 64 << 20;

/// Inserts one part; counts only once the part went in whole.
async fn insert_part<'a>(
    conn: &mut PgConnection,
    part: &[Item<'a>],
    windows: WindowSpec,
    done: &mut Inserted<'a>,
) -> Result<(), sqlx::Error> {
    let events: Vec<&Event> = part.iter().filter_map(|i| if let Item::Event(e) = i { Some(*e) } else { None }).collect();
    let dead: Vec<&DeadLetter> = part.iter().filter_map(|i| if let Item::Dead(d) = i { Some(*d) } else { None }).collect();
    let mut stored = 0;
    if !events.is_empty() {
        stored = insert_events(conn, &events).await?;
        log_window_changes(conn, &events, windows).await?;
    }
    let mut dead_lettered = 0;
    let mut chunk_start = 0;
    let mut chunk_bytes = 0;
    for (i, d) in dead.iter().enumerate() {
        let bytes = d.payload.len() + d.key.as_ref().map_or(0, Vec::len) + d.reason.len();
        if i > chunk_start && chunk_bytes + bytes > DEAD_LETTER_CHUNK_BYTES {
            dead_lettered += insert_dead_letters(conn, &dead[chunk_start..i]).await?;
            (chunk_start, chunk_bytes) = (i, 0);
        }
        chunk_bytes += bytes;
    }
    if chunk_start < dead.len() {
        dead_lettered += insert_dead_letters(conn, &dead[chunk_start..]).await?;
    }
    done.stored += stored;
    done.duplicates += events.len() as u64 - stored;
    done.dead_lettered += dead_lettered;
    for d in &dead {
        *done.dead_letters_by.entry((d.stage.as_str(), d.kind.clone())).or_default() += 1;
    }
    Ok(())
}

/// Longest reason stored with a dead letter: enough for any message of ours
/// or PostgreSQL's, while a plugin's refusal text cannot bloat the table.
pub const MAX_REASON_BYTES: usize = 4096;

/// Longest kind or plugin version stored with a dead letter.
const MAX_LABEL_BYTES: usize = 256;

/// Inserts dead letters; one already stored for the same offset is skipped
/// (the offsets lock keeps redeliveries out; this keeps the rule when a
/// caller writes without it, as replay does). Returns how many went in.
pub(crate) async fn insert_dead_letters(conn: &mut PgConnection, dead: &[&DeadLetter]) -> Result<u64, sqlx::Error> {
    macro_rules! column {
        ($f:expr) => {
            dead.iter().map($f).collect::<Vec<_>>()
        };
    }
    let result = sqlx::query(
        "INSERT INTO dead_letters (topic, \"partition\", \"offset\", record_key, payload, stage, kind, reason,
                                   plugin_version, received_at)
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::bigint[], $4::bytea[], $5::bytea[], $6::text[],
                              $7::text[], $8::text[], $9::text[], $10::timestamptz[])
                  AS v(topic, p, o, k, b, s, kind, r, pv, at)
         WHERE NOT EXISTS (SELECT 1 FROM dead_letters x WHERE x.topic = v.topic AND x.\"partition\" = v.p AND x.\"offset\" = v.o)",
    )
    .bind(column!(|d| d.provenance.topic.as_str()))
    .bind(column!(|d| d.provenance.partition))
    .bind(column!(|d| d.provenance.offset))
    .bind(column!(|d| d.key.as_deref()))
    .bind(column!(|d| d.payload.as_slice()))
    .bind(column!(|d| d.stage.as_str()))
    .bind(column!(|d| pg_text(&d.kind, MAX_LABEL_BYTES)))
    .bind(column!(|d| pg_text(&d.reason, MAX_REASON_BYTES)))
    .bind(column!(|d| d.plugin_version.as_deref().map(|v| pg_text(v, MAX_LABEL_BYTES))))
    .bind(column!(|d| d.provenance.received_at))
    .execute(&mut *conn)
    .await?;
    Ok(result.rows_affected())
}
