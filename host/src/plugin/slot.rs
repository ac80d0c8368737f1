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
    /// Events a transform was given.
    pub records_in: Counter,
    /// Events it kept.
    pub kept: Counter,
    /// Events it rejected (dead-lettered).
    pub rejected: Counter,
    /// Events it dropped, by reason (at most [`MAX_DROP_REASONS`] reasons;
    /// the rest count as `other`).
    dropped_by: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// Distinct drop reasons kept per transform: a plugin choosing its reasons
/// freely must not grow the host's memory or the metrics' label set.
pub const MAX_DROP_REASONS: usize = 32;

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

    /// Counts an event dropped for `reason`.
    pub fn dropped(&self, reason: &str) {
        let mut by = self.dropped_by.lock().unwrap_or_else(|e| e.into_inner());
        let key = if by.contains_key(reason) || by.len() < MAX_DROP_REASONS { reason } else { "other" };
        *by.entry(key.to_string()).or_default() += 1;
    }

    /// Events dropped, by reason.
    pub fn dropped_by(&self) -> std::collections::BTreeMap<String, u64> {
        self.dropped_by.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The live version of a plugin, swapped atomically by hot reload. Readers
/// take a cheap snapshot per batch, so a batch runs on one version throughout.
pub struct Slot<T> {
    live: ArcSwap<T>,
    counters: Arc<PluginCounters>,
    /// A transform's candidate in shadow, if one is.
    shadow: arc_swap::ArcSwapOption<super::shadow::Shadow>,
    /// A transform's candidate in canary (or in its watch), if one is.
    canary: arc_swap::ArcSwapOption<super::canary::Canary>,
}

impl<T> Slot<T> {
    /// A slot holding `initial`.
    pub fn new(initial: Arc<T>) -> Slot<T> {
        Slot {
            live: ArcSwap::new(initial),
            counters: Arc::default(),
            shadow: arc_swap::ArcSwapOption::empty(),
            canary: arc_swap::ArcSwapOption::empty(),
        }
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

    /// Puts `next` in service only if `expected` is still serving (a
    /// background replacement must not undo a newer swap). Whether it did.
    pub fn replace(&self, expected: &Arc<T>, next: Arc<T>) -> bool {
        let previous = self.live.compare_and_swap(expected, next);
        Arc::ptr_eq(&previous, expected)
    }

    /// The candidate in shadow, if one is.
    pub fn shadow(&self) -> Option<Arc<super::shadow::Shadow>> {
        self.shadow.load_full()
    }

    /// Puts a candidate in shadow (or none), returning the one it replaced.
    pub fn set_shadow(&self, shadow: Option<Arc<super::shadow::Shadow>>) -> Option<Arc<super::shadow::Shadow>> {
        self.shadow.swap(shadow)
    }

    /// The candidate in canary, if one is.
    pub fn canary(&self) -> Option<Arc<super::canary::Canary>> {
        self.canary.load_full()
    }

    /// Puts a candidate in canary (or none), returning the one it replaced.
    pub fn set_canary(&self, canary: Option<Arc<super::canary::Canary>>) -> Option<Arc<super::canary::Canary>> {
        self.canary.swap(canary)
    }

    /// Removes `canary`, unless another has replaced it meanwhile.
    pub fn clear_canary(&self, canary: &Arc<super::canary::Canary>) {
        self.canary.compare_and_swap(&Some(canary.clone()), None);
    }

    /// Calls, errors and memory of this slot's plugin.
    pub fn counters(&self) -> &Arc<PluginCounters> {
        &self.counters
    }
}
