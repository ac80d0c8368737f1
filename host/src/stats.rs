//! Counters every stage updates; the API renders them for Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};

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
}
