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

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch, Notify};

use crate::config::{Apply, PipelineConfig};
use crate::plugin::aggregate::LoadedAggregate;
use crate::plugin::enrich::LoadedEnrich;
use crate::plugin::geoip::GeoIp;
use crate::plugin::golden::{prove_aggregate, prove_enrich, ProofError};
use crate::plugin::{PluginInfo, PluginSpec, Slot};
use crate::stages::aggregate::config::AggregateConfig;
use crate::stages::decode::DecodeLimits;
use crate::stages::source::Batching;
use crate::stats::Stats;

/// Quiet time after the last file event before acting: editors and build
/// tools write a file in several steps (truncate, write, rename).
const DEBOUNCE: Duration = Duration::from_millis(50);

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

/// A request to reload a plugin from its file now (the API's forced reload):
/// the file is loaded and proven even when its content is unchanged.
pub struct ReloadRequest {
    /// The slot: `enrich` or `aggregate`.
    pub slot: String,
    /// Gets the version now serving, or why the reload was refused.
    pub reply: tokio::sync::oneshot::Sender<Result<PluginInfo, String>>,
}

/// Watches the plugin files and pipeline.toml and applies changes.
pub struct Reloader {
    config: PipelineConfig,
    enrich: Arc<Slot<LoadedEnrich>>,
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
        enrich: Arc<Slot<LoadedEnrich>>,
        aggregate: Arc<Slot<LoadedAggregate>>,
        geoip: Arc<GeoIp>,
        live: LiveSettings,
        stats: Arc<Stats>,
        restart: watch::Sender<Option<PipelineConfig>>,
    ) -> Reloader {
        Reloader { config, enrich, aggregate, geoip, live, stats, restart }
    }

    /// Replaces the enrich plugin with the file and settings of `spec` if it
    /// passes every check.
    pub async fn swap_enrich(&self, spec: PluginSpec) -> Result<Swap, ReloadError> {
        let started = Instant::now();
        let geoip = self.geoip.clone();
        let result = tokio::task::spawn_blocking(move || prove_enrich(spec, Some(geoip))).await.expect("plugin preparation does not panic");
        self.count("enrich", result.as_ref().map(|l| &l.info));
        let loaded = result?;
        let old = self.enrich.swap(loaded.clone());
        Ok(self.swapped(old.info.clone(), loaded.info.clone(), started))
    }

    /// Replaces the aggregate plugin likewise.
    pub async fn swap_aggregate(&self, spec: PluginSpec) -> Result<Swap, ReloadError> {
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || prove_aggregate(spec)).await.expect("plugin preparation does not panic");
        self.count("aggregate", result.as_ref().map(|l| &l.info));
        let loaded = result?;
        let old = self.aggregate.swap(loaded.clone());
        Ok(self.swapped(old.info.clone(), loaded.info.clone(), started))
    }

    /// Records a reload attempt's outcome in the metrics and its history.
    fn count(&self, slot: &str, outcome: Result<&PluginInfo, &ProofError>) {
        match outcome {
            Ok(info) => {
                self.stats.plugin_reloads(slot, true, format!("{} {} (sha256 {})", info.name, info.version, &info.content_hash[..12]));
            }
            Err(e) => {
                self.stats.plugin_reloads(slot, false, e.to_string());
                tracing::error!(plugin = slot, error = %e, "plugin reload rejected; the old version keeps serving");
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
                tracing::error!(error = %e, "pipeline.toml rejected; the running pipeline is untouched");
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
        if old.plugins.enrich.change(&next.plugins.enrich) != Apply::Unchanged {
            self.swap_enrich(next.enrich_spec()).await?;
        }
        if old.plugins.aggregate.change(&next.plugins.aggregate) != Apply::Unchanged {
            self.swap_aggregate(next.aggregate_spec()).await?;
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
        let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
        let mut watcher = match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Only writes, creations, renames and removals: reads (ours
            // included, when hashing a file) must not look like changes.
            if let Some(event) = event.ok().filter(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
                for path in event.paths {
                    let _ = tx.send(path);
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
        loop {
            let changed: Vec<PathBuf> = tokio::select! {
                _ = shutdown.changed() => return,
                _ = sighup.notified() => {
                    tracing::info!("reload requested");
                    let _ = self.reload_config().await;
                    continue;
                }
                Some(request) = requests.recv() => {
                    self.forced(request).await;
                    continue;
                }
                Some(first) = rx.recv() => {
                    let mut paths = vec![first];
                    while let Ok(Some(p)) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                        paths.push(p);
                    }
                    paths
                }
            };
            let touched = |target: &Path| changed.iter().any(|p| same_file(p, target));
            if touched(&self.config.file) {
                let _ = self.reload_config().await;
                continue;
            }
            if touched(&self.config.plugins.enrich.path) && self.differs(&self.config.plugins.enrich.path, &self.enrich.current().info) {
                let _ = self.swap_enrich(self.config.enrich_spec()).await;
            }
            if touched(&self.config.plugins.aggregate.path)
                && self.differs(&self.config.plugins.aggregate.path, &self.aggregate.current().info)
            {
                let _ = self.swap_aggregate(self.config.aggregate_spec()).await;
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

    /// Serves a forced reload of one plugin slot.
    async fn forced(&self, request: ReloadRequest) {
        tracing::info!(plugin = %request.slot, "reload requested through the API");
        let result = match request.slot.as_str() {
            "enrich" => self.swap_enrich(self.config.enrich_spec()).await.map(|s| s.new).map_err(|e| e.to_string()),
            "aggregate" => self.swap_aggregate(self.config.aggregate_spec()).await.map(|s| s.new).map_err(|e| e.to_string()),
            other => Err(format!("no plugin slot `{other}`; the slots are `enrich` and `aggregate`")),
        };
        let _ = request.reply.send(result);
    }

    fn watched_files(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("pipeline.toml", self.config.file.clone()),
            ("the enrich plugin", self.config.plugins.enrich.path.clone()),
            ("the aggregate plugin", self.config.plugins.aggregate.path.clone()),
        ]
    }

    /// Whether the file's content differs from what is serving: an editor
    /// touching a file, or a build rewriting the same bytes, is not a change.
    fn differs(&self, path: &Path, serving: &PluginInfo) -> bool {
        match std::fs::read(path) {
            Ok(bytes) => crate::plugin::content_hash(&bytes) != serving.content_hash,
            // Mid-rename: the next event brings the new file.
            Err(_) => false,
        }
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
