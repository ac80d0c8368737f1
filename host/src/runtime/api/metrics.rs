//! `/metrics`: the pipeline's metrics in the Prometheus text format (0.0.4).
//! Every name is documented in README.md ("Metrics").

use std::fmt::Write;

use crate::plugin::PluginCounters;
use crate::runtime::pipeline::{Pipeline, PluginView};
use crate::stats::{BatchStage, HistogramSnapshot, PartitionOffsets, Stats};

/// Builds the text of one scrape.
struct Exposition(String);

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, kind, help);
        self.sample(name, &[], value);
    }

    fn histogram(&mut self, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
        for (le, n) in &h.buckets {
            let le = if le.is_infinite() { "+Inf".to_string() } else { le.to_string() };
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, n);
        }
        self.sample(&format!("{name}_sum"), labels, h.sum);
        self.sample(&format!("{name}_count"), labels, h.count);
    }
}

/// Label values may hold any text; these three characters must be escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The whole exposition: process-wide counters from `stats`, and the live
/// plugins' details when a pipeline is running.
pub fn render(stats: &Stats, pipeline: Option<&Pipeline>) -> String {
    let mut out = Exposition(String::with_capacity(16 * 1024));
    out.single("clickstream_up", "gauge", "1 while the pipeline runs, 0 while it is starting or restarting.", u8::from(pipeline.is_some()));
    out.single(
        "clickstream_uptime_seconds",
        "gauge",
        "Seconds since the process started.",
        stats.started_at.elapsed().unwrap_or_default().as_secs_f64(),
    );
    let ingest_counters: [(&str, &str, &crate::stats::Counter); 10] = [
        ("clickstream_records_consumed_total", "Records read from Kafka, redeliveries included.", &stats.consumed),
        ("clickstream_consumed_bytes_total", "Payload bytes read from Kafka.", &stats.consumed_bytes),
        ("clickstream_events_stored_total", "Events inserted into PostgreSQL (what came out of the end of the chain).", &stats.stored),
        ("clickstream_records_dropped_total", "Records a transform dropped (counted in dropped_events, not stored).", &stats.dropped),
        (
            "clickstream_records_dead_lettered_total",
            "Records inserted into the dead-letter table (all stages and kinds).",
            &stats.dead_lettered,
        ),
        (
            "clickstream_records_redelivered_total",
            "Records skipped because PostgreSQL had stored their offset before (redeliveries).",
            &stats.redelivered,
        ),
        ("clickstream_events_duplicate_total", "Events skipped because their event id was already stored.", &stats.duplicates),
        ("clickstream_store_batches_total", "Batches written to PostgreSQL.", &stats.batches_written),
        ("clickstream_store_retries_total", "Failed PostgreSQL write attempts (each retried).", &stats.store_retries),
        (
            "clickstream_transform_batch_failures_total",
            "Transform calls that failed as a batch and were retried event by event.",
            &stats.transform_batch_failures,
        ),
    ];
    for (name, help, counter) in ingest_counters {
        out.single(name, "counter", help, counter.get());
    }
    out.header(
        "clickstream_dead_letters_total",
        "counter",
        "Dead letters by stage (decode, transform, store) and kind (not_json, missing_field, rejected, trap, contract, invalid_value, ...).",
    );
    for ((stage, kind), n) in stats.dead_letters_by() {
        out.sample("clickstream_dead_letters_total", &[("stage", stage), ("kind", &kind)], n);
    }

    out.header("clickstream_batch_records", "histogram", "Records per batch, by stage.");
    for stage in BatchStage::ALL {
        out.histogram("clickstream_batch_records", &[("stage", stage.as_str())], &stats.stage(stage).records.snapshot());
    }
    out.header("clickstream_batch_duration_seconds", "histogram", "Seconds per batch, by stage.");
    for stage in BatchStage::ALL {
        out.histogram("clickstream_batch_duration_seconds", &[("stage", stage.as_str())], &stats.stage(stage).seconds.snapshot());
    }

    let partitions = stats.partitions();
    type Value = fn(&PartitionOffsets) -> Option<i64>;
    let per_partition: [(&str, &str, Value); 3] = [
        ("clickstream_consumer_lag", "Records on the broker not yet stored, per partition this host consumes.", PartitionOffsets::lag),
        ("clickstream_partition_high_watermark", "The broker's next offset, per partition this host consumes.", |o| o.high_watermark),
        ("clickstream_partition_stored_offset", "The next offset this host has stored in PostgreSQL, per partition.", |o| o.stored_next),
    ];
    for (name, help, value) in per_partition {
        out.header(name, "gauge", help);
        for ((topic, partition), offsets) in &partitions {
            if let Some(v) = value(offsets) {
                out.sample(name, &[("topic", topic), ("partition", &partition.to_string())], v);
            }
        }
    }

    let plugins = pipeline.map(Pipeline::plugins).unwrap_or_default();
    render_plugins(&mut out, &plugins);
    out.header(
        "clickstream_reloads_total",
        "counter",
        "Reload attempts by what (a transform's name, aggregate, pipeline.toml) and outcome (accepted, rejected).",
    );
    let names = plugins.iter().map(|p| p.info.slot.as_str()).chain(["pipeline.toml"]);
    for what in names {
        for outcome in ["accepted", "rejected"] {
            out.sample("clickstream_reloads_total", &[("what", what), ("outcome", outcome)], stats.reloads_of(what, outcome));
        }
    }

    let output_counters: [(&str, &str, &crate::stats::Counter); 4] = [
        ("clickstream_aggregation_passes_total", "Aggregation passes run.", &stats.aggregation_passes),
        ("clickstream_windows_aggregated_total", "Windows aggregated (re-aggregations included).", &stats.windows_aggregated),
        ("clickstream_documents_indexed_total", "Aggregate documents the search server accepted.", &stats.documents_indexed),
        ("clickstream_documents_rejected_total", "Aggregate documents the search server refused.", &stats.documents_rejected),
    ];
    for (name, help, counter) in output_counters {
        out.single(name, "counter", help, counter.get());
    }
    out.single(
        "clickstream_windows_failing",
        "gauge",
        "Windows whose last aggregation failed, set aside and retried with backoff.",
        stats.windows_failing.get(),
    );
    out.header(
        "clickstream_window_failures_total",
        "counter",
        "Failed window aggregations by kind: trap, deadline, memory, contract, database, ...",
    );
    for (kind, n) in stats.window_failures_by() {
        out.sample("clickstream_window_failures_total", &[("kind", kind)], n);
    }
    out.header(
        "clickstream_event_to_index_seconds",
        "histogram",
        "From the newest event time of a window to its aggregate document being indexed, per document.",
    );
    out.histogram("clickstream_event_to_index_seconds", &[], &stats.event_to_index_seconds.snapshot());
    out.0
}

/// Each plugin's version, calls, errors and memory; each transform's
/// events in and what became of them.
fn render_plugins(out: &mut Exposition, plugins: &[PluginView]) {
    out.header("clickstream_plugin_info", "gauge", "The plugin version serving under each name (always 1).");
    for p in plugins {
        let info = &p.info;
        let hash = &info.content_hash[..12.min(info.content_hash.len())];
        let labels = [
            ("plugin", info.slot.as_str()),
            ("kind", p.kind),
            ("name", &info.name),
            ("version", &info.version),
            ("contract", &info.contract),
            ("sha256", hash),
        ];
        out.sample("clickstream_plugin_info", &labels, 1);
    }
    out.header("clickstream_plugin_calls_total", "counter", "Calls into the plugin (one per batch or aggregation step).");
    for p in plugins {
        out.sample("clickstream_plugin_calls_total", &[("plugin", &p.info.slot)], p.counters.calls.get());
    }
    out.header(
        "clickstream_plugin_errors_total",
        "counter",
        "Failed plugin calls by kind: trap, deadline (epoch interruption), memory (cap hit), contract, configure.",
    );
    for p in plugins {
        let errors = p.counters.errors();
        for kind in ["trap", "deadline", "memory", "contract", "configure"] {
            let n = errors.get(kind).copied().unwrap_or(0);
            out.sample("clickstream_plugin_errors_total", &[("plugin", &p.info.slot), ("kind", kind)], n);
        }
    }
    out.header("clickstream_plugin_memory_high_water_bytes", "gauge", "Largest linear memory any instance of the plugin reached.");
    for p in plugins {
        out.sample("clickstream_plugin_memory_high_water_bytes", &[("plugin", &p.info.slot)], p.counters.memory_high_water());
    }
    let transforms: Vec<&PluginView> = plugins.iter().filter(|p| p.kind == "transform").collect();
    type Count = fn(&PluginCounters) -> u64;
    let per_transform: [(&str, &str, Count); 3] = [
        ("clickstream_transform_events_in_total", "Events given to the transform.", |c| c.records_in.get()),
        ("clickstream_transform_events_kept_total", "Events the transform kept (passed on down the chain).", |c| c.kept.get()),
        ("clickstream_transform_events_rejected_total", "Events the transform rejected (dead-lettered, kind rejected).", |c| {
            c.rejected.get()
        }),
    ];
    for (name, help, count) in per_transform {
        out.header(name, "counter", help);
        for p in &transforms {
            out.sample(name, &[("transform", &p.info.slot)], count(&p.counters));
        }
    }
    out.header(
        "clickstream_transform_events_dropped_total",
        "counter",
        "Events the transform dropped, by the reason it gave (at most 32 reasons per transform; the rest count as `other`).",
    );
    for p in &transforms {
        for (reason, n) in p.counters.dropped_by() {
            out.sample("clickstream_transform_events_dropped_total", &[("transform", &p.info.slot), ("reason", &reason)], n);
        }
    }
    let shadows: Vec<_> = transforms.iter().filter_map(|p| p.shadow.as_ref().map(|s| (&p.info.slot, s.report()))).collect();
    out.header(
        "clickstream_shadow_events_compared_total",
        "counter",
        "Events a candidate in shadow ran on beside the serving version, per transform (this shadow run).",
    );
    for (slot, report) in &shadows {
        out.sample("clickstream_shadow_events_compared_total", &[("transform", slot)], report.events);
    }
    out.header(
        "clickstream_shadow_differences_total",
        "counter",
        "Events on which the candidate in shadow differed from the serving version, by field (`outcome` when kept/dropped/rejected differ).",
    );
    for (slot, report) in &shadows {
        for (field, n) in &report.by_field {
            out.sample("clickstream_shadow_differences_total", &[("transform", slot), ("field", field)], *n);
        }
    }
    out.header(
        "clickstream_canary_events_total",
        "counter",
        "Events of this canary's period by version (`candidate`, or the `serving` version beside it) and outcome (`kept`, `dropped`, `rejected`); in the watch, the promoted version's since its promotion.",
    );
    let canaries: Vec<_> = transforms.iter().filter_map(|p| p.canary.as_ref().map(|c| (&p.info.slot, c.report()))).collect();
    for (slot, report) in &canaries {
        for (version, rates) in [("candidate", &report.candidate), ("serving", &report.serving)] {
            for (outcome, n) in [("kept", rates.kept), ("dropped", rates.dropped), ("rejected", rates.rejected)] {
                out.sample("clickstream_canary_events_total", &[("transform", slot), ("version", version), ("outcome", outcome)], n);
            }
        }
    }
    out.header("clickstream_canary_failed_batches_total", "counter", "Batches of this canary's period a version failed on, by version.");
    for (slot, report) in &canaries {
        for (version, rates) in [("candidate", &report.candidate), ("serving", &report.serving)] {
            out.sample("clickstream_canary_failed_batches_total", &[("transform", slot), ("version", version)], rates.failed_batches);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_well_formed_and_escapes_labels() {
        let stats = Stats::default();
        stats.consumed.add(7);
        stats.dead_letters("decode", "not\"json\n", 2);
        stats.batch(BatchStage::Store, 100, std::time::Duration::from_millis(30));
        stats.high_watermark("t", 3, 50);
        stats.stored_next("t", 3, 20);
        let text = render(&stats, None);
        assert!(text.contains("clickstream_records_consumed_total 7\n"));
        assert!(text.contains("clickstream_dead_letters_total{stage=\"decode\",kind=\"not\\\"json\\n\"} 2\n"));
        assert!(text.contains("clickstream_batch_duration_seconds_bucket{stage=\"store\",le=\"0.05\"} 1\n"));
        assert!(text.contains("clickstream_batch_duration_seconds_count{stage=\"store\"} 1\n"));
        assert!(text.contains("clickstream_consumer_lag{topic=\"t\",partition=\"3\"} 30\n"));
        assert!(text.contains("clickstream_up 0\n"));
        // Every sample line is `name{labels} value` with a declared TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {family} ")) || text.contains(&format!("# TYPE {name} ")), "{line}");
            assert!(line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(), "{line}");
        }
    }
}
