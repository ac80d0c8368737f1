//! Counters every stage updates; the API renders them for Prometheus.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// The pipeline's counters since start.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records read from Kafka (redeliveries included).
    pub consumed: Counter,
    /// Events inserted into PostgreSQL.
    pub stored: Counter,
    /// Records inserted into the dead-letter table.
    pub dead_lettered: Counter,
    /// Records skipped because PostgreSQL had stored them before.
    pub redelivered: Counter,
    /// Events skipped because their event id was already stored.
    pub duplicates: Counter,
    /// Batches written.
    pub batches_written: Counter,
    /// Failed store attempts (each retried).
    pub store_retries: Counter,
    /// Enrich calls that failed and were retried record by record.
    pub enrich_batch_failures: Counter,
    /// Aggregation passes run.
    pub aggregation_passes: Counter,
    /// Windows aggregated.
    pub windows_aggregated: Counter,
    /// Aggregate documents the search server accepted.
    pub documents_indexed: Counter,
    /// Aggregate documents the search server refused.
    pub documents_rejected: Counter,
    /// Reloads by (what, outcome): what is a plugin slot or `pipeline.toml`,
    /// outcome `accepted` or `rejected`.
    pub reloads: Mutex<BTreeMap<(String, &'static str), u64>>,
}

impl Stats {
    fn reload(&self, what: &str, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "rejected" };
        *self.reloads.lock().unwrap_or_else(|e| e.into_inner()).entry((what.to_string(), outcome)).or_default() += 1;
    }

    /// Counts a plugin reload.
    pub fn plugin_reloads(&self, slot: &str, accepted: bool) {
        self.reload(slot, accepted);
    }

    /// Counts a pipeline.toml reload.
    pub fn config_reloads(&self, accepted: bool) {
        self.reload("pipeline.toml", accepted);
    }

    /// Reloads of `what` with `outcome` so far.
    pub fn reloads_of(&self, what: &str, outcome: &str) -> u64 {
        self.reloads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((w, o), _)| w == what && *o == outcome)
            .map(|(_, n)| *n)
            .sum()
    }
}
