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
//!
//! One file per job, all on the one [`Reloader`] (a reload runs one at a
//! time, so they share its state without locks): `watcher.rs` notices a
//! changed file and waits for requests; `swap.rs` proves a build and swaps
//! it in, then its optimised build; `rollout.rs` starts, promotes and aborts
//! a shadow or canary; `config.rs` applies a changed pipeline.toml, and
//! `chain.rs` the new chain of transforms it describes. Here: what the
//! reloader is asked, how it refuses, and which job answers a request.

mod chain;
mod config;
mod rollout;
mod swap;
mod watcher;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::PipelineConfig;
use crate::plugin::aggregate::LoadedAggregate;
use crate::plugin::config::Rollout;
use crate::plugin::geoip::GeoIp;
use crate::plugin::golden::ProofError;
use crate::plugin::transform::LoadedTransform;
use crate::plugin::{PluginInfo, Slot};
use crate::stages::aggregate::config::AggregateConfig;
use crate::stages::decode::DecodeLimits;
use crate::stages::source::Batching;
use crate::stages::transform::Chain;
use crate::stats::Stats;

/// Why a reload was refused. The running pipeline is untouched.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum ReloadError {
    /// The new plugin failed to load or to pass the golden batch.
    #[error(transparent)]
    Plugin(#[from] ProofError),
    /// The new pipeline.toml is invalid.
    #[error(transparent)]
    Config(#[from] crate::section::ConfigError),
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

impl ReloadAction {
    /// Every action, for the API to route each the same way.
    pub const ALL: [ReloadAction; 5] =
        [ReloadAction::Reload, ReloadAction::Shadow, ReloadAction::Canary, ReloadAction::Promote, ReloadAction::Abort];

    /// The action as the API names it: the last segment of its path and
    /// the `action` of its answer.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadAction::Reload => "reload",
            ReloadAction::Shadow => "shadow",
            ReloadAction::Canary => "canary",
            ReloadAction::Promote => "promote",
            ReloadAction::Abort => "abort",
        }
    }
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

    /// The plugins a reload can name, for error messages.
    fn known_plugins(&self) -> String {
        let mut names: Vec<String> = self.config.transforms.iter().map(|t| format!("`{}`", t.transform_name())).collect();
        names.push("`aggregate`".into());
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::{mpsc, Notify};

    use super::*;
    use crate::plugin::golden::prove_aggregate;
    use crate::plugin::Tiering;
    use crate::stats::ReloadOutcome;

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

    /// The API's paths and answers named each action by its variant, in
    /// lower case, before it had a name of its own.
    #[test]
    fn each_action_keeps_the_name_the_api_gave_it() {
        for action in ReloadAction::ALL {
            assert_eq!(action.as_str(), format!("{action:?}").to_lowercase());
        }
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
        assert_eq!((recorded.what.as_str(), recorded.outcome), ("aggregate", ReloadOutcome::Rejected));
        assert!(recorded.detail.contains("panicked"), "{}", recorded.detail);

        let applied = reload().await.expect("the next reload applies");
        assert_eq!(applied.content_hash, serving.info.content_hash);
        assert!(!Arc::ptr_eq(&aggregate.current(), &serving), "the reloaded version serves");
        let counts = (stats.reloads_of("aggregate", ReloadOutcome::Rejected), stats.reloads_of("aggregate", ReloadOutcome::Accepted));
        assert_eq!(counts, (1, 1));
        stop.send(true).unwrap();
        running.await.expect("the reloader stops cleanly");
    }
}
