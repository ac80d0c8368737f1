//! `/metrics`: the pipeline's metrics in the Prometheus text format (0.0.4),
//! encoded by `prometheus-client`. The process-wide metrics live in
//! [`Stats::registry`]; what belongs to the running pipeline (its plugins,
//! the partitions it consumes) is read at each scrape by [`Live`]. Every
//! family is documented in docs/metrics.md and listed in
//! `tests/metrics/families.txt`, which a test compares with a scrape.

use std::fmt;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::Registry;

use crate::plugin::geoip::DatabaseInfo;
use crate::plugin::PluginCounters;
use crate::runtime::pipeline::{Pipeline, PluginView};
use crate::stats::{BatchStage, PartitionOffsets, Stats};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The whole exposition: process-wide metrics from `stats`, and the live
/// plugins' when a pipeline is running.
pub fn render(stats: &Stats, pipeline: Option<&Pipeline>) -> Result<String, fmt::Error> {
    let geoip = pipeline.map(|p| p.geoip.databases()).unwrap_or_default();
    exposition(stats, pipeline.is_some(), pipeline.map(Pipeline::plugins).unwrap_or_default(), geoip)
}

fn exposition(stats: &Stats, up: bool, plugins: Vec<PluginView>, geoip: Vec<DatabaseInfo>) -> Result<String, fmt::Error> {
    for plugin in &plugins {
        stats.expose_reloads_of(&plugin.info.slot);
    }
    stats.expose_reloads_of("pipeline.toml");
    let mut live = Registry::default();
    live.register_collector(Box::new(Live {
        up,
        started_at: stats.started_at,
        partitions: stats.partitions().into_iter().collect(),
        plugins,
        geoip,
    }));
    let mut out = String::with_capacity(16 * 1024);
    encode(&mut out, &live)?;
    encode(&mut out, stats.registry())?;
    Ok(out)
}

/// The `q` quantiles (0..1) of a stage's seconds per batch, each the bucket
/// bound below which that share of batches fell, as Prometheus's
/// `histogram_quantile` bounds it; `None` before the first batch. Read from
/// the histogram `/metrics` exposes, so the two never disagree.
pub fn batch_seconds_quantiles(stats: &Stats, stage: BatchStage, qs: &[f64]) -> Vec<Option<f64>> {
    let mut text = String::new();
    let buckets = encode(&mut text, &stats.batch_seconds()).ok().and_then(|()| {
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
        scrape.samples.into_iter().find_map(|s| match s.value {
            prometheus_parse::Value::Histogram(buckets) if s.labels.get("stage") == Some(stage.as_str()) => Some(buckets),
            _ => None,
        })
    });
    let buckets = buckets.unwrap_or_default();
    qs.iter().map(|q| quantile(&buckets, *q)).collect()
}

/// The first bucket bound whose cumulative count reaches rank `q`.
fn quantile(buckets: &[prometheus_parse::HistogramCount], q: f64) -> Option<f64> {
    let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    if total == 0.0 {
        return None;
    }
    let rank = (q * total).ceil().max(1.0);
    buckets.iter().find(|b| b.count >= rank).map(|b| b.less_than)
}

/// What is read from the running pipeline at each scrape.
struct Live {
    up: bool,
    started_at: SystemTime,
    partitions: Vec<((String, i32), PartitionOffsets)>,
    plugins: Vec<PluginView>,
    geoip: Vec<DatabaseInfo>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Live").field("up", &self.up).field("plugins", &self.plugins.len()).finish_non_exhaustive()
    }
}

/// One family of values read at scrape time: `name` without the `_total` a
/// counter gets from the encoder.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, value) in samples {
        value.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A sample without labels.
const NO_LABELS: [(&str, &str); 0] = [];

fn counter(n: u64) -> ConstCounter<u64> {
    ConstCounter::new(n)
}

fn gauge<N>(n: N) -> ConstGauge<N> {
    ConstGauge::new(n)
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        family(
            e,
            "clickstream_up",
            "1 while the pipeline runs, 0 while it is starting or restarting.",
            [(NO_LABELS, gauge(i64::from(self.up)))],
        )?;
        let uptime = self.started_at.elapsed().unwrap_or_default().as_secs_f64();
        family(e, "clickstream_uptime_seconds", "Seconds since the process started.", [(NO_LABELS, gauge(uptime))])?;
        self.encode_partitions(e)?;
        self.encode_plugins(e)?;
        self.encode_transforms(e)?;
        self.encode_rollouts(e)?;
        let built = self.geoip.iter().map(|db| ([("database", db.name.as_str())], gauge(db.build_epoch)));
        family(
            e,
            "clickstream_geoip_build_timestamp_seconds",
            "When each GeoIP database serving now was built (its metadata's build_epoch), Unix seconds; it moves when a new file is swapped in.",
            built,
        )?;
        let panics = self.geoip.iter().map(|db| ([("database", db.name.as_str())], counter(db.lookup_panics)));
        family(
            e,
            "clickstream_geoip_lookup_panics",
            "Lookups the GeoIP reader panicked on (a damaged record), answered as no location, per database.",
            panics,
        )
    }
}

impl Live {
    fn encode_partitions(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        type Value = fn(&PartitionOffsets) -> Option<i64>;
        let per_partition: [(&str, &str, Value); 3] = [
            ("clickstream_consumer_lag", "Records on the broker not yet stored, per partition this host consumes.", PartitionOffsets::lag),
            ("clickstream_partition_high_watermark", "The broker's next offset, per partition this host consumes.", |o| o.high_watermark),
            ("clickstream_partition_stored_offset", "The next offset this host has stored in PostgreSQL, per partition.", |o| {
                o.stored_next
            }),
        ];
        for (name, help, value) in per_partition {
            let samples = self.partitions.iter().filter_map(|((topic, partition), offsets)| {
                Some(([("topic", topic.clone()), ("partition", partition.to_string())], gauge(value(offsets)?)))
            });
            family(e, name, help, samples)?;
        }
        Ok(())
    }

    /// Each plugin's version, calls, errors and memory.
    fn encode_plugins(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let info = self.plugins.iter().map(|p| {
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
            (labels, gauge(1i64))
        });
        family(e, "clickstream_plugin_info", "The plugin version serving under each name (always 1).", info)?;
        let calls = self.plugins.iter().map(|p| ([("plugin", p.info.slot.as_str())], counter(p.counters.calls.get())));
        family(e, "clickstream_plugin_calls", "Calls into the plugin (one per batch or aggregation step).", calls)?;
        let errors = self.plugins.iter().flat_map(|p| {
            let errors = p.counters.errors();
            ["trap", "deadline", "memory", "contract", "configure"]
                .map(|kind| ([("plugin", p.info.slot.as_str()), ("kind", kind)], counter(errors.get(kind).copied().unwrap_or(0))))
        });
        family(
            e,
            "clickstream_plugin_errors",
            "Failed plugin calls by kind: trap, deadline (epoch interruption), memory (cap hit), contract, configure.",
            errors,
        )?;
        let memory = self.plugins.iter().map(|p| ([("plugin", p.info.slot.as_str())], gauge(p.counters.memory_high_water())));
        family(e, "clickstream_plugin_memory_high_water_bytes", "Largest linear memory any instance of the plugin reached.", memory)
    }

    fn transforms(&self) -> impl Iterator<Item = &PluginView> {
        self.plugins.iter().filter(|p| p.kind == "transform")
    }

    /// Each transform's events in, and what became of them.
    fn encode_transforms(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        type Count = fn(&PluginCounters) -> u64;
        let per_transform: [(&str, &str, Count); 3] = [
            ("clickstream_transform_events_in", "Events given to the transform.", |c| c.records_in.get()),
            ("clickstream_transform_events_kept", "Events the transform kept (passed on down the chain).", |c| c.kept.get()),
            ("clickstream_transform_events_rejected", "Events the transform rejected (dead-lettered, kind rejected).", |c| {
                c.rejected.get()
            }),
        ];
        for (name, help, count) in per_transform {
            family(e, name, help, self.transforms().map(|p| ([("transform", p.info.slot.as_str())], counter(count(&p.counters)))))?;
        }
        let dropped = self.transforms().flat_map(|p| {
            let slot = p.info.slot.clone();
            p.counters.dropped_by().into_iter().map(move |(reason, n)| ([("transform", slot.clone()), ("reason", reason)], counter(n)))
        });
        family(
            e,
            "clickstream_transform_events_dropped",
            "Events the transform dropped, by the reason it gave (at most 32 reasons per transform; the rest count as `other`).",
            dropped,
        )
    }

    /// Candidates in shadow or canary beside the serving version.
    fn encode_rollouts(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let shadows: Vec<_> = self.transforms().filter_map(|p| p.shadow.as_ref().map(|s| (p.info.slot.as_str(), s.report()))).collect();
        family(
            e,
            "clickstream_shadow_events_compared",
            "Events a candidate in shadow ran on beside the serving version, per transform (this shadow run).",
            shadows.iter().map(|(slot, report)| ([("transform", *slot)], counter(report.events))),
        )?;
        let differences = shadows.iter().flat_map(|(slot, report)| {
            report.by_field.iter().map(move |(field, n)| ([("transform", *slot), ("field", field.as_str())], counter(*n)))
        });
        family(
            e,
            "clickstream_shadow_differences",
            "Events on which the candidate in shadow differed from the serving version, by field (`outcome` when kept/dropped/rejected differ).",
            differences,
        )?;
        family(
            e,
            "clickstream_shadow_batches_skipped",
            "Batches selected for a candidate in shadow but skipped because it was still busy with earlier ones (it runs on its own thread and never holds up a batch), per transform.",
            shadows.iter().map(|(slot, report)| ([("transform", *slot)], counter(report.skipped))),
        )?;
        let canaries: Vec<_> = self.transforms().filter_map(|p| p.canary.as_ref().map(|c| (p.info.slot.as_str(), c.report()))).collect();
        let versions = |report: &crate::plugin::canary::CanaryReport| [("candidate", report.candidate), ("serving", report.serving)];
        let events = canaries.iter().flat_map(|(slot, report)| {
            versions(report).into_iter().flat_map(move |(version, rates)| {
                [("kept", rates.kept), ("dropped", rates.dropped), ("rejected", rates.rejected)]
                    .map(|(outcome, n)| ([("transform", *slot), ("version", version), ("outcome", outcome)], counter(n)))
            })
        });
        family(
            e,
            "clickstream_canary_events",
            "Events of this canary's period by version (`candidate`, or the `serving` version beside it) and outcome (`kept`, `dropped`, `rejected`); in the watch, the promoted version's since its promotion.",
            events,
        )?;
        let failed = canaries.iter().flat_map(|(slot, report)| {
            versions(report).map(|(version, rates)| ([("transform", *slot), ("version", version)], counter(rates.failed_batches)))
        });
        family(e, "clickstream_canary_failed_batches", "Batches of this canary's period a version failed on, by version.", failed)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::plugin::{Origin, PluginInfo};

    fn transform(slot: &str) -> PluginView {
        let info = PluginInfo {
            slot: slot.to_string(),
            name: "enrich".to_string(),
            version: "1.2.3".to_string(),
            contract: "0.2.0".to_string(),
            path: "plugins/enrich.wasm".into(),
            content_hash: "ab".repeat(32),
            origin: Origin::Compiled,
            loaded_at: SystemTime::now(),
        };
        PluginView { kind: "transform", info, counters: Arc::new(PluginCounters::default()), shadow: None, canary: None }
    }

    fn geoip(name: &str) -> DatabaseInfo {
        DatabaseInfo {
            name: name.to_string(),
            path: name.into(),
            database_type: "test".to_string(),
            ip_version: 6,
            build_epoch: 1_700_000_000,
            loaded_at: SystemTime::now(),
            last_refusal: None,
            lookup_panics: 0,
        }
    }

    fn parse(text: &str) -> prometheus_parse::Scrape {
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("a Prometheus text exposition")
    }

    fn value(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
        scrape.samples.iter().find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))).and_then(|s| match s
            .value
        {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
    }

    #[test]
    fn a_scrape_parses_as_prometheus_text_with_every_value_in_place() {
        let stats = Stats::default();
        stats.consumed.inc_by(7);
        stats.dead_letters("decode", "not_json", 2);
        stats.batch(BatchStage::Store, 100, Duration::from_millis(30));
        stats.high_watermark("t", 3, 50);
        stats.stored_next("t", 3, 20);
        let enrich = transform("enrich");
        enrich.counters.records_in.inc_by(5);
        enrich.counters.dropped("bot");
        let text = exposition(&stats, false, vec![enrich], vec![]).unwrap();
        let scrape = parse(&text);

        assert_eq!(value(&scrape, "clickstream_records_consumed_total", &[]), Some(7.0));
        assert_eq!(value(&scrape, "clickstream_dead_letters_total", &[("stage", "decode"), ("kind", "not_json")]), Some(2.0));
        assert_eq!(value(&scrape, "clickstream_consumer_lag", &[("topic", "t"), ("partition", "3")]), Some(30.0));
        assert_eq!(value(&scrape, "clickstream_up", &[]), Some(0.0));
        assert_eq!(value(&scrape, "clickstream_transform_events_in_total", &[("transform", "enrich")]), Some(5.0));
        assert_eq!(value(&scrape, "clickstream_transform_events_dropped_total", &[("transform", "enrich"), ("reason", "bot")]), Some(1.0));
        assert_eq!(value(&scrape, "clickstream_reloads_total", &[("what", "enrich"), ("outcome", "rejected")]), Some(0.0));
        let store = scrape
            .samples
            .iter()
            .find(|s| s.metric == "clickstream_batch_duration_seconds" && s.labels.get("stage") == Some("store"))
            .expect("the store stage's histogram");
        let prometheus_parse::Value::Histogram(buckets) = &store.value else { panic!("{:?}", store.value) };
        let at = |le: f64| buckets.iter().find(|b| b.less_than == le).map(|b| b.count);
        assert_eq!((at(0.025), at(0.05), at(f64::INFINITY)), (Some(0.0), Some(1.0), Some(1.0)));
    }

    #[test]
    fn label_values_a_plugin_chooses_are_escaped() {
        let stats = Stats::default();
        let enrich = transform("enrich");
        enrich.counters.dropped("say \"hi\"\nback\\slash");
        let text = exposition(&stats, true, vec![enrich], vec![]).unwrap();
        assert!(text.contains(r#"reason="say \"hi\"\nback\\slash"} 1"#), "{text}");
        // One line per sample: the newline in the value did not break it.
        assert_eq!(text.lines().filter(|l| l.starts_with("clickstream_transform_events_dropped_total")).count(), 1);
    }

    /// Metric names are an interface (dashboards and alerts use them):
    /// tests/metrics/families.txt lists them as they were before the move to
    /// prometheus-client, and docs/metrics.md documents the same list.
    #[test]
    fn every_family_keeps_its_documented_name_and_type() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let listed: BTreeSet<String> =
            std::fs::read_to_string(root.join("tests/metrics/families.txt")).unwrap().lines().map(str::to_string).collect();
        // A labelled family shows once it has a member, as in any scrape
        // after the first dead letter, failed window or offset gap.
        let stats = Stats::default();
        stats.dead_letters("decode", "not_json", 1);
        stats.window_failures("trap");
        stats.offset_gap("clicks", 0, 1);
        let text = exposition(&stats, true, vec![transform("enrich")], vec![geoip("city.mmdb")]).unwrap();
        let exposed: BTreeSet<String> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(str::to_string).collect();
        assert_eq!(exposed, listed);
        let page = std::fs::read_to_string(root.join("docs/metrics.md")).unwrap();
        let documented: BTreeSet<String> = page
            .lines()
            .filter_map(|l| {
                let mut cells = l.strip_prefix("| `clickstream_")?.split('|');
                let name = cells.next()?.trim().trim_end_matches('`');
                Some(format!("clickstream_{name} {}", cells.next()?.trim()))
            })
            .filter(|row| row.ends_with(" counter") || row.ends_with(" gauge") || row.ends_with(" histogram"))
            .collect();
        assert_eq!(documented, listed);
    }

    #[test]
    fn quantiles_are_read_from_the_exposed_histogram() {
        let stats = Stats::default();
        assert_eq!(batch_seconds_quantiles(&stats, BatchStage::Store, &[0.5]), vec![None]);
        for ms in [1, 1, 4, 20_000] {
            stats.batch(BatchStage::Store, 10, Duration::from_millis(ms));
        }
        stats.batch(BatchStage::Index, 10, Duration::from_secs(100));
        assert_eq!(batch_seconds_quantiles(&stats, BatchStage::Store, &[0.5, 0.75, 0.99]), vec![Some(0.001), Some(0.005), Some(30.0)]);
    }
}
