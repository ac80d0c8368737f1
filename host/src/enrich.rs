//! Records → enriched events and dead letters. The second stage: decodes each
//! record, calls the enrich plugin once per batch, and turns every refusal
//! into a dead letter with its reason. Runs on a thread of its own because
//! plugin calls are CPU-bound and block.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::decode::decode;
use crate::plugin::enrich::{EnrichResults, EnrichRunner, LoadedEnrich, RawClick};
use crate::plugin::PluginError;
use crate::source::Consumed;
use crate::stats::{BatchStage, Stats};
use crate::store::{DeadLetter, EventRow, Stage, WriteBatch};

/// Runs the stage until `input` closes; `output` closes when it returns.
pub fn spawn(
    mut runner: EnrichRunner,
    max_record_bytes: Arc<AtomicUsize>,
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
                let batch = process(&mut runner, records, max_record_bytes.load(Ordering::Relaxed), &stats);
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
pub fn process(runner: &mut EnrichRunner, records: Vec<Consumed>, max_record_bytes: usize, stats: &Stats) -> WriteBatch {
    let mut batch = WriteBatch::default();
    let mut clicks: Vec<RawClick> = Vec::with_capacity(records.len());
    let mut origins: Vec<Consumed> = Vec::with_capacity(records.len());
    for record in records {
        batch.saw(&record.provenance);
        match decode(&record.payload, max_record_bytes, || record.derived_event_id()) {
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
        Ok((plugin, results)) => collect(&mut batch, &plugin, origins, results),
        Err(e) => {
            // One bad record must not sink its batch: retry one by one so only
            // the record that makes the plugin fail is dead-lettered.
            stats.enrich_batch_failures.inc();
            tracing::warn!(error = %e, records = clicks.len(), "enrich plugin failed on a batch; retrying record by record");
            for (click, origin) in clicks.into_iter().zip(origins) {
                match runner.enrich(std::slice::from_ref(&click)) {
                    Ok((plugin, results)) => collect(&mut batch, &plugin, vec![origin], results),
                    Err(e) => batch.dead_letters.push(plugin_failure(origin, &e, runner)),
                }
            }
        }
    }
    batch
}

fn collect(batch: &mut WriteBatch, plugin: &LoadedEnrich, origins: Vec<Consumed>, results: EnrichResults) {
    for (origin, result) in origins.into_iter().zip(results) {
        match result {
            Ok(click) => batch.events.push(EventRow {
                click,
                plugin_name: plugin.info.name.clone(),
                provenance: origin.provenance,
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
