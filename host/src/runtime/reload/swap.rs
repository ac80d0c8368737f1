//! A new build of one plugin: proven on the golden batch off the hot path,
//! then swapped into its slot. A build never compiled before serves from
//! the baseline compiler first, so a swap takes milliseconds, not the
//! seconds Cranelift takes; the optimised build replaces it in the
//! background, unless the slot has moved on meanwhile.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use super::{prepare, ReloadError, Reloader, Swap};
use crate::plugin::aggregate::LoadedAggregate;
use crate::plugin::canary::Phase;
use crate::plugin::golden::{prove_aggregate, prove_transform, ProofError};
use crate::plugin::transform::LoadedTransform;
use crate::plugin::{Origin, PluginInfo, PluginSpec, Slot, Tiering};
use crate::stats::ReloadOutcome;

impl Reloader {
    /// Loads a transform off the hot path and proves it on the golden batch.
    /// A component never compiled before comes from the baseline compiler;
    /// [`Reloader::optimize_later`] replaces it.
    pub(super) async fn prove(&self, spec: PluginSpec) -> Result<Arc<LoadedTransform>, ReloadError> {
        let (geoip, slot) = (self.geoip.clone(), spec.slot.clone());
        prepare(&slot, move || prove_transform(spec, Some(geoip), Tiering::BaselineFirst)).await
    }

    /// When `serving` (in `slot`) came from the baseline compiler: compiles
    /// the optimised build in the background, proves it on the golden batch
    /// and swaps it in, unless the slot has moved on to another version
    /// meanwhile. Recorded in the reload history as `optimized`, or
    /// `not_optimized` with the reason (the baseline build keeps serving).
    fn optimize_later<T: Send + Sync + 'static>(
        &self,
        slot: Arc<Slot<T>>,
        serving: Arc<T>,
        info: fn(&T) -> &PluginInfo,
        prove: impl FnOnce() -> Result<Arc<T>, ProofError> + Send + 'static,
    ) {
        if info(&serving).origin != Origin::Baseline {
            return;
        }
        let stats = self.stats.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let was = info(&serving).clone();
            let outcome = match prepare(&was.slot, prove).await {
                Ok(optimized) if info(&optimized).content_hash != was.content_hash => {
                    Err("the file changed since; the change is swapped on its own".to_string())
                }
                Ok(optimized) => {
                    slot.replace(&serving, optimized).then_some(()).ok_or_else(|| "another version was swapped in meanwhile".to_string())
                }
                Err(e) => Err(e.to_string()),
            };
            let took_ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(()) => {
                    tracing::info!(plugin = %was.slot, version = %was.version, sha256 = %was.content_hash, took_ms, "plugin optimized: the optimised build serves");
                    stats.reload_event(
                        &was.slot,
                        ReloadOutcome::Optimized,
                        format!("{} {} (sha256 {}) in {took_ms} ms", was.name, was.version, &was.content_hash[..12]),
                    );
                }
                Err(reason) => {
                    tracing::warn!(plugin = %was.slot, version = %was.version, reason = %reason, "optimised build not swapped in");
                    stats.reload_event(&was.slot, ReloadOutcome::NotOptimized, reason);
                }
            }
        });
    }

    pub(super) fn optimize_transform_later(&self, slot: &Arc<Slot<LoadedTransform>>, serving: &Arc<LoadedTransform>) {
        let (spec, geoip) = (serving.spec().clone(), self.geoip.clone());
        self.optimize_later(slot.clone(), serving.clone(), |t| &t.info, move || prove_transform(spec, Some(geoip), Tiering::Optimized));
    }

    /// Replaces the transform of `spec.slot` with the file and settings of
    /// `spec` if it passes every check; the chain is otherwise unchanged.
    pub async fn swap_transform(&self, spec: PluginSpec) -> Result<Swap, ReloadError> {
        let started = Instant::now();
        let name = spec.slot.clone();
        let Some(slot) = self.transform_slot(&name) else {
            return Err(ReloadError::NoSuchPlugin { name, known: self.known_plugins() });
        };
        if let Some(what) = in_rollout(&slot) {
            let refused = ReloadError::InRollout { name: name.clone(), what };
            self.count(&name, Err(&refused));
            return Err(refused);
        }
        let result = self.prove(spec).await;
        self.count(&name, result.as_ref().map(|l| &l.info));
        let loaded = result?;
        let old = slot.swap(loaded.clone());
        self.optimize_transform_later(&slot, &loaded);
        Ok(self.swapped(old.info.clone(), loaded.info.clone(), started))
    }

    /// Replaces the aggregate plugin likewise.
    pub async fn swap_aggregate(&self, spec: PluginSpec) -> Result<Swap, ReloadError> {
        let started = Instant::now();
        let loaded = self.prepare_aggregate(spec.clone()).await?;
        Ok(self.apply_aggregate(spec, loaded, started))
    }

    /// Loads and proves a new aggregate plugin, touching nothing (a refusal
    /// is counted).
    pub(super) async fn prepare_aggregate(&self, spec: PluginSpec) -> Result<Arc<LoadedAggregate>, ReloadError> {
        let slot = spec.slot.clone();
        prepare(&slot, move || prove_aggregate(spec, Tiering::BaselineFirst)).await.inspect_err(|e| self.count("aggregate", Err(e)))
    }

    /// Serves a proven aggregate plugin, counted as accepted.
    pub(super) fn apply_aggregate(&self, spec: PluginSpec, loaded: Arc<LoadedAggregate>, started: Instant) -> Swap {
        self.count("aggregate", Ok(&loaded.info));
        let old = self.aggregate.swap(loaded.clone());
        self.optimize_later(self.aggregate.clone(), loaded.clone(), |a| &a.info, move || prove_aggregate(spec, Tiering::Optimized));
        self.swapped(old.info.clone(), loaded.info.clone(), started)
    }

    fn swapped(&self, old: PluginInfo, new: PluginInfo, started: Instant) -> Swap {
        let took = started.elapsed();
        tracing::info!(
            plugin = %new.slot,
            old = %format!("{} {}", old.name, old.version),
            new = %format!("{} {}", new.name, new.version),
            sha256 = %new.content_hash,
            origin = %new.origin,
            took_ms = took.as_millis() as u64,
            "plugin swapped"
        );
        Swap { old, new, took }
    }

    /// Whether the file's content differs from what is serving: an editor
    /// touching a file, or a build rewriting the same bytes, is not a change.
    pub(super) fn differs(&self, path: &Path, serving: &PluginInfo) -> bool {
        match std::fs::read(path) {
            Ok(bytes) => compared_hash(&bytes) != serving.content_hash,
            // Mid-rename: the next event brings the new file.
            Err(_) => false,
        }
    }
}

/// What a plugin file is compared with the serving one by: an artifact's
/// source hash (a precompiled build of the same source is no change), else
/// the bytes' SHA-256.
pub(super) fn compared_hash(bytes: &[u8]) -> String {
    crate::plugin::artifact::named_source(bytes).unwrap_or_else(|| crate::plugin::content_hash(bytes))
}

/// What rollout the transform of `slot` is in, if any, as an error names it.
fn in_rollout(slot: &Slot<LoadedTransform>) -> Option<&'static str> {
    if slot.shadow().is_some() {
        return Some("a candidate in shadow");
    }
    match slot.canary()?.report().phase {
        Phase::Trial => Some("a candidate in canary"),
        Phase::Watch => Some("a promoted canary in its watch"),
        Phase::Done => None,
    }
}
