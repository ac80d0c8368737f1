//! Counters, gauges and histograms every stage updates, as `prometheus-client`
//! metrics registered once in [`Stats::registry`]; the API renders them for
//! Prometheus (`/metrics`, see `runtime::api::metrics`) and reads the same
//! values for the dashboard's JSON.
//!
//! Counters and gauges are atomics; a labelled family takes a read lock per
//! update, which the stages do once per batch at most. The reload history
//! and its counts are in `stats/reloads.rs`.

mod reloads;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use prometheus_client::metrics::counter::Counter;
pub use reloads::{ReloadOutcome, ReloadRecord};

use reloads::Reloads;

/// A value that goes up and down.
pub type Gauge = prometheus_client::metrics::gauge::Gauge<i64, AtomicI64>;

/// Bucket bounds for durations in seconds: 1 ms to 5 minutes.
pub const SECONDS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Bucket bounds for batch sizes in records.
pub const RECORDS_BUCKETS: &[f64] = &[1.0, 8.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

/// Bucket bounds for event-to-index latency in seconds: a second to a day
/// (event times can be far in the past when a backlog is replayed).
pub const LATENCY_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0];

/// The stages whose batches are timed and sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BatchStage {
    /// Kafka → a batch: from its first record to handing it downstream.
    Source,
    /// Decoding and the chain of transforms.
    Transform,
    /// The PostgreSQL transaction, retries included.
    Store,
    /// One aggregation run over consecutive windows (records = events read).
    Aggregate,
    /// One bulk request to the search server (records = documents).
    Index,
}

impl BatchStage {
    /// Every stage, in data-flow order.
    pub const ALL: [BatchStage; 5] =
        [BatchStage::Source, BatchStage::Transform, BatchStage::Store, BatchStage::Aggregate, BatchStage::Index];

    /// The `stage` label.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchStage::Source => "source",
            BatchStage::Transform => "transform",
            BatchStage::Store => "store",
            BatchStage::Aggregate => "aggregate",
            BatchStage::Index => "index",
        }
    }
}

/// What the pipeline knows about one partition's backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The broker's high watermark (next offset to be written), from the
    /// client's statistics; `None` until reported.
    pub high_watermark: Option<i64>,
    /// The next offset this host has stored in PostgreSQL.
    pub stored_next: Option<i64>,
}

impl PartitionOffsets {
    /// Records on the broker not yet stored; `None` while either side is unknown.
    pub fn lag(&self) -> Option<i64> {
        Some((self.high_watermark? - self.stored_next?).max(0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StageLabel {
    stage: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeadLetterLabels {
    stage: &'static str,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS.iter().copied())
}

fn records_histogram() -> Histogram {
    Histogram::new(RECORDS_BUCKETS.iter().copied())
}

/// The pipeline's metrics since the process started. One instance lives as
/// long as the process, across pipeline restarts, so counters never reset
/// while Prometheus scrapes them.
#[derive(Debug)]
pub struct Stats {
    /// Records read from Kafka (redeliveries included).
    pub consumed: Counter,
    /// Payload bytes read from Kafka.
    pub consumed_bytes: Counter,
    /// Events inserted into PostgreSQL.
    pub stored: Counter,
    /// Records inserted into the dead-letter table.
    pub dead_lettered: Counter,
    /// Records a transform dropped (counted in `dropped_events`).
    pub dropped: Counter,
    /// Records skipped because PostgreSQL had stored them before.
    pub redelivered: Counter,
    /// Events skipped because their event id was already stored.
    pub duplicates: Counter,
    /// Batches written.
    pub batches_written: Counter,
    /// Failed store attempts (each retried).
    pub store_retries: Counter,
    /// Transform calls that failed as a batch and were retried event by event.
    pub transform_batch_failures: Counter,
    /// Aggregation passes run.
    pub aggregation_passes: Counter,
    /// Windows aggregated.
    pub windows_aggregated: Counter,
    /// Aggregate documents the search server accepted.
    pub documents_indexed: Counter,
    /// Aggregate documents the search server refused.
    pub documents_rejected: Counter,
    /// Windows set aside after a failed aggregation, now.
    pub windows_failing: Gauge,
    /// From the newest event of a window to its aggregates being indexed.
    pub event_to_index_seconds: Histogram,
    window_failures: Family<KindLabel, Counter>,
    batch_records: HistogramFamily<StageLabel>,
    batch_seconds: HistogramFamily<StageLabel>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    offset_gap_records: Family<PartitionLabels, Counter>,
    /// Assigned partitions paused until PostgreSQL answers for their
    /// offsets, now.
    pub partitions_awaiting_offsets: Gauge,
    /// Offsets per (topic, partition) this host consumes; read at each scrape.
    partitions: Mutex<BTreeMap<(String, i32), PartitionOffsets>>,
    /// Reload attempts: their counts and the latest of them.
    reloads: Reloads,
    /// Every metric above, registered under its documented name.
    registry: Registry,
    /// When the process started.
    pub started_at: SystemTime,
}

impl Default for Stats {
    fn default() -> Self {
        let window_failures = Family::default();
        let batch_records: HistogramFamily<StageLabel> = Family::new_with_constructor(records_histogram);
        let batch_seconds: HistogramFamily<StageLabel> = Family::new_with_constructor(seconds_histogram);
        for stage in BatchStage::ALL {
            // Every stage is exposed from the start, with zero observations.
            let label = StageLabel { stage: stage.as_str() };
            drop(batch_records.get_or_create(&label));
            drop(batch_seconds.get_or_create(&label));
        }
        let mut stats = Stats {
            consumed: Counter::default(),
            consumed_bytes: Counter::default(),
            stored: Counter::default(),
            dead_lettered: Counter::default(),
            dropped: Counter::default(),
            redelivered: Counter::default(),
            duplicates: Counter::default(),
            batches_written: Counter::default(),
            store_retries: Counter::default(),
            transform_batch_failures: Counter::default(),
            aggregation_passes: Counter::default(),
            windows_aggregated: Counter::default(),
            documents_indexed: Counter::default(),
            documents_rejected: Counter::default(),
            windows_failing: Gauge::default(),
            event_to_index_seconds: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            window_failures,
            batch_records,
            batch_seconds,
            dead_letters: Family::default(),
            offset_gap_records: Family::default(),
            partitions_awaiting_offsets: Gauge::default(),
            partitions: Mutex::default(),
            reloads: Reloads::default(),
            registry: Registry::default(),
            started_at: SystemTime::now(),
        };
        stats.registry = stats.register();
        stats
    }
}

impl Stats {
    /// Registers every metric under its documented name (docs/metrics.md).
    /// Counters get their `_total` suffix from the encoder.
    fn register(&self) -> Registry {
        let mut r = Registry::default();
        let counters: [(&str, &str, &Counter); 14] = [
            ("clickstream_records_consumed", "Records read from Kafka, redeliveries included.", &self.consumed),
            ("clickstream_consumed_bytes", "Payload bytes read from Kafka.", &self.consumed_bytes),
            ("clickstream_events_stored", "Events inserted into PostgreSQL (what came out of the end of the chain).", &self.stored),
            ("clickstream_records_dropped", "Records a transform dropped (counted in dropped_events, not stored).", &self.dropped),
            (
                "clickstream_records_dead_lettered",
                "Records inserted into the dead-letter table (all stages and kinds).",
                &self.dead_lettered,
            ),
            (
                "clickstream_records_redelivered",
                "Records skipped because PostgreSQL had stored their offset before (redeliveries).",
                &self.redelivered,
            ),
            ("clickstream_events_duplicate", "Events skipped because their event id was already stored.", &self.duplicates),
            ("clickstream_store_batches", "Batches written to PostgreSQL.", &self.batches_written),
            ("clickstream_store_retries", "Failed PostgreSQL write attempts (each retried).", &self.store_retries),
            (
                "clickstream_transform_batch_failures",
                "Transform calls that failed as a batch and were retried event by event.",
                &self.transform_batch_failures,
            ),
            ("clickstream_aggregation_passes", "Aggregation passes run.", &self.aggregation_passes),
            ("clickstream_windows_aggregated", "Windows aggregated (re-aggregations included).", &self.windows_aggregated),
            ("clickstream_documents_indexed", "Aggregate documents the search server accepted.", &self.documents_indexed),
            ("clickstream_documents_rejected", "Aggregate documents the search server refused.", &self.documents_rejected),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register(
            "clickstream_dead_letters",
            "Dead letters by stage (decode, transform, store) and kind (not_json, missing_field, rejected, trap, contract, invalid_value, ...).",
            self.dead_letters.clone(),
        );
        r.register("clickstream_batch_records", "Records per batch, by stage.", self.batch_records.clone());
        r.register("clickstream_batch_duration_seconds", "Seconds per batch, by stage.", self.batch_seconds.clone());
        r.register(
            "clickstream_reloads",
            "Reload attempts by what (a transform's name, aggregate, pipeline.toml, geoip:<file>) and outcome (accepted, rejected; for a plugin also optimized, not_optimized and its rollout's steps).",
            self.reloads.counts.clone(),
        );
        r.register(
            "clickstream_windows_failing",
            "Windows whose last aggregation failed, set aside and retried with backoff.",
            self.windows_failing.clone(),
        );
        r.register(
            "clickstream_window_failures",
            "Failed window aggregations by kind: trap, deadline, memory, contract, database, ...",
            self.window_failures.clone(),
        );
        r.register(
            "clickstream_offset_gap_records",
            "Records between PostgreSQL's stored offset and the next one written that were never stored (each gap is also logged as an error), by topic and partition.",
            self.offset_gap_records.clone(),
        );
        r.register(
            "clickstream_partitions_awaiting_offsets",
            "Assigned partitions paused because PostgreSQL could not say where they start; resumed at its offset once it answers.",
            self.partitions_awaiting_offsets.clone(),
        );
        r.register(
            "clickstream_event_to_index_seconds",
            "From the newest event time of a window to its aggregate document being indexed, per document.",
            self.event_to_index_seconds.clone(),
        );
        r
    }

    /// Every process-wide metric; the API adds the live pipeline's at each
    /// scrape.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The seconds-per-batch histograms alone, for readers of their buckets
    /// (the API's quantiles): prometheus-client shows a histogram's buckets
    /// only by encoding it.
    pub fn batch_seconds(&self) -> Registry {
        let mut r = Registry::default();
        r.register("clickstream_batch_duration_seconds", "Seconds per batch, by stage.", self.batch_seconds.clone());
        r
    }

    /// Records one batch of `records` that took `took` in `stage`.
    pub fn batch(&self, stage: BatchStage, records: usize, took: Duration) {
        let label = StageLabel { stage: stage.as_str() };
        self.batch_records.get_or_create(&label).observe(records as f64);
        self.batch_seconds.get_or_create(&label).observe(took.as_secs_f64());
    }

    /// Counts dead letters of one (stage, kind).
    pub fn dead_letters(&self, stage: &'static str, kind: &str, n: u64) {
        self.dead_letters.get_or_create(&DeadLetterLabels { stage, kind: kind.to_string() }).inc_by(n);
    }

    /// Dead letters of one (stage, kind) so far.
    pub fn dead_letters_of(&self, stage: &'static str, kind: &str) -> u64 {
        self.dead_letters.get(&DeadLetterLabels { stage, kind: kind.to_string() }).map_or(0, |c| c.get())
    }

    /// Counts a failed window aggregation of `kind`.
    pub fn window_failures(&self, kind: &'static str) {
        self.window_failures.get_or_create(&KindLabel { kind }).inc();
    }

    /// Failed window aggregations of `kind` so far.
    pub fn window_failures_of(&self, kind: &'static str) -> u64 {
        self.window_failures.get(&KindLabel { kind }).map_or(0, |c| c.get())
    }

    /// Records the broker's high watermark of a partition.
    pub fn high_watermark(&self, topic: &str, partition: i32, high: i64) {
        lock(&self.partitions).entry((topic.to_string(), partition)).or_default().high_watermark = Some(high);
    }

    /// Records what this host has stored of a partition.
    pub fn stored_next(&self, topic: &str, partition: i32, next: i64) {
        let mut partitions = lock(&self.partitions);
        let entry = partitions.entry((topic.to_string(), partition)).or_default();
        entry.stored_next = Some(entry.stored_next.map_or(next, |n| n.max(next)));
    }

    /// Counts `records` of a partition skipped by an offset gap.
    pub fn offset_gap(&self, topic: &str, partition: i32, records: u64) {
        self.offset_gap_records.get_or_create(&PartitionLabels { topic: topic.to_string(), partition }).inc_by(records);
    }

    /// Records of a partition skipped by offset gaps so far.
    pub fn offset_gap_records_of(&self, topic: &str, partition: i32) -> u64 {
        self.offset_gap_records.get(&PartitionLabels { topic: topic.to_string(), partition }).map_or(0, |c| c.get())
    }

    /// Forgets partitions this host no longer consumes, so their lag is not
    /// reported twice in a group.
    pub fn partitions_revoked(&self, revoked: &[(String, i32)]) {
        let mut partitions = lock(&self.partitions);
        for key in revoked {
            partitions.remove(key);
        }
    }

    /// Offsets per partition this host consumes.
    pub fn partitions(&self) -> BTreeMap<(String, i32), PartitionOffsets> {
        lock(&self.partitions).clone()
    }

    fn reload(&self, what: &str, accepted: bool, detail: String) {
        self.reload_event(what, if accepted { ReloadOutcome::Accepted } else { ReloadOutcome::Rejected }, detail);
    }

    /// Records what came of a reload of `what`, or of a step of its rollout.
    /// A URL in `detail` (an error quoting `store.database_url`, say) is
    /// recorded without its secrets: the history is served by the API.
    pub fn reload_event(&self, what: &str, outcome: ReloadOutcome, detail: String) {
        let detail = match crate::redact::in_text(&detail) {
            std::borrow::Cow::Borrowed(_) => detail,
            std::borrow::Cow::Owned(redacted) => redacted,
        };
        self.reloads.record(what, outcome, detail);
    }

    /// Counts a plugin reload; `detail` is the new version or the reason it
    /// was refused.
    pub fn plugin_reloads(&self, slot: &str, accepted: bool, detail: String) {
        self.reload(slot, accepted, detail);
    }

    /// Counts a pipeline.toml reload.
    pub fn config_reloads(&self, accepted: bool, detail: String) {
        self.reload("pipeline.toml", accepted, detail);
    }

    /// Reloads of `what` with `outcome` so far.
    pub fn reloads_of(&self, what: &str, outcome: ReloadOutcome) -> u64 {
        self.reloads.count_of(what, outcome.as_str())
    }

    /// Makes `what`'s accepted and rejected reload counts visible before its
    /// first reload, so a scrape shows them at 0 rather than absent.
    pub fn expose_reloads_of(&self, what: &str) {
        for outcome in [ReloadOutcome::Accepted, ReloadOutcome::Rejected] {
            self.reloads.expose(what, outcome);
        }
    }

    /// The latest reload attempts, oldest first.
    pub fn reload_history(&self) -> Vec<ReloadRecord> {
        self.reloads.history()
    }
}

/// A poisoned lock only means another thread panicked mid-update of a
/// metric; the numbers are still worth reporting.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_needs_both_offsets_and_never_goes_negative() {
        let stats = Stats::default();
        stats.high_watermark("t", 0, 100);
        assert_eq!(stats.partitions()[&("t".to_string(), 0)].lag(), None);
        stats.stored_next("t", 0, 40);
        stats.stored_next("t", 0, 30);
        assert_eq!(stats.partitions()[&("t".to_string(), 0)].lag(), Some(60));
        stats.stored_next("t", 0, 120);
        assert_eq!(stats.partitions()[&("t".to_string(), 0)].lag(), Some(0));
        stats.partitions_revoked(&[("t".to_string(), 0)]);
        assert!(stats.partitions().is_empty());
    }

    #[test]
    fn reload_history_keeps_the_latest_attempts() {
        use super::reloads::RELOAD_HISTORY;
        let stats = Stats::default();
        for i in 0..(RELOAD_HISTORY + 5) {
            stats.plugin_reloads("enrich", i % 2 == 0, format!("v{i}"));
        }
        let history = stats.reload_history();
        assert_eq!(history.len(), RELOAD_HISTORY);
        assert_eq!(history.last().unwrap().detail, format!("v{}", RELOAD_HISTORY + 4));
        let (accepted, rejected) =
            (stats.reloads_of("enrich", ReloadOutcome::Accepted), stats.reloads_of("enrich", ReloadOutcome::Rejected));
        assert_eq!(accepted + rejected, (RELOAD_HISTORY + 5) as u64);
    }

    #[test]
    fn labelled_counts_read_back_what_was_counted() {
        let stats = Stats::default();
        stats.dead_letters("store", "constraint", 2);
        stats.dead_letters("store", "constraint", 1);
        stats.window_failures("trap");
        assert_eq!(stats.dead_letters_of("store", "constraint"), 3);
        assert_eq!(stats.dead_letters_of("decode", "constraint"), 0);
        assert_eq!((stats.window_failures_of("trap"), stats.window_failures_of("contract")), (1, 0));
    }
}
