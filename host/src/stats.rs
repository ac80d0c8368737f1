//! Counters, gauges and histograms every stage updates; the API renders them
//! for Prometheus (`/metrics`) and as JSON for the dashboard.
//!
//! Everything is lock-free on the per-record path (atomics); maps keyed by
//! label take a mutex once per batch at most.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution over fixed buckets, as Prometheus histograms are: counts
/// per upper bound (`le`), plus the sum and count of observations.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus the `+Inf` bucket; not cumulative.
    buckets: Vec<AtomicU64>,
    /// Sum of observations, as f64 bits (updated by compare-and-swap).
    sum: AtomicU64,
    count: AtomicU64,
}

/// Bucket bounds for durations in seconds: 1 ms to 5 minutes.
pub const SECONDS_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Bucket bounds for batch sizes in records.
pub const RECORDS_BUCKETS: &[f64] = &[1.0, 8.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0];

/// Bucket bounds for event-to-index latency in seconds: a second to a day
/// (event times can be far in the past when a backlog is replayed).
pub const LATENCY_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0];

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, the last bound being `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl HistogramSnapshot {
    /// The bucket bound below which `q` (0..1) of the observations fall: an
    /// upper estimate, as precise as the buckets. `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le)
    }
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let i = self.bounds.iter().position(|b| value <= *b).unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self.sum.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| Some((f64::from_bits(bits) + value).to_bits()));
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, took: Duration) {
        self.observe(took.as_secs_f64());
    }

    /// A consistent-enough copy (counts may move while it is taken; each
    /// bucket is read once).
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            buckets.push((self.bounds.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        HistogramSnapshot { buckets, sum: f64::from_bits(self.sum.load(Ordering::Relaxed)), count: cumulative }
    }
}

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

/// Size and duration of each stage's batches.
#[derive(Debug)]
pub struct StageHistograms {
    /// Records per batch.
    pub records: Histogram,
    /// Seconds per batch.
    pub seconds: Histogram,
}

impl Default for StageHistograms {
    fn default() -> Self {
        StageHistograms { records: Histogram::new(RECORDS_BUCKETS), seconds: Histogram::new(SECONDS_BUCKETS) }
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

/// One reload attempt, for the dashboard's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadRecord {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// A plugin slot (`enrich`, `aggregate`) or `pipeline.toml`.
    pub what: String,
    /// `accepted` or `rejected`; for a plugin also `optimized` (its
    /// optimised build replaced the baseline one) or `not_optimized`.
    pub outcome: &'static str,
    /// The version now serving, or why it was rejected.
    pub detail: String,
}

/// How many reload attempts the history keeps.
const RELOAD_HISTORY: usize = 50;

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
    /// Failed window aggregations by kind (`trap`, `contract`, `database`, ...).
    window_failures_by: Mutex<BTreeMap<&'static str, u64>>,
    /// Batch sizes and durations per stage.
    stages: [StageHistograms; 5],
    /// From the newest event of a window to its aggregates being indexed.
    pub event_to_index_seconds: Histogram,
    /// Dead letters by (stage, kind).
    dead_letters_by: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Offsets per (topic, partition) this host consumes.
    partitions: Mutex<BTreeMap<(String, i32), PartitionOffsets>>,
    /// Reloads by (what, outcome): what is a plugin slot or `pipeline.toml`,
    /// outcome `accepted` or `rejected`.
    reloads: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// The latest reload attempts, oldest first.
    reload_history: Mutex<VecDeque<ReloadRecord>>,
    /// When the process started.
    pub started_at: SystemTime,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
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
            window_failures_by: Mutex::default(),
            stages: Default::default(),
            event_to_index_seconds: Histogram::new(LATENCY_BUCKETS),
            dead_letters_by: Mutex::default(),
            partitions: Mutex::default(),
            reloads: Mutex::default(),
            reload_history: Mutex::default(),
            started_at: SystemTime::now(),
        }
    }
}

/// A poisoned lock only means another thread panicked mid-update of a
/// metric; the numbers are still worth reporting.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stats {
    /// The histograms of `stage`.
    pub fn stage(&self, stage: BatchStage) -> &StageHistograms {
        &self.stages[stage as usize]
    }

    /// Records one batch of `records` that took `took` in `stage`.
    pub fn batch(&self, stage: BatchStage, records: usize, took: Duration) {
        let h = self.stage(stage);
        h.records.observe(records as f64);
        h.seconds.observe_duration(took);
    }

    /// Counts dead letters of one (stage, kind).
    pub fn dead_letters(&self, stage: &'static str, kind: &str, n: u64) {
        *lock(&self.dead_letters_by).entry((stage, kind.to_string())).or_default() += n;
    }

    /// Counts a failed window aggregation of `kind`.
    pub fn window_failures(&self, kind: &'static str) {
        *lock(&self.window_failures_by).entry(kind).or_default() += 1;
    }

    /// Failed window aggregations by kind so far.
    pub fn window_failures_by(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.window_failures_by).clone()
    }

    /// Dead letters by (stage, kind) so far.
    pub fn dead_letters_by(&self) -> BTreeMap<(&'static str, String), u64> {
        lock(&self.dead_letters_by).clone()
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
        self.reload_event(what, if accepted { "accepted" } else { "rejected" }, detail);
    }

    /// Records what happened to a plugin slot after a reload: `optimized`
    /// (the optimised build replaced the baseline one), or why it did not.
    /// A URL in `detail` (an error quoting `store.database_url`, say) is
    /// recorded without its secrets: the history is served by the API.
    pub fn reload_event(&self, what: &str, outcome: &'static str, detail: String) {
        let detail = match crate::redact::in_text(&detail) {
            std::borrow::Cow::Borrowed(_) => detail,
            std::borrow::Cow::Owned(redacted) => redacted,
        };
        *lock(&self.reloads).entry((what.to_string(), outcome)).or_default() += 1;
        let mut history = lock(&self.reload_history);
        if history.len() == RELOAD_HISTORY {
            history.pop_front();
        }
        history.push_back(ReloadRecord { at_ms: chrono::Utc::now().timestamp_millis(), what: what.to_string(), outcome, detail });
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
    pub fn reloads_of(&self, what: &str, outcome: &str) -> u64 {
        lock(&self.reloads).iter().filter(|((w, o), _)| w == what && *o == outcome).map(|(_, n)| *n).sum()
    }

    /// Reloads by (what, outcome).
    pub fn reloads(&self) -> BTreeMap<(String, &'static str), u64> {
        lock(&self.reloads).clone()
    }

    /// The latest reload attempts, oldest first.
    pub fn reload_history(&self) -> Vec<ReloadRecord> {
        lock(&self.reload_history).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 1.0, 5.0, 50.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 2), (10.0, 3), (f64::INFINITY, 4)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 56.5).abs() < 1e-9);
        assert_eq!(s.quantile(0.5), Some(1.0));
        assert_eq!(s.quantile(0.75), Some(10.0));
        assert_eq!(s.quantile(0.99), Some(f64::INFINITY));
        assert_eq!(Histogram::new(&[1.0]).snapshot().quantile(0.5), None);
    }

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
        let stats = Stats::default();
        for i in 0..(RELOAD_HISTORY + 5) {
            stats.plugin_reloads("enrich", i % 2 == 0, format!("v{i}"));
        }
        let history = stats.reload_history();
        assert_eq!(history.len(), RELOAD_HISTORY);
        assert_eq!(history.last().unwrap().detail, format!("v{}", RELOAD_HISTORY + 4));
        assert_eq!(stats.reloads_of("enrich", "accepted") + stats.reloads_of("enrich", "rejected"), (RELOAD_HISTORY + 5) as u64);
    }
}
