//! `copy-limit`, the ingest limit: the same enriched rows written straight into a
//! fresh `events` table (the store's migrations, indexes included) with
//! binary `COPY`, one `COPY` (one transaction) per batch of the pipeline's
//! batch size — no Kafka, no plugin, no offsets. Then the same rows into
//! each earlier shape of the table, side by side: the table before day
//! partitioning (migrations 0001–0005), and that table with one change at a
//! time, so each change to the schema is measured alone.
//!
//! `classic-insert`, the classic design: one `INSERT` and one commit per event, on a
//! subset, scaled to the full size.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;

use super::data::{enriched_rows, Row};
use super::stats::{mib_per_s, rate};
use super::{progress, Bench};
use clickstream::stages::record::WindowSpec;
use clickstream::stages::store::{encode_copy, Store, EVENT_COLUMNS};

/// A fresh database with the store's tables, and the day partitions of the
/// bench's hour (what the store makes on demand).
pub async fn fresh_store(bench: &Bench, name: &str) -> anyhow::Result<(String, Store)> {
    let url = bench.fresh_database(name).await?;
    let store = Store::connect(&url, WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 }).await?;
    let start = super::data::START_MS;
    let days = [start, start + bench.sizes.span_secs as i64 * 1000].into_iter().filter_map(clickstream::stages::store::partitions::day_of);
    store.partitions().ensure_all(store.pool(), days).await?;
    Ok((url, store))
}

/// The `events` table of migrations 0001–0005, before day partitions, as
/// `{t}`: a generated `event_time`, a primary key on `event_id`, btree
/// indexes on `ts_ms` and `(user_id, ts_ms, event_id)`.
const TABLE_BEFORE: &str = "CREATE TABLE {t} (
    event_id text PRIMARY KEY, user_id text NOT NULL, ts_ms bigint NOT NULL,
    event_time timestamptz GENERATED ALWAYS AS (to_timestamp(ts_ms / 1000.0)) STORED,
    url text NOT NULL, ip text NOT NULL, user_agent text NOT NULL, referrer text, session_id text,
    country text NOT NULL, city text NOT NULL, browser text NOT NULL, os text NOT NULL, device text NOT NULL,
    plugin_name text NOT NULL, plugin_version text NOT NULL, topic text NOT NULL, \"partition\" integer NOT NULL,
    \"offset\" bigint NOT NULL, received_at timestamptz NOT NULL, stored_at timestamptz NOT NULL DEFAULT now(),
    attributes jsonb NOT NULL DEFAULT '{}', chain text NOT NULL DEFAULT '');
CREATE INDEX ON {t} (ts_ms);
CREATE INDEX ON {t} (user_id, ts_ms, event_id)";

/// The shapes of `events` `copy-limit` copies into, each a change from
/// [`TABLE_BEFORE`]: (name, what changed, DDL, partitioned by day).
fn shapes() -> Vec<(&'static str, &'static str, String, bool)> {
    let before = TABLE_BEFORE.to_string();
    vec![
        ("before", "migrations 0001–0005: no partitions, event_time, btree ts_ms", before.clone(), false),
        (
            "without_event_time",
            "before, without the generated event_time column",
            before.replace("    event_time timestamptz GENERATED ALWAYS AS (to_timestamp(ts_ms / 1000.0)) STORED,\n", ""),
            false,
        ),
        (
            "brin_ts",
            "before, with a BRIN index on ts_ms instead of a btree",
            before.replace("CREATE INDEX ON {t} (ts_ms)", "CREATE INDEX ON {t} USING brin (ts_ms)"),
            false,
        ),
        (
            "time_first_key",
            "before, keyed by (ts_ms, event_id), with no other index on ts_ms",
            before
                .replace("event_id text PRIMARY KEY,", "event_id text NOT NULL,")
                .replace("chain text NOT NULL DEFAULT '');", "chain text NOT NULL DEFAULT '', PRIMARY KEY (ts_ms, event_id));")
                .replace("CREATE INDEX ON {t} (ts_ms);\n", ""),
            false,
        ),
        (
            "partitioned",
            "before, partitioned by day (primary key (event_id, ts_ms))",
            before.replace("event_id text PRIMARY KEY,", "event_id text NOT NULL,").replace(
                "chain text NOT NULL DEFAULT '');",
                "chain text NOT NULL DEFAULT '', PRIMARY KEY (event_id, ts_ms)) PARTITION BY RANGE (ts_ms);",
            ),
            true,
        ),
    ]
}

/// Copies `rows` into `table` in batches of the pipeline's batch size, each
/// its own transaction: (seconds, encoded bytes, encoding time).
pub async fn copy_rows(bench: &Bench, conn: &mut sqlx::PgConnection, table: &str, rows: &[Row]) -> anyhow::Result<(f64, u64, Duration)> {
    let statement = format!("COPY {table} ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)");
    let mut buf = Vec::new();
    let (mut encode, mut bytes) = (Duration::ZERO, 0u64);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut done = 0usize;
    for batch in rows.chunks(bench.sizes.batch_size) {
        let t = Instant::now();
        encode_copy(batch.iter().map(Row::as_copy), &mut buf);
        encode += t.elapsed();
        bytes += buf.len() as u64;
        let mut copy = conn.copy_in_raw(&statement).await?;
        copy.send(buf.as_slice()).await?;
        let n = copy.finish().await?;
        anyhow::ensure!(n == batch.len() as u64, "COPY stored {n} rows of {}", batch.len());
        done += batch.len();
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format_args!("  {table}: copied {done}/{}", rows.len()));
            last_report = Instant::now();
        }
    }
    Ok((started.elapsed().as_secs_f64(), bytes, encode))
}

/// Fails unless `table` holds `expected` rows.
async fn ensure_rows(conn: &mut sqlx::PgConnection, table: &str, expected: usize) -> anyhow::Result<()> {
    let count: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(&mut *conn).await?;
    anyhow::ensure!(count == expected as i64, "{table} holds {count} rows, {expected} expected");
    Ok(())
}

/// Day partitions of `table` for every day of `rows`.
async fn day_partitions_for(conn: &mut sqlx::PgConnection, table: &str, rows: &[Row]) -> anyhow::Result<()> {
    const DAY: i64 = 86_400_000;
    let days: std::collections::BTreeSet<i64> = rows.iter().map(|r| r.ts_ms.div_euclid(DAY)).collect();
    for d in days {
        sqlx::query(&format!("CREATE TABLE {table}_{d} PARTITION OF {table} FOR VALUES FROM ({}) TO ({})", d * DAY, (d + 1) * DAY))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Runs `copy-limit`.
pub async fn run_copy(bench: &Bench) -> anyhow::Result<Value> {
    let geoip = bench.geoip()?;
    let events = bench.sizes.events;
    let rows = tokio::task::block_in_place(|| enriched_rows(bench, &geoip, events));
    let (url, store) = fresh_store(bench, "copy").await?;
    store.pool().close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let (secs, bytes, encode) = copy_rows(bench, &mut conn, "events", &rows).await?;
    ensure_rows(&mut conn, "events", rows.len()).await?;
    // The payload size the pipeline reads for these events, for MiB/s comparable with `broker` and `ingest`.
    let payload: u64 = super::data::generator(bench, events).map(|r| r.payload.len() as u64).sum();
    let r = rate(rows.len() as f64, secs);
    progress(format_args!("  binary COPY: {r:.0} events/s"));
    let mut by_shape = serde_json::Map::new();
    for (name, what, ddl, partitioned) in shapes() {
        let table = format!("events_{name}");
        sqlx::raw_sql(&ddl.replace("{t}", &table)).execute(&mut conn).await?;
        if partitioned {
            day_partitions_for(&mut conn, &table, &rows).await?;
        }
        let (s, _, _) = copy_rows(bench, &mut conn, &table, &rows).await?;
        ensure_rows(&mut conn, &table, rows.len()).await?;
        sqlx::query(&format!("DROP TABLE {table}")).execute(&mut conn).await?;
        let shape_rate = rate(rows.len() as f64, s);
        progress(format_args!("  binary COPY into {name}: {shape_rate:.0} events/s ({:.2}× of the final table)", r / shape_rate));
        by_shape.insert(name.into(), json!({ "events_per_s": shape_rate, "seconds": s, "what": what, "final_over_this": r / shape_rate }));
    }
    conn.close().await?;
    Ok(json!({
        "events": rows.len(),
        "batch_size": bench.sizes.batch_size,
        "format": "binary",
        "seconds": secs,
        "events_per_s": r,
        "mib_per_s": mib_per_s(payload as f64, secs),
        "mib_per_s_means": "Kafka payload bytes of these events per second, comparable with `broker` and `ingest`",
        "copy_mib_per_s": mib_per_s(bytes as f64, secs),
        "encode_seconds": encode.as_secs_f64(),
        "measures": "encode + COPY ... FROM STDIN (FORMAT binary) per batch, each its own transaction, one connection, into the store's events table (day partitions, primary key (ts_ms, event_id), btree on (user_id, ts_ms, event_id)); then the same into each earlier shape of the table, one after the other, on the same connection",
        "by_shape": by_shape,
        "final_over_before": by_shape.get("before").and_then(|b| b["events_per_s"].as_f64()).map(|b| r / b),
    }))
}

/// Fills a fresh bench database with `events` rows (other ids, the same
/// users, URLs and hour as the bench topic, so the same day partition and
/// indexes), from topic `prefill`, then `VACUUM ANALYZE`s it as autovacuum
/// would. Returns the rows in `events`.
pub async fn prefill(bench: &Bench, url: &str, events: u64) -> anyhow::Result<u64> {
    if events == 0 {
        return Ok(0);
    }
    const CHUNK: u64 = 500_000;
    let store = Store::connect(url, WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 }).await?;
    let geoip = bench.geoip()?;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let started = Instant::now();
    let (mut done, mut chunk) = (0, 0);
    while done < events {
        let n = CHUNK.min(events - done);
        let generator = super::data::generator_seeded(bench, n, bench.sizes.seed.wrapping_add(1_000 + chunk));
        let rows = tokio::task::block_in_place(|| super::data::enriched_rows_of(generator, &geoip, "prefill"));
        let days = rows.iter().filter_map(|r| clickstream::stages::store::partitions::day_of(r.ts_ms));
        store.partitions().ensure_all(store.pool(), days.collect::<std::collections::BTreeSet<_>>()).await?;
        copy_rows(bench, &mut conn, "events", &rows).await?;
        done += n;
        chunk += 1;
        progress(format_args!("  prefilled {done}/{events} events"));
    }
    store.pool().close().await;
    sqlx::query("VACUUM ANALYZE events").execute(&mut conn).await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?;
    conn.close().await?;
    progress(format_args!("  prefill: {count} events in {:.0} s", started.elapsed().as_secs_f64()));
    Ok(count as u64)
}

/// Runs `classic-insert`.
pub async fn run_classic(bench: &Bench) -> anyhow::Result<Value> {
    let geoip = bench.geoip()?;
    let n = bench.sizes.classic_events;
    let rows = tokio::task::block_in_place(|| enriched_rows(bench, &geoip, n));
    let (url, store) = fresh_store(bench, "classic").await?;
    store.pool().close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let statement = format!(
        "INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, '{{}}'::jsonb, $20)"
    );
    let started = Instant::now();
    for r in &rows {
        // Autocommit: one transaction, one commit (and WAL flush) per event.
        sqlx::query(&statement)
            .bind(&r.event_id)
            .bind(&r.user_id)
            .bind(r.ts_ms)
            .bind(&r.url)
            .bind(&r.ip)
            .bind(&r.user_agent)
            .bind(&r.referrer)
            .bind(&r.session_id)
            .bind(&r.country)
            .bind(&r.city)
            .bind(&r.browser)
            .bind(&r.os)
            .bind(r.device)
            .bind(&r.plugin_name)
            .bind(&r.plugin_version)
            .bind(&r.topic)
            .bind(r.partition)
            .bind(r.offset)
            .bind(r.received_at)
            .bind(&r.chain)
            .execute(&mut conn)
            .await?;
    }
    let secs = started.elapsed().as_secs_f64();
    conn.close().await?;
    let r = rate(rows.len() as f64, secs);
    progress(format_args!("  classic: {r:.0} events/s"));
    Ok(json!({
        "events": rows.len(),
        "seconds": secs,
        "events_per_s": r,
        "scaled_seconds_for_ingest_events": bench.sizes.events as f64 / r.max(1e-9),
        "measures": "one parameterised INSERT per event in autocommit (one commit per event), one connection, same table and indexes; enrichment done beforehand (not timed)",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_copy_has_header_tuples_and_trailer() {
        let row = Row {
            event_id: "e".into(),
            user_id: "u".into(),
            ts_ms: 1,
            url: "/".into(),
            ip: "1.2.3.4".into(),
            user_agent: String::new(),
            referrer: None,
            session_id: Some("s".into()),
            country: "DE".into(),
            city: "Berlin".into(),
            browser: "x".into(),
            os: "y".into(),
            device: "desktop",
            plugin_name: "enrich".into(),
            plugin_version: "0.1.0".into(),
            topic: "t".into(),
            partition: 2,
            offset: 3,
            received_at: chrono::DateTime::from_timestamp(946_684_800, 0).unwrap(),
            chain: "enrich@0.2.0".into(),
        };
        let mut buf = Vec::new();
        encode_copy([row.as_copy()], &mut buf);
        assert!(buf.starts_with(b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0"));
        assert_eq!(&buf[19..21], &21i16.to_be_bytes());
        assert!(buf.windows(12).any(|w| w == [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0]), "received_at at the PostgreSQL epoch is 0 µs");
        // attributes: jsonb version 1, then the text; the chain; the trailer.
        assert!(buf.ends_with(b"\0\0\0\x03\x01{}\0\0\0\x0cenrich@0.2.0\xff\xff"));
        // referrer is NULL: a length of -1.
        assert!(buf.windows(4).any(|w| w == (-1i32).to_be_bytes()));
    }
}
