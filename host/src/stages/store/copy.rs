//! Events → `events` with binary `COPY`.

use std::borrow::Cow;

use chrono::{DateTime, Utc};

use super::partitions::DAY_MS;
use crate::stages::record::{attributes_json, chain_text, Event, Link};

/// The columns the store writes into `events`, in COPY order.
pub const EVENT_COLUMNS: &str = "event_id, user_id, ts_ms, url, ip, user_agent, referrer, session_id, country, city, browser, os, \
                                 device, plugin_name, plugin_version, topic, \"partition\", \"offset\", received_at, attributes, chain";

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
    /// A JSON object.
    pub attributes: Cow<'a, str>,
    pub chain: Cow<'a, str>,
}

/// What an enrichment field is stored as when no transform set it.
const UNKNOWN: &str = "unknown";

/// An event's row. `chain` is its chain's stored text (shared by the
/// events of a batch that went through the same transforms).
fn copy_row<'a>(e: &'a Event, chain: &'a str) -> CopyRow<'a> {
    let (raw, x) = (&e.raw, &e.enrichment);
    let head = e.chain.first();
    CopyRow {
        event_id: &raw.event_id,
        user_id: &raw.user_id,
        ts_ms: raw.timestamp_ms,
        url: &raw.url,
        ip: &raw.ip,
        user_agent: &raw.user_agent,
        referrer: raw.referrer.as_deref(),
        session_id: raw.session_id.as_deref(),
        country: x.country.as_deref().unwrap_or(UNKNOWN),
        city: x.city.as_deref().unwrap_or(UNKNOWN),
        browser: x.browser.as_deref().unwrap_or(UNKNOWN),
        os: x.os.as_deref().unwrap_or(UNKNOWN),
        device: x.device.map_or(UNKNOWN, |d| d.as_str()),
        // The chain's first transform, as before there was a chain.
        plugin_name: head.map_or("", |l: &Link| l.name.as_str()),
        plugin_version: head.map_or("", |l: &Link| l.version.as_str()),
        topic: &e.provenance.topic,
        partition: e.provenance.partition,
        offset: e.provenance.offset,
        received_at: e.provenance.received_at,
        attributes: attributes_json(&e.attributes),
        chain: Cow::Borrowed(chain),
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
        out.extend_from_slice(&21i16.to_be_bytes());
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
        // jsonb's binary form: a version byte (1), then the JSON text.
        out.extend_from_slice(&(r.attributes.len() as i32 + 1).to_be_bytes());
        out.push(1);
        out.extend_from_slice(r.attributes.as_bytes());
        text(out, &r.chain);
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

/// Inserts the events not stored yet, with binary `COPY` (half the cost of
/// an `INSERT` over arrays, measured in docs/BENCHMARKS.md); returns how many
/// were new. An event is its id and its time (the table's key): `COPY` has no
/// `ON CONFLICT`, so events already stored, and repeats within the batch, are
/// dropped first (the first occurrence wins, as it would with `ON CONFLICT DO
/// NOTHING`), each looked up by its key in its own day. Should another writer
/// store one of them between the check and the `COPY` (the same event sent
/// twice, to two partitions), the `COPY` waits for that writer's commit and
/// fails on the key, the part is split, and the event's own attempt runs the
/// check again (an event alone in its part is tried once more:
/// `isolate::insert_isolating`), finding it a duplicate.
pub(crate) async fn insert_events(tx: &mut sqlx::PgConnection, events: &[&Event]) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = events.iter().map(|e| e.raw.event_id.as_str()).collect();
    let times: Vec<i64> = events.iter().map(|e| e.raw.timestamp_ms).collect();
    let (from, to) = times.iter().fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(*t), hi.max(*t)));
    // One key lookup per event (LATERAL keeps it a lookup whatever the
    // planner guesses of the arrays' size); the range prunes other days.
    let stored: Vec<(i64, String)> = sqlx::query_as(
        "SELECT v.ts, v.id FROM UNNEST($1::bigint[], $2::text[]) AS v(ts, id)
         CROSS JOIN LATERAL (
             SELECT 1 FROM events e WHERE e.ts_ms = v.ts AND e.event_id = v.id AND e.ts_ms >= $3 AND e.ts_ms < $4 LIMIT 1
         ) hit",
    )
    .bind(&times)
    .bind(&ids)
    .bind(from.div_euclid(DAY_MS) * DAY_MS)
    .bind((to.div_euclid(DAY_MS) + 1) * DAY_MS)
    .fetch_all(&mut *tx)
    .await?;
    let mut seen: std::collections::HashSet<(i64, &str)> = stored.iter().map(|(t, id)| (*t, id.as_str())).collect();
    let new: Vec<&Event> = events.iter().copied().filter(|e| seen.insert((e.raw.timestamp_ms, e.raw.event_id.as_str()))).collect();
    if new.is_empty() {
        return Ok(0);
    }
    let mut buf = Vec::with_capacity(new.len() * 512);
    // One stored text per distinct chain, not per event.
    let mut chains: Vec<(usize, String)> = Vec::new();
    for e in &new {
        let key = e.chain.as_ptr() as usize;
        if !chains.iter().any(|(k, _)| *k == key) {
            chains.push((key, chain_text(&e.chain)));
        }
    }
    let chain_of = |e: &Event| chains.iter().find(|(k, _)| *k == e.chain.as_ptr() as usize).map_or("", |(_, t)| t.as_str());
    encode_copy(new.iter().map(|e| copy_row(e, chain_of(e))), &mut buf);
    let mut copy = tx.copy_in_raw(&format!("COPY events ({EVENT_COLUMNS}) FROM STDIN (FORMAT binary)")).await?;
    if let Err(e) = copy.send(buf.as_slice()).await {
        let _ = copy.abort("sending the batch failed").await;
        return Err(e);
    }
    copy.finish().await
}
