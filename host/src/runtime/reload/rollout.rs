//! A candidate beside the serving version: started in shadow or in canary,
//! promoted or aborted through the API. Each step goes in the reload
//! history, and a candidate a newer one replaces is recorded as ended, so
//! that a transform's history says how every rollout ended.

use std::sync::Arc;

use super::{prepare, ReloadAction, ReloadError, Reloader};
use crate::plugin::canary::{Canary, Phase};
use crate::plugin::config::{PluginConfig, Rollout};
use crate::plugin::golden::prove_transform;
use crate::plugin::shadow::Shadow;
use crate::plugin::transform::LoadedTransform;
use crate::plugin::{PluginInfo, PluginSpec, Tiering};
use crate::stats::ReloadOutcome;

impl Reloader {
    /// Puts a build of a transform beside the serving version as a
    /// candidate (after the golden batch), as `config.rollout` says: in
    /// shadow or in canary, replacing any candidate there was; a `swap`
    /// rollout swaps it.
    pub async fn start_rollout(&self, config: &PluginConfig, rollout: Rollout) -> Result<PluginInfo, ReloadError> {
        let spec = config.spec(config.transform_name());
        let name = spec.slot.clone();
        let Some(slot) = self.transform_slot(&name) else {
            return Err(ReloadError::NoSuchPlugin { name, known: self.known_plugins() });
        };
        if rollout != Rollout::Swap && !self.differs(&config.path, &slot.current().info) {
            return Err(ReloadError::NotNew { name, path: config.path.clone() });
        }
        match rollout {
            Rollout::Swap => return self.swap_transform(spec).await.map(|swap| swap.new),
            Rollout::Shadow => return self.shadow_transform(spec, config.shadow_fraction).await,
            Rollout::Canary => {}
        }
        let candidate = self.prove_candidate(&name, spec).await?;
        let policy = config.canary_policy();
        let info = candidate.info.clone();
        let replaced_shadow = slot.set_shadow(None);
        let replaced_canary = slot.set_canary(Some(Arc::new(Canary::new(candidate, policy))));
        self.record_replaced(&name, replaced_shadow, replaced_canary, &format!("{} {} in canary", info.name, info.version));
        let detail = format!(
            "{} {} (sha256 {}) serves {:.0}% of batches; judged after {} batches, tolerance {:.1} points, then watched {} batches",
            info.name,
            info.version,
            &info.content_hash[..12],
            policy.fraction * 100.0,
            policy.batches,
            policy.tolerance * 100.0,
            policy.watch_batches
        );
        tracing::info!(plugin = %name, candidate = %info.version, fraction = policy.fraction, "candidate in canary");
        self.stats.reload_event(&name, ReloadOutcome::Canary, detail);
        Ok(info)
    }

    /// Loads a candidate (optimised: it may serve for long) and proves it on
    /// the golden batch; a refusal is counted and logged.
    async fn prove_candidate(&self, name: &str, spec: PluginSpec) -> Result<Arc<LoadedTransform>, ReloadError> {
        let geoip = self.geoip.clone();
        let result = prepare(name, move || prove_transform(spec, Some(geoip), Tiering::Optimized)).await;
        result.inspect_err(|e| self.count(name, Err(e)))
    }

    /// Puts a build of a transform in shadow beside the serving version
    /// (after the golden batch), replacing any candidate there was.
    async fn shadow_transform(&self, spec: PluginSpec, fraction: f64) -> Result<PluginInfo, ReloadError> {
        let name = spec.slot.clone();
        let Some(slot) = self.transform_slot(&name) else {
            return Err(ReloadError::NoSuchPlugin { name, known: self.known_plugins() });
        };
        let candidate = self.prove_candidate(&name, spec).await?;
        let info = candidate.info.clone();
        let replaced_canary = slot.set_canary(None);
        let replaced_shadow = slot.set_shadow(Some(Arc::new(Shadow::new(candidate, fraction))));
        self.record_replaced(&name, replaced_shadow, replaced_canary, &format!("{} {} in shadow", info.name, info.version));
        let detail = format!(
            "{} {} (sha256 {}) in shadow on {:.0}% of batches",
            info.name,
            info.version,
            &info.content_hash[..12],
            fraction * 100.0
        );
        tracing::info!(plugin = %name, candidate = %info.version, fraction, "candidate in shadow; nothing it outputs is stored");
        self.stats.reload_event(&name, ReloadOutcome::Shadowing, detail);
        Ok(info)
    }

    /// Records candidates a newer one (`by`) took the place of, so that a
    /// transform's history says how each rollout ended: `aborted` for a
    /// shadow or a canary on trial, `watch_ended` for a promoted canary
    /// whose watch stops (the promoted version keeps serving).
    pub(super) fn record_replaced(&self, name: &str, shadow: Option<Arc<Shadow>>, canary: Option<Arc<Canary>>, by: &str) {
        if let Some(shadow) = shadow {
            let info = shadow.info();
            self.stats.reload_event(name, ReloadOutcome::Aborted, format!("{} {} in shadow: replaced by {by}", info.name, info.version));
        }
        let Some(canary) = canary else { return };
        let (outcome, was) = match canary.report().phase {
            Phase::Trial => (ReloadOutcome::Aborted, "in canary"),
            Phase::Watch => (ReloadOutcome::WatchEnded, "promoted, in its watch"),
            Phase::Done => return,
        };
        let info = canary.info();
        self.stats.reload_event(name, outcome, format!("{} {} {was}: replaced by {by}", info.name, info.version));
    }

    /// Promotes or aborts the candidate of transform `name` (in canary or
    /// in shadow), recording the decision with the figures it was made on.
    pub(super) fn decide(&self, name: &str, action: ReloadAction) -> Result<PluginInfo, String> {
        let slot = self
            .transform_slot(name)
            .ok_or_else(|| ReloadError::NoSuchPlugin { name: name.into(), known: self.known_plugins() }.to_string())?;
        if let Some(canary) = slot.canary() {
            return canary.decide(&slot, action == ReloadAction::Promote, &self.stats);
        }
        let shadow = slot.set_shadow(None).ok_or_else(|| format!("transform `{name}` has no candidate in shadow or in canary"))?;
        let report = shadow.report();
        let candidate = shadow.candidate.current();
        let figures = format!(
            "{} {} after {} batches, {} events compared, {} differing {:?}, {} failed batches",
            candidate.info.name,
            candidate.info.version,
            report.batches,
            report.events,
            report.differing_events,
            report.by_field,
            report.errors
        );
        if action == ReloadAction::Promote {
            let old = slot.swap(candidate.clone());
            tracing::info!(plugin = %name, old = %old.info.version, new = %candidate.info.version, "shadow candidate promoted");
            self.stats.reload_event(name, ReloadOutcome::Promoted, figures);
            Ok(candidate.info.clone())
        } else {
            tracing::info!(plugin = %name, candidate = %candidate.info.version, "shadow candidate aborted");
            self.stats.reload_event(name, ReloadOutcome::Aborted, figures);
            Ok(slot.current().info.clone())
        }
    }
}
