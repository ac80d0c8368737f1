//! Batches as the transform stage hands them to the store, built by hand:
//! what reaches PostgreSQL is exactly what a test writes, without the checks
//! the decoder and the transforms make.

use std::sync::Arc;

use chrono::Utc;
use clickstream::stages::record::{DeadLetter, Device, Enrichment, Event, Link, Provenance, RawEvent, WriteBatch};

/// Topic `t`, partition 0, at `offset`, received now.
pub fn provenance(offset: i64) -> Provenance {
    Provenance { topic: "t".into(), partition: 0, offset, received_at: Utc::now() }
}

/// An event of user `u{offset % 7}` from `81.2.69.142` (GB, London) at
/// `ts_ms`, from [`provenance`]`(offset)`, whose raw record is `raw record
/// {offset}`.
pub fn event(offset: i64, event_id: &str, url: &str, ts_ms: i64) -> Event {
    let raw = RawEvent {
        event_id: event_id.into(),
        user_id: format!("u{}", offset % 7),
        timestamp_ms: ts_ms,
        url: url.into(),
        ip: "81.2.69.142".into(),
        user_agent: String::new(),
        referrer: None,
        session_id: None,
    };
    Event {
        raw,
        enrichment: Enrichment {
            country: Some("GB".into()),
            city: Some("London".into()),
            browser: None,
            os: None,
            device: Some(Device::Unknown),
        },
        attributes: Vec::new(),
        chain: Arc::from(vec![Link { name: "test".into(), version: "1.0.0".into() }]),
        provenance: provenance(offset),
        key: Some(b"k".to_vec()),
        payload: format!("raw record {offset}").into_bytes(),
    }
}

/// A write batch of these events and dead letters, with their offsets.
pub fn batch_of(events: Vec<Event>, dead: Vec<DeadLetter>) -> WriteBatch {
    let mut batch = WriteBatch::default();
    for p in events.iter().map(|e| &e.provenance).chain(dead.iter().map(|d| &d.provenance)) {
        batch.saw(p);
    }
    batch.events = events;
    batch.dead_letters = dead;
    batch
}
