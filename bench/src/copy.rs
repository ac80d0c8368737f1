//! Arm 2, the ingest limit: the same enriched rows written straight into a
//! fresh `events` table (the store's migrations, indexes included) with
//! binary `COPY`, one `COPY` (one transaction) per batch of the pipeline's
//! batch size — no Kafka, no plugin, no offsets.
//!
//! Arm 4, the classic design: one `INSERT` and one commit per event, on a
//! subset, scaled to the full size.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sqlx::Connection;

use super::data::{enriched_rows, Row};
use super::stats::{mib_per_s, rate};
use super::{progress, Bench};
use clickstream::stages::record::WindowSpec;
use clickstream::stages::store::{encode_copy, Store, EVENT_COLUMNS};

/// A fresh database with the store's tables.
async fn fresh_store(bench: &Bench, name: &str) -> anyhow::Result<(String, Store)> {
    let url = bench.fresh_database(name).await?;
    let store = Store::connect(&url, WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 }).await?;
    Ok((url, store))
}

/// Runs arm 2.
pub async fn run_copy(bench: &Bench) -> anyhow::Result<Value> {
    let geoip = bench.geoip()?;
    let events = bench.sizes.events;
    let rows = tokio::task::block_in_place(|| enriched_rows(bench, &geoip, events));
    let (url, store) = fresh_store(bench, "copy").await?;
    store.pool().close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    let statement = format!("COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)");
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
            progress(format_args!("  copied {done}/{}", rows.len()));
            last_report = Instant::now();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&mut conn).await?;
    anyhow::ensure!(count == rows.len() as i64, "events holds {count} rows after copying {}", rows.len());
    conn.close().await?;
    // The payload size the pipeline reads for these events, for MiB/s comparable with arms 0 and 1.
    let payload: u64 = super::data::generator(bench, events).map(|r| r.payload.len() as u64).sum();
    let r = rate(rows.len() as f64, secs);
    progress(format_args!("  binary COPY: {r:.0} events/s"));
    Ok(json!({
        "events": rows.len(),
        "batch_size": bench.sizes.batch_size,
        "format": "binary",
        "seconds": secs,
        "events_per_s": r,
        "mib_per_s": mib_per_s(payload as f64, secs),
        "mib_per_s_means": "Kafka payload bytes of these events per second, comparable with arms 0 and 1",
        "copy_mib_per_s": mib_per_s(bytes as f64, secs),
        "encode_seconds": encode.as_secs_f64(),
        "measures": "encode + COPY ... FROM STDIN (FORMAT binary) per batch, each its own transaction, one connection, into the store's events table with its primary key and two indexes",
    }))
}

/// Runs arm 4.
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
