//! Decoded clicks → enriched events and dead letters. The third stage: calls
//! the enrich plugin once per batch and turns every refusal into a dead
//! letter with its reason. Plugin calls are CPU-bound and block, so it runs
//! on a thread of its own (`runtime::pipeline`).
//!
//! The host, not the plugin, owns an event's identity: the event id, user id
//! and timestamp stored are the decoded ones whatever the plugin returns, and
//! every string the plugin returns is checked against the same limits as the
//! input (a plugin that breaks them dead-letters that record, kind `contract`).

use crate::plugin::enrich::{EnrichResults, EnrichRunner, LoadedEnrich};
use crate::plugin::PluginError;
use crate::stages::record::limits::FieldError;
use crate::stages::record::{Consumed, DeadLetter, Decoded, Enriched, Event, RawEvent, Stage, WriteBatch};
use crate::stats::Stats;

/// Enriches a decoded batch. Every record ends up in exactly one of the
/// returned batch's `events` and `dead_letters`.
pub fn process(runner: &mut EnrichRunner, decoded: Decoded, stats: &Stats) -> WriteBatch {
    let Decoded { mut batch, events, origins } = decoded;
    if events.is_empty() {
        return batch;
    }
    match runner.enrich(&events) {
        Ok((plugin, results)) => collect(&mut batch, &plugin, origins, events, results),
        Err(e) => {
            // One bad record must not sink its batch: retry one by one so only
            // the record that makes the plugin fail is dead-lettered.
            stats.enrich_batch_failures.inc();
            tracing::warn!(error = %e, records = events.len(), "enrich plugin failed on a batch; retrying record by record");
            for (event, origin) in events.into_iter().zip(origins) {
                match runner.enrich(std::slice::from_ref(&event)) {
                    Ok((plugin, results)) => collect(&mut batch, &plugin, vec![origin], vec![event], results),
                    Err(e) => batch.dead_letters.push(plugin_failure(origin, &e, runner)),
                }
            }
        }
    }
    batch
}

/// The plugin's enrichment of `decoded` with the host's identity fields, or
/// why the plugin's answer breaks the contract.
fn owned_by_host(decoded: RawEvent, mut enriched: Enriched) -> Result<Enriched, FieldError> {
    enriched.raw.event_id = decoded.event_id;
    enriched.raw.user_id = decoded.user_id;
    enriched.raw.timestamp_ms = decoded.timestamp_ms;
    enriched.raw.check_fields()?;
    enriched.enrichment.check_fields()?;
    Ok(enriched)
}

fn collect(batch: &mut WriteBatch, plugin: &LoadedEnrich, origins: Vec<Consumed>, decoded: Vec<RawEvent>, results: EnrichResults) {
    for ((origin, decoded), result) in origins.into_iter().zip(decoded).zip(results) {
        match result.map(|enriched| owned_by_host(decoded, enriched)) {
            Ok(Ok(Enriched { raw, enrichment })) => batch.events.push(Event {
                raw,
                enrichment,
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
                reason: format!(
                    "plugin `{}` ({}) returned an event the host cannot store: {broken}",
                    plugin.info.slot, plugin.info.version
                ),
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
