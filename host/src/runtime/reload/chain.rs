//! A changed `[[transforms]]` list as a new chain. Prepared whole before
//! any of it applies (every build it changes proven), so a refused reload
//! leaves the old chain untouched; then applied at once, at a batch
//! boundary.

use std::sync::Arc;

use super::{prepare, ReloadError, Reloader};
use crate::config::PipelineConfig;
use crate::plugin::canary::{Canary, Phase};
use crate::plugin::golden::prove_reconfigured;
use crate::plugin::shadow::Shadow;
use crate::plugin::transform::LoadedTransform;
use crate::plugin::{PluginSpec, Slot};
use crate::section::Apply;
use crate::stages::transform::{describe_chain, Chain};
use crate::stats::ReloadOutcome;

/// The transforms a new pipeline.toml changes, proven, and the chain it
/// makes.
pub(super) struct ChainPlan {
    chain: Chain,
    steps: Vec<Step>,
    /// Whether the chain differs from the live one (order, members).
    changed: bool,
}

/// One transform's change, ready to apply.
enum Step {
    /// A transform the chain did not have.
    Added { slot: Arc<Slot<LoadedTransform>>, loaded: Arc<LoadedTransform> },
    /// A new path: a new build, which ends any rollout of the old one.
    NewBuild { slot: Arc<Slot<LoadedTransform>>, loaded: Arc<LoadedTransform> },
    /// The same builds with new settings or limits.
    Settings { slot: Arc<Slot<LoadedTransform>>, serving: Arc<LoadedTransform>, rollout: Option<RolloutBuilds> },
}

impl Step {
    fn slot(&self) -> &Arc<Slot<LoadedTransform>> {
        match self {
            Step::Added { slot, .. } | Step::NewBuild { slot, .. } | Step::Settings { slot, .. } => slot,
        }
    }
}

/// A rollout's builds with the new settings.
enum RolloutBuilds {
    Shadow { shadow: Arc<Shadow>, candidate: Arc<LoadedTransform> },
    Canary { canary: Arc<Canary>, candidate: Arc<LoadedTransform>, previous: Option<Arc<LoadedTransform>> },
}

impl Reloader {
    /// Proves every transform the chain of `next` changes, touching nothing:
    /// unchanged transforms keep their slot (and instances); a new path is a
    /// new build, loaded from the file; other changes (settings, limits)
    /// are the same build with new settings, applied to the serving build
    /// and to every build its rollout holds, never loaded from the file
    /// (which, during a rollout, is the candidate); new transforms get a
    /// slot of their own.
    pub(super) async fn prepare_chain(&self, next: &PipelineConfig) -> Result<ChainPlan, ReloadError> {
        let old_chain = self.chain.load_full();
        let mut plan = ChainPlan { chain: Vec::with_capacity(next.transforms.len()), steps: Vec::new(), changed: false };
        plan.changed = old_chain.len() != next.transforms.len();
        for (i, (config, spec)) in next.transforms.iter().zip(next.transform_specs()).enumerate() {
            let name = config.transform_name();
            let existing = old_chain.iter().find(|slot| slot.current().info.slot == name).cloned();
            let before = self.config.transforms.iter().find(|t| t.transform_name() == name);
            let step = match (existing, before) {
                (Some(slot), Some(before)) if before.change(config) == Apply::Unchanged => {
                    plan.changed |= !old_chain.get(i).is_some_and(|s| Arc::ptr_eq(s, &slot));
                    plan.chain.push(slot);
                    continue;
                }
                (Some(slot), Some(before)) if before.path == config.path => self.prepare_settings(name, &slot, spec).await?,
                (existing, _) => {
                    let loaded = self.prove(spec).await.inspect_err(|e| self.count(name, Err(e)))?;
                    match existing {
                        Some(slot) => Step::NewBuild { slot, loaded },
                        None => Step::Added { slot: Arc::new(Slot::new(loaded.clone())), loaded },
                    }
                }
            };
            plan.changed = true;
            plan.chain.push(step.slot().clone());
            plan.steps.push(step);
        }
        Ok(plan)
    }

    /// New settings for the builds of `slot`: the serving one and those its
    /// rollout holds, each proven on the golden batch.
    async fn prepare_settings(&self, name: &str, slot: &Arc<Slot<LoadedTransform>>, spec: PluginSpec) -> Result<Step, ReloadError> {
        let with_settings = |build: Arc<LoadedTransform>| {
            let spec = spec.clone();
            prepare(name, move || prove_reconfigured(&build, spec))
        };
        let result = async {
            let rollout = match (slot.shadow(), slot.canary()) {
                (Some(shadow), _) => Some(RolloutBuilds::Shadow { candidate: with_settings(shadow.candidate.current()).await?, shadow }),
                (None, Some(canary)) => {
                    let candidate = with_settings(canary.candidate.current()).await?;
                    let previous = match canary.previous() {
                        Some(previous) => Some(with_settings(previous).await?),
                        None => None,
                    };
                    Some(RolloutBuilds::Canary { canary, candidate, previous })
                }
                (None, None) => None,
            };
            // In a canary's watch the serving build is the promoted candidate.
            let serving = match &rollout {
                Some(RolloutBuilds::Canary { canary, candidate, .. }) if canary.report().phase == Phase::Watch => candidate.clone(),
                _ => with_settings(slot.current()).await?,
            };
            Ok::<_, ReloadError>(Step::Settings { slot: slot.clone(), serving, rollout })
        }
        .await;
        result.inspect_err(|e| self.count(name, Err(e)))
    }

    /// Makes the live chain the one `plan` describes, at a batch boundary.
    /// Nothing here can fail: every build was proven by [`Reloader::prepare_chain`].
    /// Each step is counted as accepted only now that it applies.
    pub(super) fn apply_chain(&self, plan: ChainPlan) {
        for step in plan.steps {
            let (Step::Added { loaded, .. } | Step::NewBuild { loaded, .. } | Step::Settings { serving: loaded, .. }) = &step;
            self.count(&loaded.info.slot, Ok(&loaded.info));
            match step {
                Step::Added { slot, loaded } => self.optimize_transform_later(&slot, &loaded),
                Step::NewBuild { slot, loaded } => {
                    let by = format!("{} {} from a new path in pipeline.toml", loaded.info.name, loaded.info.version);
                    self.record_replaced(&loaded.info.slot, slot.set_shadow(None), slot.set_canary(None), &by);
                    let old = slot.swap(loaded.clone());
                    self.optimize_transform_later(&slot, &loaded);
                    tracing::info!(transform = %loaded.info.slot, old = %old.info.version, new = %loaded.info.version, origin = %loaded.info.origin, "transform swapped");
                }
                Step::Settings { slot, serving, rollout } => {
                    let name = serving.info.slot.clone();
                    // A baseline build keeps its tier with new settings; the
                    // optimised build, when it comes, replaces this one.
                    self.optimize_transform_later(&slot, &serving);
                    let what = match rollout {
                        None => {
                            slot.swap(serving);
                            "the serving build"
                        }
                        Some(RolloutBuilds::Shadow { shadow, candidate }) => {
                            shadow.candidate.swap(candidate);
                            slot.swap(serving);
                            "the serving build and its candidate in shadow"
                        }
                        Some(RolloutBuilds::Canary { canary, candidate, previous }) => {
                            let watch = previous.is_some();
                            canary.reconfigure(&slot, serving, candidate, previous);
                            if watch {
                                "the promoted build in its watch and the build a rollback restores"
                            } else {
                                "the serving build and its candidate in canary"
                            }
                        }
                    };
                    tracing::info!(transform = %name, applied_to = what, "transform settings applied");
                    self.stats.reload_event(&name, ReloadOutcome::Settings, format!("new settings applied to {what}"));
                }
            }
        }
        if plan.changed {
            self.chain.store(Arc::new(plan.chain));
            tracing::info!(chain = %describe_chain(&self.chain.load()), "transform chain applied");
        }
    }
}
