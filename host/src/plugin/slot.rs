//! The live version of each plugin, and what its slot has done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::PluginError;
use crate::stats::Counter;

/// What a plugin slot has done since start, across every version it held.
#[derive(Debug, Default)]
pub struct PluginCounters {
    /// Calls into the plugin (one per batch, or per aggregation step).
    pub calls: Counter,
    /// Failed calls by [`PluginError::kind`].
    errors: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Largest linear memory any instance reached, in bytes.
    memory_high_water: AtomicU64,
}

impl PluginCounters {
    /// Counts a failed call.
    pub fn failed(&self, error: &PluginError) {
        *self.errors.lock().unwrap_or_else(|e| e.into_inner()).entry(error.kind()).or_default() += 1;
    }

    /// Failed calls by kind (`trap`, `deadline`, `memory`, `contract`, ...).
    pub fn errors(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes an instance's memory size.
    pub fn memory(&self, bytes: usize) {
        self.memory_high_water.fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// Largest linear memory any instance reached, in bytes.
    pub fn memory_high_water(&self) -> u64 {
        self.memory_high_water.load(Ordering::Relaxed)
    }
}

/// The live version of a plugin, swapped atomically by hot reload. Readers
/// take a cheap snapshot per batch, so a batch runs on one version throughout.
pub struct Slot<T> {
    live: ArcSwap<T>,
    counters: Arc<PluginCounters>,
}

impl<T> Slot<T> {
    /// A slot holding `initial`.
    pub fn new(initial: Arc<T>) -> Slot<T> {
        Slot { live: ArcSwap::new(initial), counters: Arc::default() }
    }

    /// The version serving now.
    pub fn current(&self) -> Arc<T> {
        self.live.load_full()
    }

    /// Puts `next` in service and returns the version it replaced. Batches
    /// that already took a snapshot finish on the old one.
    pub fn swap(&self, next: Arc<T>) -> Arc<T> {
        self.live.swap(next)
    }

    /// Calls, errors and memory of this slot's plugin.
    pub fn counters(&self) -> &Arc<PluginCounters> {
        &self.counters
    }
}
