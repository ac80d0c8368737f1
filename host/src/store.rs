//! Enriched clicks and dead letters → PostgreSQL, effectively once.
//!
//! Each batch is one transaction that also advances `ingest_offsets`, the next
//! offset to store per partition. Records below the stored offset were stored
//! before (a redelivery after a crash or a rebalance) and are skipped, under a
//! row lock, so two hosts that both briefly believe they own a partition still
//! store each record once. Kafka's own commit follows the database's and is
//! only for visibility.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use crate::plugin::enrich::{device_name, EnrichedClick};

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// When the host received it.
    pub received_at: DateTime<Utc>,
}

/// An enriched click ready to store.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// The click.
    pub click: EnrichedClick,
    /// Name of the plugin that enriched it.
    pub plugin_name: String,
    /// Where it came from.
    pub provenance: Provenance,
}

/// The stage at which a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before enrichment: too large, not JSON, missing or mistyped fields.
    Decode,
    /// The enrich plugin refused it, or trapped on it.
    Enrich,
}

impl Stage {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Enrich => "enrich",
        }
    }
}

/// A record that could not become an event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it came from.
    pub provenance: Provenance,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's bytes, as received.
    pub payload: Vec<u8>,
    /// Where it was refused.
    pub stage: Stage,
    /// A short label (`not_json`, `missing_field`, `refused`, `trap`, ...).
    pub kind: String,
    /// Why, for a human.
    pub reason: String,
    /// The plugin version that refused it, for enrich-stage refusals.
    pub plugin_version: Option<String>,
}

/// One transaction's worth of work.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Events to store.
    pub events: Vec<EventRow>,
    /// Records to dead-letter.
    pub dead_letters: Vec<DeadLetter>,
    /// Per (topic, partition): the offset after the last record in the batch.
    pub next_offsets: BTreeMap<(String, i32), i64>,
    /// Per (topic, partition): the first offset in the batch.
    pub first_offsets: BTreeMap<(String, i32), i64>,
}

impl WriteBatch {
    /// Notes that `provenance`'s record is part of this batch.
    pub fn saw(&mut self, provenance: &Provenance) {
        let next = self
            .next_offsets
            .entry((provenance.topic.clone(), provenance.partition))
            .or_insert(0);
        *next = (*next).max(provenance.offset + 1);
        let first = self
            .first_offsets
            .entry((provenance.topic.clone(), provenance.partition))
            .or_insert(i64::MAX);
        *first = (*first).min(provenance.offset);
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.events.len() + self.dead_letters.len()
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Events inserted.
    pub stored: u64,
    /// Dead letters inserted.
    pub dead_lettered: u64,
    /// Records skipped as already stored (offset below the stored one).
    pub redelivered: u64,
    /// Events skipped because their event id was stored already from
    /// another offset (the tracker sent the same event twice).
    pub duplicates: u64,
    /// Dead letters inserted, by (stage, kind).
    pub dead_letters_by: BTreeMap<(&'static str, String), u64>,
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

/// The windowing that decides which aggregate windows an event changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window size in milliseconds.
    pub window_ms: i64,
    /// Session timeout in milliseconds: a new event changes the time spent of
    /// its user's previous event when it is at most this much later.
    pub session_timeout_ms: i64,
}

impl WindowSpec {
    /// The spec of an `[aggregate]` section.
    pub fn of(config: &crate::config::AggregateConfig) -> WindowSpec {
        WindowSpec {
            window_ms: config.window_secs as i64 * 1000,
            session_timeout_ms: config.session_timeout_secs as i64 * 1000,
        }
    }

    /// Start of the epoch-aligned window holding `ts_ms`.
    pub fn window_start(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.window_ms) * self.window_ms
    }
}

/// The PostgreSQL store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
    windows: WindowSpec,
}

impl Store {
    /// Connects and runs the migrations.
    pub async fn connect(url: &str, windows: WindowSpec) -> Result<Store, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::Url)?;
        let options = options.log_statements(tracing::log::LevelFilter::Trace);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let store = Store { pool, windows };
        store.migrate().await?;
        Ok(store)
    }

    /// Applies pending migrations. An advisory lock inside sqlx keeps two
    /// hosts starting at once from racing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    /// The connection pool, for the stages that read.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Writes a batch in one transaction; see the module docs.
    pub async fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome, sqlx::Error> {
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
        for (key, first) in &batch.first_offsets {
            let stored = stored_offsets.get(key).copied().unwrap_or(0);
            // A gap of one is a transaction marker; larger ones come from
            // compaction or a broker fault, and those records never arrive.
            if *first > stored + 1 && stored > 0 {
                tracing::warn!(topic = %key.0, partition = key.1, from = stored, to = *first, "offset gap: records in between were not delivered by the broker");
            }
        }
        // Borrowed keys: this runs once per record, on the hot path.
        let stored: std::collections::HashMap<(&str, i32), i64> =
            stored_offsets.iter().map(|((t, p), n)| ((t.as_str(), *p), *n)).collect();
        let is_new = |p: &Provenance| p.offset >= stored.get(&(p.topic.as_str(), p.partition)).copied().unwrap_or(0);

        let events: Vec<&EventRow> = batch.events.iter().filter(|e| is_new(&e.provenance)).collect();
        let dead: Vec<&DeadLetter> = batch.dead_letters.iter().filter(|d| is_new(&d.provenance)).collect();
        let mut outcome = WriteOutcome {
            redelivered: (batch.len() - events.len() - dead.len()) as u64,
            ..WriteOutcome::default()
        };
        if !events.is_empty() {
            outcome.stored = insert_events(&mut tx, &events).await?;
            outcome.duplicates = events.len() as u64 - outcome.stored;
            mark_windows_changed(&mut tx, &events, self.windows).await?;
        }
        if !dead.is_empty() {
            outcome.dead_lettered = insert_dead_letters(&mut tx, &dead).await?;
            for d in &dead {
                *outcome.dead_letters_by.entry((d.stage.as_str(), d.kind.clone())).or_default() += 1;
            }
        }
        let next: Vec<i64> = batch.next_offsets.values().copied().collect();
        let mut max_ts: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for e in &events {
            let ts = max_ts.entry((e.provenance.topic.as_str(), e.provenance.partition)).or_insert(i64::MIN);
            *ts = (*ts).max(e.click.raw.timestamp_ms);
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
        let rows = sqlx::query("SELECT topic, \"partition\", next_offset FROM ingest_offsets")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
    }
}

/// The columns the store writes into `events`, in COPY order.
pub const EVENT_COLUMNS: &str = "event_id, user_id, ts_ms, url, ip, user_agent, referrer, session_id, country, city, browser, os, \
                                 device, plugin_name, plugin_version, topic, \"partition\", \"offset\", received_at";

/// One `events` row, borrowed, in [`EVENT_COLUMNS`] order.
#[allow(missing_docs)]
pub struct CopyRow<'a> {
    pub event_id: &'a str,
    pub user_id: &'a str,
    pub ts_ms: i64,
    pub url: &'a str,
    pub ip: &'a str,
    pub user_agent: &'a str,
    pub referrer: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub country: &'a str,
    pub city: &'a str,
    pub browser: &'a str,
    pub os: &'a str,
    pub device: &'a str,
    pub plugin_name: &'a str,
    pub plugin_version: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub received_at: DateTime<Utc>,
}

impl EventRow {
    fn as_copy(&self) -> CopyRow<'_> {
        let c = &self.click;
        CopyRow {
            event_id: &c.raw.event_id,
            user_id: &c.raw.user_id,
            ts_ms: c.raw.timestamp_ms,
            url: &c.raw.url,
            ip: &c.raw.ip,
            user_agent: &c.raw.user_agent,
            referrer: c.raw.referrer.as_deref(),
            session_id: c.raw.session_id.as_deref(),
            country: &c.country,
            city: &c.city,
            browser: &c.browser,
            os: &c.os,
            device: device_name(c.device),
            plugin_name: &self.plugin_name,
            plugin_version: &c.plugin_version,
            topic: &self.provenance.topic,
            partition: self.provenance.partition,
            offset: self.provenance.offset,
            received_at: self.provenance.received_at,
        }
    }
}

/// PostgreSQL's epoch (2000-01-01T00:00:00Z) in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Encodes rows in PostgreSQL's binary `COPY` format (header, tuples, trailer).
pub fn encode_copy<'a>(rows: impl IntoIterator<Item = CopyRow<'a>>, out: &mut Vec<u8>) {
    fn text(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    fn opt_text(out: &mut Vec<u8>, s: Option<&str>) {
        match s {
            Some(s) => text(out, s),
            None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    fn int8(out: &mut Vec<u8>, v: i64) {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
    out.clear();
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes()); // flags
    out.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for r in rows {
        out.extend_from_slice(&19i16.to_be_bytes());
        text(out, r.event_id);
        text(out, r.user_id);
        int8(out, r.ts_ms);
        for s in [r.url, r.ip, r.user_agent] {
            text(out, s);
        }
        opt_text(out, r.referrer);
        opt_text(out, r.session_id);
        for s in [r.country, r.city, r.browser, r.os, r.device, r.plugin_name, r.plugin_version, r.topic] {
            text(out, s);
        }
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(&r.partition.to_be_bytes());
        int8(out, r.offset);
        int8(out, r.received_at.timestamp_micros() - PG_EPOCH_MICROS);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

/// Inserts the events whose ids are not stored yet, with binary `COPY` (half
/// the cost of an `INSERT` over arrays, measured in docs/BENCHMARKS.md);
/// returns how many were new. `COPY` has no `ON CONFLICT`, so ids already
/// stored, and repeats within the batch, are dropped first (the first
/// occurrence wins, as it would with `ON CONFLICT DO NOTHING`). Should
/// another host store one of these ids between the check and the `COPY` (the
/// same event sent twice, to two partitions), the `COPY` fails with a unique
/// violation and the caller's retry runs the check again.
pub(crate) async fn insert_events(tx: &mut sqlx::PgConnection, events: &[&EventRow]) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = events.iter().map(|e| e.click.raw.event_id.as_str()).collect();
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY($1::text[])")
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
    let mut seen: std::collections::HashSet<&str> = stored.iter().map(String::as_str).collect();
    let new: Vec<&EventRow> = events.iter().copied().filter(|e| seen.insert(e.click.raw.event_id.as_str())).collect();
    if new.is_empty() {
        return Ok(0);
    }
    let mut buf = Vec::with_capacity(new.len() * 512);
    encode_copy(new.iter().map(|e| e.as_copy()), &mut buf);
    let mut copy = tx.copy_in_raw(&format!("COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)")).await?;
    if let Err(e) = copy.send(buf.as_slice()).await {
        let _ = copy.abort("sending the batch failed").await;
        return Err(e);
    }
    copy.finish().await
}

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
pub(crate) async fn mark_windows_changed(tx: &mut sqlx::PgConnection, events: &[&EventRow], windows: WindowSpec) -> Result<(), sqlx::Error> {
    let own: std::collections::BTreeSet<i64> = events.iter().map(|e| windows.window_start(e.click.raw.timestamp_ms)).collect();
    // Per user: (first, last) new event by (time, id).
    let mut span: std::collections::HashMap<&str, ((i64, &str), (i64, &str))> = std::collections::HashMap::new();
    for e in events {
        let key = (e.click.raw.timestamp_ms, e.click.raw.event_id.as_str());
        span.entry(e.click.raw.user_id.as_str())
            .and_modify(|(first, last)| {
                *first = (*first).min(key);
                *last = (*last).max(key);
            })
            .or_insert((key, key));
    }
    let users: Vec<&str> = span.keys().copied().collect();
    let (first, last): (Vec<(i64, &str)>, Vec<(i64, &str)>) = users.iter().map(|u| span[u]).unzip();
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

async fn insert_dead_letters(tx: &mut sqlx::PgConnection, dead: &[&DeadLetter]) -> Result<u64, sqlx::Error> {
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
         ON CONFLICT (topic, \"partition\", \"offset\") DO NOTHING",
    )
    .bind(column!(|d| d.provenance.topic.as_str()))
    .bind(column!(|d| d.provenance.partition))
    .bind(column!(|d| d.provenance.offset))
    .bind(column!(|d| d.key.as_deref()))
    .bind(column!(|d| d.payload.as_slice()))
    .bind(column!(|d| d.stage.as_str()))
    .bind(column!(|d| d.kind.as_str()))
    .bind(column!(|d| d.reason.as_str()))
    .bind(column!(|d| d.plugin_version.as_deref()))
    .bind(column!(|d| d.provenance.received_at))
    .execute(&mut *tx)
    .await?;
    Ok(result.rows_affected())
}
