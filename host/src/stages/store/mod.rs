//! Enriched clicks and dead letters → PostgreSQL, effectively once.
//!
//! Each batch is one transaction that also advances `ingest_offsets`, the next
//! offset to store per partition. Writers store batches of different
//! partitions side by side (`store.writers`), each on its own connection:
//! a transaction locks only its own partitions' offset rows, and logs the
//! windows it changes in a row of its own (`window_changes`). Records below the stored offset were stored
//! before (a redelivery after a crash or a rebalance) and are skipped, under a
//! row lock, so two hosts that both briefly believe they own a partition still
//! store each record once. Kafka's own commit follows the database's and is
//! only for visibility.
//!
//! A record PostgreSQL refuses for what it holds (a value out of range, a key
//! too long for an index) is isolated inside the transaction
//! ([`isolate`]) and dead-lettered with stage `store`; the rest of its batch
//! is stored as usual. Errors that say nothing about the records (the server
//! is down, failing over, out of disk, or refuses every write) fail the
//! whole write, and the caller retries it.
//!
//! Events and dead letters live in day partitions ([`partitions`]): an
//! event whose day is older than `store.retention_days` is dead-lettered
//! (`expired`), as is one at a time no day holds (`no_partition`), and a
//! missing day is created before the transaction.

pub mod config;
mod copy;
mod isolate;
pub mod migrations;
pub mod partitions;
pub mod retry;
mod windows;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::NaiveDate;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use crate::stages::record::{DeadLetter, Dropped, Provenance, WindowSpec, WriteBatch};
use config::StoreConfig;
use partitions::{Partitions, Unplaced, MAX_NEW_DAYS_PER_WRITE};

pub use copy::{encode_copy, CopyRow, EVENT_COLUMNS};
use isolate::store_dead_letter;
pub use isolate::{insert_isolating, Inserted, Item, Refused, MAX_REASON_BYTES};

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Events inserted.
    pub stored: u64,
    /// Dead letters inserted.
    pub dead_lettered: u64,
    /// Records a transform dropped, counted in `dropped_events`.
    pub dropped: u64,
    /// Records skipped as already stored (offset below the stored one).
    pub redelivered: u64,
    /// Events skipped because their event id was stored already from
    /// another offset (the tracker sent the same event twice).
    pub duplicates: u64,
    /// Dead letters inserted, by (stage, kind).
    pub dead_letters_by: BTreeMap<(&'static str, String), u64>,
    /// Per (topic, partition) written only in part: the offset from which
    /// its records wait for a later write (their days are not made yet).
    pub deferred: BTreeMap<(String, i32), i64>,
    /// Offsets skipped between what PostgreSQL stored and this write.
    pub gaps: Vec<OffsetGap>,
}

/// Records of a partition that never reached the store: its stored next
/// offset is `from`, and the write starts at `to`. Logged as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetGap {
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// PostgreSQL's next offset (0 when it stored none of the partition).
    pub from: i64,
    /// The first offset written.
    pub to: i64,
}

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL does not parse.
    #[error("store.database_url is not a valid PostgreSQL URL: {0}")]
    Url(#[source] sqlx::Error),
    /// The database could not be reached or refused a statement.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("PostgreSQL migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    windows: WindowSpec,
    partitions: std::sync::Arc<Partitions>,
}

/// Connections besides the writers': aggregation, publishing, partition
/// upkeep, the API's readiness check (the API's queries have a pool of
/// their own, `api.db_connections`).
const SHARED_CONNECTIONS: u32 = 6;

impl Store {
    /// Connects with the default `[store]` settings but the URL, and runs
    /// the migrations.
    pub async fn connect(url: &str, windows: WindowSpec) -> Result<Store, StoreError> {
        Store::open(&StoreConfig { database_url: url.into(), ..StoreConfig::default() }, windows).await
    }

    /// Connects, runs the migrations and makes sure the days around today
    /// have partitions (and expired days are dropped).
    pub async fn open(config: &StoreConfig, windows: WindowSpec) -> Result<Store, StoreError> {
        let options: PgConnectOptions = config.database_url.parse().map_err(StoreError::Url)?;
        let options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(config.writers as u32 + SHARED_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let store = Store { pool, windows, partitions: std::sync::Arc::new(Partitions::new(config.retention_days)) };
        store.migrate().await?;
        store.partitions.maintain(&store.pool).await?;
        Ok(store)
    }

    /// The day partitions, for their upkeep task.
    pub fn partitions(&self) -> &std::sync::Arc<Partitions> {
        &self.partitions
    }

    /// Applies pending migrations. An advisory lock inside sqlx keeps two
    /// hosts starting at once from racing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The connection pool, for the stages that read.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes a batch in one transaction; see the module docs. An error is
    /// one [`blame`] puts on the server: nothing was written, and the same
    /// batch may be written again.
    ///
    /// A batch whose events need more than [`MAX_NEW_DAYS_PER_WRITE`] days
    /// not made yet is written in part: each partition up to its first event
    /// of a day still missing, the rest listed in
    /// [`WriteOutcome::deferred`] for the caller to write next
    /// ([`WriteBatch::split_off_deferred`]).
    pub async fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome, sqlx::Error> {
        let later = later_copies(batch);
        // Placed and made once, outside the transaction: a new day takes a
        // brief lock of the table.
        let place = self.partitions.placer();
        let days: Vec<Result<NaiveDate, Unplaced>> = batch.events.iter().map(|e| place(e.raw.timestamp_ms)).collect();
        let missing =
            self.partitions.ensure(&self.pool, days.iter().filter_map(|day| day.as_ref().ok().copied()), MAX_NEW_DAYS_PER_WRITE).await?;
        // Each partition stops at its first event whose day is not made yet:
        // offsets are stored as a prefix, so what follows it waits too.
        let mut cut: HashMap<(&str, i32), i64> = HashMap::new();
        for (e, day) in batch.events.iter().zip(&days) {
            if matches!(day, Ok(day) if missing.contains(day)) {
                let at = cut.entry((e.provenance.topic.as_str(), e.provenance.partition)).or_insert(i64::MAX);
                *at = (*at).min(e.provenance.offset);
            }
        }
        let now = |p: &Provenance| cut.get(&(p.topic.as_str(), p.partition)).is_none_or(|at| p.offset < *at);

        let mut tx = self.pool.begin().await?;
        let (topics, partitions): (Vec<String>, Vec<i32>) = batch.next_offsets.keys().cloned().unzip();
        sqlx::query(
            "INSERT INTO ingest_offsets (topic, \"partition\", next_offset)
             SELECT t, p, 0 FROM UNNEST($1::text[], $2::int[]) AS v(t, p)
             ON CONFLICT DO NOTHING",
        )
        .bind(&topics)
        .bind(&partitions)
        .execute(&mut *tx)
        .await?;
        let stored_offsets: BTreeMap<(String, i32), i64> = sqlx::query(
            "SELECT o.topic, o.\"partition\", o.next_offset
             FROM ingest_offsets o JOIN UNNEST($1::text[], $2::int[]) AS v(t, p)
               ON o.topic = v.t AND o.\"partition\" = v.p
             ORDER BY o.topic, o.\"partition\"
             FOR UPDATE OF o",
        )
        .bind(&topics)
        .bind(&partitions)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|row| ((row.get(0), row.get(1)), row.get(2)))
        .collect();
        let gaps = offset_gaps(&batch.first_offsets, &stored_offsets);
        // Borrowed keys: this runs once per record, on the hot path.
        let stored: HashMap<(&str, i32), i64> = stored_offsets.iter().map(|((t, p), n)| ((t.as_str(), *p), *n)).collect();
        let is_new = |p: &Provenance| p.offset >= stored.get(&(p.topic.as_str(), p.partition)).copied().unwrap_or(0);
        // Written now: not stored before, the first copy of its record, and
        // before its partition's cut.
        let take = |p: &Provenance, part: Part, i: usize| now(p) && is_new(p) && !later.contains(&(part, i));

        let mut unplaced: Vec<DeadLetter> = Vec::new();
        let mut items: Vec<Item<'_>> = Vec::with_capacity(batch.len());
        for (i, (e, day)) in batch.events.iter().zip(&days).enumerate() {
            if take(&e.provenance, Part::Event, i) {
                match day {
                    Ok(_) => items.push(Item::Event(e)),
                    Err(why) => unplaced.push(store_dead_letter(e, why.kind(), why.to_string())),
                }
            }
        }
        items
            .extend(batch.dead_letters.iter().enumerate().filter(|(i, d)| take(&d.provenance, Part::Dead, *i)).map(|(_, d)| Item::Dead(d)));
        let dropped: Vec<&Dropped> =
            batch.dropped.iter().enumerate().filter(|(i, d)| take(&d.provenance, Part::Dropped, *i)).map(|(_, d)| d).collect();
        let deferred_records = batch.provenances().filter(|p| !now(p)).count();
        if let Some(first) = unplaced.first() {
            tracing::warn!(records = unplaced.len(), topic = %first.provenance.topic, partition = first.provenance.partition, reason = %first.reason, "events with no day partition to go to; dead-lettered");
        }
        let mut inserted = insert_isolating(&mut tx, &items, self.windows).await?;
        let mut refused: Vec<DeadLetter> = inserted.refused.iter().map(Refused::dead_letter).collect();
        let unplaced_count = unplaced.len();
        refused.extend(unplaced);
        for r in &inserted.refused {
            let p = match r.item {
                Item::Event(e) => &e.provenance,
                Item::Dead(d) => &d.provenance,
            };
            tracing::warn!(topic = %p.topic, partition = p.partition, offset = p.offset, kind = r.kind, reason = %r.reason, "PostgreSQL refused a record; dead-lettered with stage store");
        }
        insert_refusals(&mut tx, &refused, self.windows, &mut inserted).await?;
        count_drops(&mut tx, &dropped).await?;
        let outcome = WriteOutcome {
            stored: inserted.stored,
            dead_lettered: inserted.dead_lettered,
            dropped: dropped.len() as u64,
            redelivered: (batch.len() - deferred_records - items.len() - unplaced_count - dropped.len()) as u64,
            duplicates: inserted.duplicates,
            dead_letters_by: inserted.dead_letters_by,
            deferred: cut.iter().map(|((t, p), at)| ((t.to_string(), *p), *at)).collect(),
            gaps,
        };

        // Up to the cut, where a partition has one.
        let next: Vec<i64> =
            batch.next_offsets.iter().map(|((t, p), n)| cut.get(&(t.as_str(), *p)).map_or(*n, |at| (*at).min(*n))).collect();
        // Offsets are unique among the items: they name the refused events.
        let refused_events: std::collections::HashSet<(&str, i32, i64)> =
            inserted.refused.iter().filter_map(|r| if let Item::Event(e) = r.item { Some(e.provenance.key()) } else { None }).collect();
        let mut max_ts: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for item in &items {
            if let Item::Event(e) = item {
                if !refused_events.contains(&e.provenance.key()) {
                    let ts = max_ts.entry((e.provenance.topic.as_str(), e.provenance.partition)).or_insert(i64::MIN);
                    *ts = (*ts).max(e.raw.timestamp_ms);
                }
            }
        }
        let max_ts: Vec<Option<i64>> = batch.next_offsets.keys().map(|(t, p)| max_ts.get(&(t.as_str(), *p)).copied()).collect();
        sqlx::query(
            "UPDATE ingest_offsets o SET next_offset = GREATEST(o.next_offset, v.n), updated_at = now(),
                    max_ts_ms = GREATEST(o.max_ts_ms, v.ts)
             FROM UNNEST($1::text[], $2::int[], $3::bigint[], $4::bigint[]) AS v(t, p, n, ts)
             WHERE o.topic = v.t AND o.\"partition\" = v.p",
        )
        .bind(&topics)
        .bind(&partitions)
        .bind(&next)
        .bind(&max_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// The stored next offset of every partition of every topic.
    pub async fn next_offsets_all(&self) -> Result<BTreeMap<(String, i32), i64>, sqlx::Error> {
        let rows = sqlx::query("SELECT topic, \"partition\", next_offset FROM ingest_offsets").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
    }
}

/// Which list of a [`WriteBatch`] a record is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Part {
    Event,
    Dead,
    Dropped,
}

/// The records of a batch that are a later copy of another record in it
/// (same topic, partition and offset), by list and index. After a
/// rebalance the consumer goes back to PostgreSQL's offset while records
/// after it are still in flight, and a writer merges what is queued into
/// one transaction, so both copies can meet here. Only the copy received
/// first is written: the one a write of its own would have stored, the
/// later copy then being skipped as redelivered. Dead letters have no key
/// to stop a second copy within one statement, and a drop would be
/// counted twice.
fn later_copies(batch: &WriteBatch) -> HashSet<(Part, usize)> {
    // Per record, the copy kept so far: when it was received, and where.
    type Copy = (chrono::DateTime<chrono::Utc>, Part, usize);
    let mut first: HashMap<(&str, i32, i64), Copy> = HashMap::with_capacity(batch.len());
    let mut later = HashSet::new();
    let all = (batch.events.iter().map(|e| &e.provenance).enumerate().map(|(i, p)| (p, Part::Event, i)))
        .chain(batch.dead_letters.iter().map(|d| &d.provenance).enumerate().map(|(i, p)| (p, Part::Dead, i)))
        .chain(batch.dropped.iter().map(|d| &d.provenance).enumerate().map(|(i, p)| (p, Part::Dropped, i)));
    for (p, part, i) in all {
        let copy = (p.received_at, part, i);
        match first.entry(p.key()) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(copy);
            }
            std::collections::hash_map::Entry::Occupied(mut kept) => {
                let loser = if copy < *kept.get() { kept.insert(copy) } else { copy };
                later.insert((loser.1, loser.2));
            }
        }
    }
    later
}

/// The partitions whose first offset in the batch is past PostgreSQL's
/// next one, each logged as an error. A gap of one is a transaction marker;
/// larger ones are records that were never delivered: compacted or deleted
/// by retention, or skipped by a consumer that started from Kafka's
/// committed offsets ahead of the database.
fn offset_gaps(first_offsets: &BTreeMap<(String, i32), i64>, stored: &BTreeMap<(String, i32), i64>) -> Vec<OffsetGap> {
    let mut gaps = Vec::new();
    for ((topic, partition), first) in first_offsets {
        let from = stored.get(&(topic.clone(), *partition)).copied().unwrap_or(0);
        if *first > from + 1 {
            tracing::error!(%topic, partition, from, to = *first, records = *first - from, "offset gap: the records in between were never stored (compacted or deleted in Kafka, or skipped by a consumer that did not start at PostgreSQL's offset); see clickstream_offset_gap_records_total");
            gaps.push(OffsetGap { topic: topic.clone(), partition: *partition, from, to: *first });
        }
    }
    gaps
}

/// Dead-letters the records PostgreSQL refused, counting them into `done`.
/// A refusal that PostgreSQL will not take either (it cannot hold some part
/// of the record) is stored without the record's bytes, with the reason why;
/// only when even that fails does the write fail.
async fn insert_refusals(
    conn: &mut sqlx::PgConnection,
    refused: &[DeadLetter],
    windows: WindowSpec,
    done: &mut isolate::Inserted<'_>,
) -> Result<(), sqlx::Error> {
    if refused.is_empty() {
        return Ok(());
    }
    let items: Vec<Item<'_>> = refused.iter().map(Item::Dead).collect();
    let again = insert_isolating(conn, &items, windows).await?;
    done.dead_lettered += again.dead_lettered;
    for (key, n) in again.dead_letters_by {
        *done.dead_letters_by.entry(key).or_default() += n;
    }
    for r in &again.refused {
        let Item::Dead(d) = r.item else { continue };
        let bare = DeadLetter {
            key: None,
            payload: Vec::new(),
            reason: format!("{}; its {} bytes were not kept: {}", d.reason, d.payload.len(), r.reason),
            ..d.clone()
        };
        done.dead_lettered += isolate::insert_dead_letters(conn, &[&bare]).await?;
        *done.dead_letters_by.entry((bare.stage.as_str(), bare.kind.clone())).or_default() += 1;
    }
    Ok(())
}

/// Adds dropped records to `dropped_events`, per partition and transform.
async fn count_drops(conn: &mut sqlx::PgConnection, dropped: &[&Dropped]) -> Result<(), sqlx::Error> {
    if dropped.is_empty() {
        return Ok(());
    }
    let mut counts: BTreeMap<(&str, i32, &str), i64> = BTreeMap::new();
    for d in dropped {
        *counts.entry((d.provenance.topic.as_str(), d.provenance.partition, d.transform.as_str())).or_default() += 1;
    }
    let (keys, n): (Vec<_>, Vec<i64>) = counts.into_iter().unzip();
    sqlx::query(
        "INSERT INTO dropped_events (topic, \"partition\", transform, dropped)
         SELECT * FROM UNNEST($1::text[], $2::int[], $3::text[], $4::bigint[])
         ON CONFLICT (topic, \"partition\", transform)
         DO UPDATE SET dropped = dropped_events.dropped + EXCLUDED.dropped, updated_at = now()",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .bind(&n)
    .execute(conn)
    .await?;
    Ok(())
}
