//! Hot reload: plugin files and `pipeline.toml`, while the pipeline runs.
//!
//! A changed plugin file is compiled off the hot path, checked against its
//! world, instantiated, configured and run on a golden batch; only then is it
//! swapped into its slot, atomically. Batches already running finish on the
//! old version; the next batch takes the new one. A file that fails any step
//! is rejected with a log line and a counter, and the old version keeps
//! serving. A changed `pipeline.toml` is parsed and validated completely and
//! applied by what changed: plugin tables swap plugins, batch sizes and
//! intervals apply live, connection settings drain and restart the pipeline,
//! and metric-defining settings are refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{Apply, PipelineConfig};
use crate::plugin::aggregate::LoadedAggregate;
use crate::plugin::canary::{Canary, Phase};
use crate::plugin::config::{PluginConfig, Rollout};
use crate::plugin::geoip::GeoIp;
use crate::plugin::golden::{prove_aggregate, prove_reconfigured, prove_transform, ProofError};
use crate::plugin::shadow::Shadow;
use crate::plugin::transform::LoadedTransform;
use crate::plugin::{Origin, PluginInfo, PluginSpec, Slot, Tiering};
use crate::stages::aggregate::config::AggregateConfig;
use crate::stages::decode::DecodeLimits;
use crate::stages::source::Batching;
use crate::stages::transform::Chain;
use crate::stats::Stats;

/// Quiet time after the last file event before acting on a file written in
/// place (editors truncate and write in several steps). A file renamed into
/// place is complete and acted on at once. A file read half-written fails
/// its load (logged, the old version serving) and the write's next event
/// loads it whole.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// Why a reload was refused. The running pipeline is untouched.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum ReloadError {
    /// The new plugin failed to load or to pass the golden batch.
    #[error(transparent)]
    Plugin(#[from] ProofError),
    /// The new pipeline.toml is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The new pipeline.toml changes what existing aggregates mean.
    #[error("{file}: refused: {keys} changed; existing aggregates were computed with the old values and would be corrupted. Keep the old values, or point store.database_url at a new database (and index.index at a new index) to start fresh")]
    MetricsChanged { file: PathBuf, keys: String },
    /// A shadow or canary was asked for with no new build at the path.
    #[error("transform `{name}`: {} holds the build serving now; write the new build there first", path.display())]
    NotNew { name: String, path: PathBuf },
    /// A reload named a plugin the pipeline does not run.
    #[error("no plugin named `{name}`; the plugins are {known}")]
    NoSuchPlugin { name: String, known: String },
    /// A new build was to be swapped in while another is on trial: it would
    /// serve every batch untested, and the rollout's verdict would then
    /// swap its own build back.
    #[error("transform `{name}` has {what}; a new build is not swapped in meanwhile: promote or abort it first (POST /api/plugins/{name}/promote or /abort)")]
    InRollout {
        name: String,
        /// `a candidate in shadow`, `a candidate in canary`, `a promoted canary in its watch`.
        what: &'static str,
    },
    /// Preparing the new version (compiling, instantiating, the golden
    /// batch) panicked, or was cancelled by the runtime shutting down.
    #[error("plugin `{slot}`: preparing the new version {failure}; refused, the serving version is unchanged")]
    Prepare {
        slot: String,
        /// `panicked: <message>`, or `was cancelled`.
        failure: String,
    },
}

/// Runs a plugin's preparation (compile, instantiate, golden batch) on the
/// blocking pool. A panic in it — a host or wasmtime bug a hostile
/// component found — refuses this reload like any other failure instead of
/// taking the reloader down: the reloader keeps serving later changes.
async fn prepare<T: Send + 'static>(slot: &str, work: impl FnOnce() -> Result<T, ProofError> + Send + 'static) -> Result<T, ReloadError> {
    #[cfg(test)]
    let work = {
        let (panics, slot) = (tests::take_armed_panic(slot), slot.to_string());
        move || {
            assert!(!panics, "test hook: preparing `{slot}` panics");
            work()
        }
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ReloadError::from),
        Err(e) => {
            let failure = match e.try_into_panic() {
                Ok(payload) => crate::runtime::supervise::panicked(payload.as_ref()),
                Err(_) => "was cancelled (the host is shutting down)".to_string(),
            };
            Err(ReloadError::Prepare { slot: slot.to_string(), failure })
        }
    }
}

/// Settings the running stages read live.
#[derive(Clone)]
pub struct LiveSettings {
    /// Source batching.
    pub batching: watch::Sender<Batching>,
    /// Decode limits: record size and event-time range.
    pub decode: watch::Sender<DecodeLimits>,
    /// Aggregation interval, lateness and batch size.
    pub aggregate: watch::Sender<AggregateConfig>,
}

/// A swap that happened.
#[derive(Debug, Clone)]
pub struct Swap {
    /// The version that was serving.
    pub old: PluginInfo,
    /// The version serving now.
    pub new: PluginInfo,
    /// From noticing the change to serving the new version.
    pub took: Duration,
}

/// What the API asks of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadAction {
    /// Load and prove the file now, even when its content is unchanged, and swap.
    Reload,
    /// Put the file in shadow beside the serving version.
    Shadow,
    /// Put the file in canary beside the serving version.
    Canary,
    /// Serve the candidate in shadow or canary now (a canary is still watched).
    Promote,
    /// Drop the candidate in shadow or canary (a promoted canary in its
    /// watch: go back to the previous version).
    Abort,
}

/// A request from the API about one plugin.
pub struct ReloadRequest {
    /// The plugin: a transform's name, or `aggregate`.
    pub slot: String,
    /// What to do.
    pub action: ReloadAction,
    /// Gets the version now serving, or why the reload was refused.
    pub reply: tokio::sync::oneshot::Sender<Result<PluginInfo, String>>,
}

/// Watches the plugin files and pipeline.toml and applies changes.
pub struct Reloader {
    config: PipelineConfig,
    chain: Arc<ArcSwap<Chain>>,
    aggregate: Arc<Slot<LoadedAggregate>>,
    geoip: Arc<GeoIp>,
    live: LiveSettings,
    stats: Arc<Stats>,
    /// Set when a change needs the pipeline to drain and start again.
    restart: watch::Sender<Option<PipelineConfig>>,
}

impl Reloader {
    /// A reloader for a pipeline started with `config`.
    pub fn new(
        config: PipelineConfig,
        chain: Arc<ArcSwap<Chain>>,
        aggregate: Arc<Slot<LoadedAggregate>>,
        geoip: Arc<GeoIp>,
        live: LiveSettings,
        stats: Arc<Stats>,
        restart: watch::Sender<Option<PipelineConfig>>,
    ) -> Reloader {
        Reloader { config, chain, aggregate, geoip, live, stats, restart }
    }

    /// The slot of the transform named `name` in the live chain.
    fn transform_slot(&self, name: &str) -> Option<Arc<Slot<LoadedTransform>>> {
        self.chain.load().iter().find(|slot| slot.current().info.slot == name).cloned()
    }

    /// Loads a transform off the hot path and proves it on the golden batch.
    /// A component never compiled before comes from the baseline compiler;
    /// [`Reloader::optimize_later`] replaces it.
    async fn prove(&self, spec: PluginSpec) -> Result<Arc<LoadedTransform>, ReloadError> {
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
                        "optimized",
                        format!("{} {} (sha256 {}) in {took_ms} ms", was.name, was.version, &was.content_hash[..12]),
                    );
                }
                Err(reason) => {
                    tracing::warn!(plugin = %was.slot, version = %was.version, reason = %reason, "optimised build not swapped in");
                    stats.reload_event(&was.slot, "not_optimized", reason);
                }
            }
        });
    }

    fn optimize_transform_later(&self, slot: &Arc<Slot<LoadedTransform>>, serving: &Arc<LoadedTransform>) {
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

    /// Proves every transform the chain of `next` changes, touching nothing:
    /// unchanged transforms keep their slot (and instances); a new path is a
    /// new build, loaded from the file; other changes (settings, limits)
    /// are the same build with new settings, applied to the serving build
    /// and to every build its rollout holds, never loaded from the file
    /// (which, during a rollout, is the candidate); new transforms get a
    /// slot of their own.
    async fn prepare_chain(&self, next: &PipelineConfig) -> Result<ChainPlan, ReloadError> {
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
    fn apply_chain(&self, plan: ChainPlan) {
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
                    self.stats.reload_event(&name, "settings", format!("new settings applied to {what}"));
                }
            }
        }
        if plan.changed {
            self.chain.store(Arc::new(plan.chain));
            tracing::info!(chain = %crate::runtime::pipeline::describe_chain(&self.chain.load()), "transform chain applied");
        }
    }

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
        self.stats.reload_event(&name, "canary", detail);
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
        self.stats.reload_event(&name, "shadowing", detail);
        Ok(info)
    }

    /// Records candidates a newer one (`by`) took the place of, so that a
    /// transform's history says how each rollout ended: `aborted` for a
    /// shadow or a canary on trial, `watch_ended` for a promoted canary
    /// whose watch stops (the promoted version keeps serving).
    fn record_replaced(&self, name: &str, shadow: Option<Arc<Shadow>>, canary: Option<Arc<Canary>>, by: &str) {
        if let Some(shadow) = shadow {
            let info = shadow.info();
            self.stats.reload_event(name, "aborted", format!("{} {} in shadow: replaced by {by}", info.name, info.version));
        }
        let Some(canary) = canary else { return };
        let (outcome, was) = match canary.report().phase {
            Phase::Trial => ("aborted", "in canary"),
            Phase::Watch => ("watch_ended", "promoted, in its watch"),
            Phase::Done => return,
        };
        let info = canary.info();
        self.stats.reload_event(name, outcome, format!("{} {} {was}: replaced by {by}", info.name, info.version));
    }

    /// Promotes or aborts the candidate of transform `name` (in canary or
    /// in shadow), recording the decision with the figures it was made on.
    fn decide(&self, name: &str, action: ReloadAction) -> Result<PluginInfo, String> {
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
            self.stats.reload_event(name, "promoted", figures);
            Ok(candidate.info.clone())
        } else {
            tracing::info!(plugin = %name, candidate = %candidate.info.version, "shadow candidate aborted");
            self.stats.reload_event(name, "aborted", figures);
            Ok(slot.current().info.clone())
        }
    }

    /// Replaces the aggregate plugin likewise.
    pub async fn swap_aggregate(&self, spec: PluginSpec) -> Result<Swap, ReloadError> {
        let started = Instant::now();
        let loaded = self.prepare_aggregate(spec.clone()).await?;
        Ok(self.apply_aggregate(spec, loaded, started))
    }

    /// Loads and proves a new aggregate plugin, touching nothing (a refusal
    /// is counted).
    async fn prepare_aggregate(&self, spec: PluginSpec) -> Result<Arc<LoadedAggregate>, ReloadError> {
        let slot = spec.slot.clone();
        prepare(&slot, move || prove_aggregate(spec, Tiering::BaselineFirst)).await.inspect_err(|e| self.count("aggregate", Err(e)))
    }

    /// Serves a proven aggregate plugin, counted as accepted.
    fn apply_aggregate(&self, spec: PluginSpec, loaded: Arc<LoadedAggregate>, started: Instant) -> Swap {
        self.count("aggregate", Ok(&loaded.info));
        let old = self.aggregate.swap(loaded.clone());
        self.optimize_later(self.aggregate.clone(), loaded.clone(), |a| &a.info, move || prove_aggregate(spec, Tiering::Optimized));
        self.swapped(old.info.clone(), loaded.info.clone(), started)
    }

    /// Records a reload attempt's outcome in the metrics and its history.
    fn count(&self, slot: &str, outcome: Result<&PluginInfo, &ReloadError>) {
        match outcome {
            Ok(info) => {
                self.stats.plugin_reloads(
                    slot,
                    true,
                    format!("{} {} (sha256 {}, {})", info.name, info.version, &info.content_hash[..12], info.origin),
                );
            }
            Err(e) => {
                let reason = crate::redact::in_text(&e.to_string()).into_owned();
                tracing::error!(plugin = slot, error = %reason, "plugin reload rejected; the old version keeps serving");
                self.stats.plugin_reloads(slot, false, reason);
            }
        }
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

    /// Re-reads pipeline.toml and applies what changed.
    pub async fn reload_config(&mut self) -> Result<(), ReloadError> {
        let next = match PipelineConfig::load(&self.config.file) {
            // An editor saving the same content, or a touch, is no change.
            Ok(next) if next == self.config => return Ok(()),
            Ok(next) => next,
            Err(e) => {
                self.stats.config_reloads(false, e.to_string());
                tracing::error!(error = %crate::redact::in_text(&e.to_string()), "pipeline.toml rejected; the running pipeline is untouched");
                return Err(e.into());
            }
        };
        let old = &self.config;
        let refused = match old.aggregate.change(&next.aggregate) {
            Apply::Refused(keys) => keys,
            _ => Vec::new(),
        };
        let new_tables = old.store.change(&next.store) != Apply::Unchanged;
        if !refused.is_empty() && !new_tables {
            let err = ReloadError::MetricsChanged { file: next.file.clone(), keys: refused.join(", ") };
            self.stats.config_reloads(false, err.to_string());
            tracing::error!(error = %err, "pipeline.toml rejected");
            return Err(err);
        }
        // Every plugin the file changes is proven before any is applied: a
        // reload applies whole or not at all, so this reloader's view (which
        // files it watches, what serves) always matches what runs.
        let started = Instant::now();
        let prepared = async {
            let chain = match old.transforms != next.transforms {
                true => Some(self.prepare_chain(&next).await?),
                false => None,
            };
            let aggregate = match old.plugins.aggregate.change(&next.plugins.aggregate) != Apply::Unchanged {
                true => Some(self.prepare_aggregate(next.aggregate_spec()).await?),
                false => None,
            };
            Ok::<_, ReloadError>((chain, aggregate))
        }
        .await;
        let (chain, aggregate) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => {
                self.stats.config_reloads(false, crate::redact::in_text(&e.to_string()).into_owned());
                tracing::error!(error = %crate::redact::in_text(&e.to_string()), "pipeline.toml rejected; nothing of it applied");
                return Err(e);
            }
        };
        if let Some(plan) = chain {
            self.apply_chain(plan);
        }
        if let Some(loaded) = aggregate {
            self.apply_aggregate(next.aggregate_spec(), loaded, started);
        }
        let needs_restart = !refused.is_empty()
            || [
                old.source.change(&next.source),
                old.store.change(&next.store),
                old.geoip.change(&next.geoip),
                old.index.change(&next.index),
                old.api.change(&next.api),
            ]
            .contains(&Apply::Restart);
        self.live.batching.send_replace(next.batching());
        self.live.decode.send_replace(next.decode_limits());
        self.live.aggregate.send_replace(next.aggregate.clone());
        self.stats.config_reloads(true, if needs_restart { "applied; reconnecting".into() } else { "applied live".into() });
        tracing::info!(file = %next.file.display(), restart = needs_restart, "pipeline.toml applied");
        self.config = next.clone();
        if needs_restart {
            tracing::info!("connection settings changed: draining and reconnecting");
            self.restart.send_replace(Some(next));
        }
        Ok(())
    }

    /// Watches files and `sighup` until `shutdown`. Files are watched through
    /// their folders, so a file replaced by rename is seen too.
    pub async fn run(mut self, sighup: Arc<Notify>, mut requests: mpsc::Receiver<ReloadRequest>, mut shutdown: watch::Receiver<bool>) {
        // (path, whether the event renamed a file into place: a complete file).
        let (tx, mut rx) = mpsc::unbounded_channel::<(PathBuf, bool)>();
        let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only writes, creations, renames and removals: reads (ours
            // included, when hashing a file) must not look like changes.
            if let Some(event) = event.ok().filter(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                use notify::event::{ModifyKind, RenameMode};
                let renamed_in = matches!(event.kind, notify::EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both)));
                let last = event.paths.len().saturating_sub(1);
                for (i, path) in event.paths.into_iter().enumerate() {
                    let _ = tx.send((path, renamed_in && i == last));
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch files; hot reload is off (SIGHUP still reloads)");
                return self.run_without_watcher(sighup, requests, shutdown).await;
            }
        };
        let mut watched = HashSet::new();
        self.watch_folders(&mut watcher, &mut watched);
        // From here on a changed file is seen (deploy scripts and the
        // benchmark wait for this line before writing a new build).
        tracing::info!(folders = watched.len(), "hot reload: watching the plugin files and pipeline.toml");
        loop {
            let changed: Vec<PathBuf> = tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup.notified() => {
                    tracing::info!("reload requested");
                    let _ = self.reload_config().await;
                    self.watch_folders(&mut watcher, &mut watched);
                    continue;
                }
                Some(request) = requests.recv() => {
                    self.forced(request).await;
                    continue;
                }
                Some((first, mut complete)) = rx.recv() => {
                    // A file renamed into place is whole: act at once (what
                    // deploys and build tools do). Otherwise wait for quiet.
                    let mut paths = vec![first];
                    while !complete {
                        match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                            Ok(Some((p, renamed_in))) => {
                                paths.push(p);
                                complete = renamed_in;
                            }
                            _ => break,
                        }
                    }
                    while let Ok((p, _)) = rx.try_recv() {
                        paths.push(p);
                    }
                    paths
                }
            };
            let touched = |target: &Path| changed.iter().any(|p| same_file(p, target));
            if touched(&self.config.file) {
                let _ = self.reload_config().await;
                // A transform added to the chain may live in a new folder.
                self.watch_folders(&mut watcher, &mut watched);
                continue;
            }
            for config in &self.config.transforms {
                let serving = self.transform_slot(config.transform_name()).map(|slot| slot.current().info.clone());
                if touched(&config.path) && serving.is_some_and(|info| self.differs(&config.path, &info)) && !self.is_candidate(config) {
                    let _ = self.start_rollout(config, config.rollout).await;
                }
            }
            if touched(&self.config.plugins.aggregate.path)
                && self.differs(&self.config.plugins.aggregate.path, &self.aggregate.current().info)
            {
                let _ = self.swap_aggregate(self.config.aggregate_spec()).await;
            }
        }
    }

    /// Watches the folder of every file the pipeline reads that is not
    /// watched yet.
    fn watch_folders(&self, watcher: &mut RecommendedWatcher, watched: &mut HashSet<PathBuf>) {
        for (what, path) in self.watched_files() {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
            if watched.contains(&dir) {
                continue;
            }
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot watch {what}"),
            }
        }
    }

    async fn run_without_watcher(
        mut self,
        sighup: Arc<Notify>,
        mut requests: mpsc::Receiver<ReloadRequest>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup.notified() => { let _ = self.reload_config().await; }
                Some(request) = requests.recv() => self.forced(request).await,
            }
        }
    }

    /// Serves a request of the API.
    async fn forced(&self, request: ReloadRequest) {
        tracing::info!(plugin = %request.slot, action = ?request.action, "requested through the API");
        let rollout = match request.action {
            ReloadAction::Reload => None,
            ReloadAction::Shadow => Some(Rollout::Shadow),
            ReloadAction::Canary => Some(Rollout::Canary),
            ReloadAction::Promote | ReloadAction::Abort => {
                let _ = request.reply.send(self.decide(&request.slot, request.action));
                return;
            }
        };
        if let Some(rollout) = rollout {
            let result = match self.config.transforms.iter().find(|t| t.transform_name() == request.slot) {
                Some(config) => self.start_rollout(config, rollout).await,
                None => Err(ReloadError::NoSuchPlugin { name: request.slot.clone(), known: self.known_plugins() }),
            };
            let _ = request.reply.send(result.map_err(|e| crate::redact::in_text(&e.to_string()).into_owned()));
            return;
        }
        let result = if request.slot == "aggregate" {
            self.swap_aggregate(self.config.aggregate_spec()).await
        } else {
            match self.config.transform_specs().into_iter().find(|spec| spec.slot == request.slot) {
                Some(spec) => self.swap_transform(spec).await,
                None => Err(ReloadError::NoSuchPlugin { name: request.slot.clone(), known: self.known_plugins() }),
            }
        };
        let _ = request.reply.send(result.map(|s| s.new).map_err(|e| crate::redact::in_text(&e.to_string()).into_owned()));
    }

    /// The plugins a reload can name, for error messages.
    fn known_plugins(&self) -> String {
        let mut names: Vec<String> = self.config.transforms.iter().map(|t| format!("`{}`", t.transform_name())).collect();
        names.push("`aggregate`".into());
        names.join(", ")
    }

    fn watched_files(&self) -> Vec<(String, PathBuf)> {
        let mut files = vec![("pipeline.toml".to_string(), self.config.file.clone())];
        for t in &self.config.transforms {
            files.push((format!("the transform `{}`", t.transform_name()), t.path.clone()));
        }
        files.push(("the aggregate plugin".into(), self.config.plugins.aggregate.path.clone()));
        files
    }

    /// Whether the file of `config` is already its transform's candidate in
    /// canary or shadow: a second event for one rename must not restart the
    /// rollout (that would reset its figures and record it as replaced).
    fn is_candidate(&self, config: &PluginConfig) -> bool {
        let Some(slot) = self.transform_slot(config.transform_name()) else { return false };
        let candidate = slot.canary().map(|c| c.info()).or_else(|| slot.shadow().map(|s| s.info()));
        candidate.is_some_and(|info| !self.differs(&config.path, &info))
    }

    /// Whether the file's content differs from what is serving: an editor
    /// touching a file, or a build rewriting the same bytes, is not a change.
    fn differs(&self, path: &Path, serving: &PluginInfo) -> bool {
        match std::fs::read(path) {
            Ok(bytes) => {
                crate::plugin::artifact::named_source(&bytes).unwrap_or_else(|| crate::plugin::content_hash(&bytes)) != serving.content_hash
            }
            // Mid-rename: the next event brings the new file.
            Err(_) => false,
        }
    }
}

/// The transforms a new pipeline.toml changes, proven, and the chain it
/// makes.
struct ChainPlan {
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

fn same_file(event_path: &Path, target: &Path) -> bool {
    let canon = |p: &Path| {
        let name = p.file_name().map(|n| n.to_os_string());
        let dir = p.parent().and_then(|d| std::fs::canonicalize(if d.as_os_str().is_empty() { Path::new(".") } else { d }).ok());
        (dir, name)
    };
    canon(event_path) == canon(target)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Slots whose next preparation panics: the test hook of [`prepare`],
    /// compiled into tests only.
    static PANIC_NEXT: Mutex<Vec<String>> = Mutex::new(Vec::new());

    /// Whether preparing `slot` panics now (once per arming).
    pub(super) fn take_armed_panic(slot: &str) -> bool {
        let mut armed = PANIC_NEXT.lock().unwrap_or_else(|e| e.into_inner());
        let before = armed.len();
        armed.retain(|s| s != slot);
        armed.len() != before
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_preparing_a_reload_rejects_it_and_the_next_reload_applies() {
        // A copy of its own, so that a rebuild of target/plugins is no change here.
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("aggregate.wasm");
        std::fs::copy(clickstream_testkit::plugin("aggregate"), &wasm).unwrap();
        let file = dir.path().join("pipeline.toml");
        std::fs::write(&file, format!("[source]\ntopics = [\"clicks\"]\n[plugins.aggregate]\npath = '{}'\n", wasm.display())).unwrap();
        let config = PipelineConfig::parse(&std::fs::read_to_string(&file).unwrap(), &file, |_| None).unwrap();
        let aggregate = Arc::new(Slot::new(prove_aggregate(config.aggregate_spec(), Tiering::Optimized).unwrap()));
        let live = LiveSettings {
            batching: watch::channel(config.batching()).0,
            decode: watch::channel(config.decode_limits()).0,
            aggregate: watch::channel(config.aggregate.clone()).0,
        };
        let stats = Arc::new(Stats::default());
        let (restart, _restarts) = watch::channel(None);
        let chain = Arc::new(ArcSwap::from_pointee(Vec::new()));
        let reloader = Reloader::new(config, chain, aggregate.clone(), Arc::new(GeoIp::empty()), live, stats.clone(), restart);
        let (requests, received) = mpsc::channel(1);
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(reloader.run(Arc::new(Notify::new()), received, stopped));
        let reload = || async {
            let (reply, answer) = tokio::sync::oneshot::channel();
            requests
                .send(ReloadRequest { slot: "aggregate".into(), action: ReloadAction::Reload, reply })
                .await
                .expect("the reloader runs");
            answer.await.expect("the reloader answers")
        };
        let serving = aggregate.current();

        PANIC_NEXT.lock().unwrap().push("aggregate".into());
        let refused = reload().await.expect_err("a reload whose preparation panicked is refused");
        assert!(refused.contains("panicked: test hook: preparing `aggregate` panics"), "{refused}");
        assert!(Arc::ptr_eq(&aggregate.current(), &serving), "the serving version is unchanged");
        let recorded = stats.reload_history().pop().unwrap();
        assert_eq!((recorded.what.as_str(), recorded.outcome), ("aggregate", "rejected"));
        assert!(recorded.detail.contains("panicked"), "{}", recorded.detail);

        let applied = reload().await.expect("the next reload applies");
        assert_eq!(applied.content_hash, serving.info.content_hash);
        assert!(!Arc::ptr_eq(&aggregate.current(), &serving), "the reloaded version serves");
        assert_eq!((stats.reloads_of("aggregate", "rejected"), stats.reloads_of("aggregate", "accepted")), (1, 1));
        stop.send(true).unwrap();
        running.await.expect("the reloader stops cleanly");
    }
}
