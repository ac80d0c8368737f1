//! `batched`, a careful batched design: what a careful consumer script does,
//! written natively. One consumer reads the pre-filled topic (assigned, as
//! `broker`), decodes each record with the host's decoder, enriches natively
//! (the enrich plugin's crate, the host's GeoIP), and every 5,000 events
//! inserts them with one multi-row `INSERT … ON CONFLICT DO NOTHING` (rows
//! as arrays: `UNNEST`, as 5,000 rows of 20 parameters would pass
//! PostgreSQL's 65,535-parameter limit) and commits — one connection, one
//! transaction per 5,000 rows, into the store's final `events` table.
//! `ingest` over this is what the pipeline's design is worth over the script.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::Consumer;
use rdkafka::Message;
use serde_json::{json, Value};
use sqlx::Connection;

use super::data::{native_geoip, native_settings, row_of, to_native, Row};
use super::stats::rate;
use super::{progress, Bench, State};
use clickstream::stages::decode::{decode, DecodeLimits};
use clickstream::stages::store::EVENT_COLUMNS;

/// Rows per `INSERT` and transaction.
const ROWS_PER_INSERT: usize = 5_000;

/// Runs `batched`.
pub async fn run(bench: &Bench, state: &State) -> anyhow::Result<Value> {
    let topic = state.topic.as_ref().context("the ingest topic was not produced")?;
    let db = bench.fresh_database("batched").await?;
    // The store's migrations and today's partitions; the bench events' day is made below.
    let store = clickstream::stages::store::Store::connect(
        &db,
        clickstream::stages::record::WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 },
    )
    .await?;
    let day = clickstream::stages::store::partitions::day_of(super::data::START_MS).context("the bench's start day")?;
    store.partitions().ensure_all(store.pool(), [day, day.succ_opt().unwrap_or(day)]).await?;
    store.pool().close().await;

    let geoip = bench.geoip()?;
    let lookup = native_geoip(&geoip);
    let mut enricher = clickstream_enrich::Enricher::new(native_settings());
    let mut conn = sqlx::PgConnection::connect(&db).await?;
    let (consumer, assignment) = super::broker::consumer_from_beginning(bench, topic, "batched")?;
    let started = Instant::now();
    consumer.assign(&assignment)?;
    let limits = DecodeLimits::UNBOUNDED;
    let mut pending: Vec<Row> = Vec::with_capacity(ROWS_PER_INSERT);
    let (mut consumed, mut inserted) = (0u64, 0u64);
    let mut last_report = Instant::now();
    while consumed < topic.records {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .with_context(|| format!("no record for 60 s after {consumed} of {}", topic.records))??;
        consumed += 1;
        let received_at = chrono::Utc::now();
        let click = decode(message.payload().unwrap_or_default(), &limits, 0, || unreachable!("generated events carry ids"))
            .map_err(|e| anyhow::anyhow!("a generated record does not decode: {e}"))?;
        let kept = enricher.transform_batch(vec![to_native(&click)], &lookup);
        for outcome in kept {
            if let clickstream_enrich::Outcome::Keep(e) = outcome {
                pending.push(row_of(e, topic.name.as_str(), message.partition(), message.offset(), received_at));
            }
        }
        if pending.len() >= ROWS_PER_INSERT || consumed == topic.records {
            inserted += insert(&mut conn, &pending).await?;
            pending.clear();
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format_args!("  batched: {consumed}/{}", topic.records));
            last_report = Instant::now();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?;
    conn.close().await?;
    anyhow::ensure!(
        stored as u64 == topic.records && inserted == topic.records,
        "stored {stored} ({inserted} inserted) of {}",
        topic.records
    );
    let r = rate(topic.records as f64, secs);
    progress(format_args!("  careful batched design: {r:.0} events/s"));
    Ok(json!({
        "events": topic.records,
        "rows_per_insert": ROWS_PER_INSERT,
        "seconds": secs,
        "events_per_s": r,
        "measures": "assign() → last batch committed: one consumer, the host's decoder, native enrich one event at a time, one multi-row INSERT ... ON CONFLICT DO NOTHING (UNNEST of column arrays) and COMMIT per 5,000 events, one connection, into the store's final events table; no offsets table, no dead letters",
    }))
}

/// One multi-row insert in its own transaction; returns the rows inserted.
async fn insert(conn: &mut sqlx::PgConnection, rows: &[Row]) -> anyhow::Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    macro_rules! column {
        ($f:expr) => {
            rows.iter().map($f).collect::<Vec<_>>()
        };
    }
    let mut tx = conn.begin().await?;
    let done = sqlx::query(&format!(
        "INSERT INTO events ({EVENT_COLUMNS})
         SELECT a, b, ts, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, '{{}}'::jsonb, c FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[],
                                          $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                                          $15::text[], $16::text[], $17::int[], $18::bigint[], $19::timestamptz[], $20::text[])
                AS v(a, b, ts, d, e, f, g, h, i, j, k, l, m, n, o, p, q, r, s, c)
         ON CONFLICT DO NOTHING"
    ))
    .bind(column!(|r| r.event_id.as_str()))
    .bind(column!(|r| r.user_id.as_str()))
    .bind(column!(|r| r.ts_ms))
    .bind(column!(|r| r.url.as_str()))
    .bind(column!(|r| r.ip.as_str()))
    .bind(column!(|r| r.user_agent.as_str()))
    .bind(column!(|r| r.referrer.as_deref()))
    .bind(column!(|r| r.session_id.as_deref()))
    .bind(column!(|r| r.country.as_str()))
    .bind(column!(|r| r.city.as_str()))
    .bind(column!(|r| r.browser.as_str()))
    .bind(column!(|r| r.os.as_str()))
    .bind(column!(|r| r.device))
    .bind(column!(|r| r.plugin_name.as_str()))
    .bind(column!(|r| r.plugin_version.as_str()))
    .bind(column!(|r| r.topic.as_str()))
    .bind(column!(|r| r.partition))
    .bind(column!(|r| r.offset))
    .bind(column!(|r| r.received_at))
    .bind(column!(|r| r.chain.as_str()))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(done)
}
