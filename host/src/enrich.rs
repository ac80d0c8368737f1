//! Records → enriched events and dead letters. The second stage: decodes each
//! record, calls the enrich plugin once per batch, and turns every refusal
//! into a dead letter with its reason. Runs on a thread of its own because
//! plugin calls are CPU-bound and block.
//!
//! The host, not the plugin, owns an event's identity: the event id, user id
//! and timestamp stored are the decoded ones whatever the plugin returns, and
//! every string the plugin returns is checked against the same limits as the
//! input (a plugin that breaks them dead-letters that record, kind `contract`).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::decode::{check_fields, check_text, decode, DecodeError, DecodeLimits};
use crate::plugin::enrich::{EnrichResults, EnrichRunner, EnrichedClick, LoadedEnrich, RawClick};
use crate::plugin::PluginError;
use crate::source::Consumed;
use crate::stats::{BatchStage, Stats};
use crate::store::{DeadLetter, EventRow, Stage, WriteBatch};

/// Runs the stage until `input` closes; `output` closes when it returns.
pub fn spawn(
    mut runner: EnrichRunner,
    limits: watch::Receiver<DecodeLimits>,
    mut input: mpsc::Receiver<Vec<Consumed>>,
    output: mpsc::Sender<WriteBatch>,
    stats: Arc<Stats>,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name("enrich".into())
        .spawn(move || {
            while let Some(records) = input.blocking_recv() {
                let started = std::time::Instant::now();
                let len = records.len();
                let limits = *limits.borrow();
                let batch = process(&mut runner, records, &limits, &stats);
                stats.batch(BatchStage::Enrich, len, started.elapsed());
                if output.blocking_send(batch).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the enrich thread")
}

/// Decodes and enriches one batch. Every record ends up in exactly one of
/// `events` and `dead_letters`.
pub fn process(runner: &mut EnrichRunner, records: Vec<Consumed>, limits: &DecodeLimits, stats: &Stats) -> WriteBatch {
    let mut batch = WriteBatch::default();
    let mut clicks: Vec<RawClick> = Vec::with_capacity(records.len());
    let mut origins: Vec<Consumed> = Vec::with_capacity(records.len());
    let now_ms = chrono::Utc::now().timestamp_millis();
    for record in records {
        batch.saw(&record.provenance);
        match decode(&record.payload, limits, now_ms, || record.derived_event_id()) {
            Ok(click) => {
                clicks.push(click);
                origins.push(record);
            }
            Err(e) => batch.dead_letters.push(DeadLetter {
                provenance: record.provenance,
                key: record.key,
                payload: record.payload,
                stage: Stage::Decode,
                kind: e.kind().into(),
                reason: e.to_string(),
                plugin_version: None,
            }),
        }
    }
    if clicks.is_empty() {
        return batch;
    }
    match runner.enrich(&clicks) {
        Ok((plugin, results)) => collect(&mut batch, &plugin, origins, clicks, results),
        Err(e) => {
            // One bad record must not sink its batch: retry one by one so only
            // the record that makes the plugin fail is dead-lettered.
            stats.enrich_batch_failures.inc();
            tracing::warn!(error = %e, records = clicks.len(), "enrich plugin failed on a batch; retrying record by record");
            for (click, origin) in clicks.into_iter().zip(origins) {
                match runner.enrich(std::slice::from_ref(&click)) {
                    Ok((plugin, results)) => collect(&mut batch, &plugin, vec![origin], vec![click], results),
                    Err(e) => batch.dead_letters.push(plugin_failure(origin, &e, runner)),
                }
            }
        }
    }
    batch
}

/// Longest country, city, browser, OS or plugin version a plugin may return,
/// in bytes: labels, stored in every row and used as index keys.
pub const LABEL_MAX_BYTES: usize = 256;

/// The event to store: the plugin's enrichment of `decoded`, with the
/// host's identity fields, or why the plugin's answer breaks the contract.
fn owned_by_host(decoded: RawClick, mut click: EnrichedClick) -> Result<EnrichedClick, DecodeError> {
    click.raw.event_id = decoded.event_id;
    click.raw.user_id = decoded.user_id;
    click.raw.timestamp_ms = decoded.timestamp_ms;
    check_fields(&click.raw)?;
    for (field, value) in [
        ("country", &click.country),
        ("city", &click.city),
        ("browser", &click.browser),
        ("os", &click.os),
        ("plugin_version", &click.plugin_version),
    ] {
        check_text(field, value, LABEL_MAX_BYTES)?;
    }
    Ok(click)
}

fn collect(batch: &mut WriteBatch, plugin: &LoadedEnrich, origins: Vec<Consumed>, decoded: Vec<RawClick>, results: EnrichResults) {
    for ((origin, decoded), result) in origins.into_iter().zip(decoded).zip(results) {
        match result.map(|click| owned_by_host(decoded, click)) {
            Ok(Ok(click)) => batch.events.push(EventRow {
                click,
                plugin_name: plugin.info.name.clone(),
                provenance: origin.provenance,
                key: origin.key,
                payload: origin.payload,
            }),
            Ok(Err(broken)) => batch.dead_letters.push(DeadLetter {
                provenance: origin.provenance,
                key: origin.key,
                payload: origin.payload,
                stage: Stage::Enrich,
                kind: "contract".into(),
                reason: format!("plugin `{}` ({}) returned an event the host cannot store: {broken}", plugin.info.slot, plugin.info.version),
                plugin_version: Some(plugin.info.version.clone()),
            }),
            Err(refusal) => batch.dead_letters.push(DeadLetter {
                provenance: origin.provenance,
                key: origin.key,
                payload: origin.payload,
                stage: Stage::Enrich,
                kind: "refused".into(),
                reason: match refusal.field {
                    Some(field) => format!("{field}: {}", refusal.reason),
                    None => refusal.reason,
                },
                plugin_version: Some(plugin.info.version.clone()),
            }),
        }
    }
}

fn plugin_failure(origin: Consumed, error: &PluginError, runner: &EnrichRunner) -> DeadLetter {
    DeadLetter {
        provenance: origin.provenance,
        key: origin.key,
        payload: origin.payload,
        stage: Stage::Enrich,
        kind: error.kind().into(),
        reason: error.to_string(),
        plugin_version: Some(runner.live().info.version.clone()),
    }
}
