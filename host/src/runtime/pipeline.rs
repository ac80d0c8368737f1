//! Wires the stages: source → decode → transform → store, each a task or thread joined
//! by bounded channels so reading, plugin calls and database writes overlap
//! and a slow stage applies backpressure upstream.

use std::sync::Arc;

use rdkafka::consumer::CommitMode;
use tokio::sync::{mpsc, watch, Notify};

use arc_swap::ArcSwap;
use rdkafka::consumer::Consumer;

use crate::config::PipelineConfig;
use crate::plugin::aggregate::LoadedAggregate;
use crate::plugin::geoip::{GeoIp, GeoIpError};
use crate::plugin::{PluginCounters, PluginError, PluginInfo, Slot};
use crate::runtime::reload::{LiveSettings, ReloadRequest, Reloader};
use crate::runtime::supervise::{StageFailure, Stages};
use crate::runtime::writers::Writers;
use crate::stages::aggregate::Aggregator;
use crate::stages::decode::{decode_batch, DecodeLimits};
use crate::stages::index::{Indexer, Publisher};
use crate::stages::record::{Consumed, WriteBatch};
use crate::stages::source::{self, SourceConsumer};
use crate::stages::store::retry::connect_store;
use crate::stages::store::{Store, StoreError};
use crate::stages::transform::{describe_chain, load_chain, Chain, ChainRunner};
use crate::stats::{BatchStage, Stats};

/// How often day partitions are created ahead and expired ones dropped.
const PARTITION_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum PipelineError {
    /// GeoIP databases.
    #[error(transparent)]
    GeoIp(#[from] GeoIpError),
    /// A plugin failed to load.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// PostgreSQL.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The search server configuration.
    #[error(transparent)]
    Index(#[from] crate::stages::index::IndexError),
    /// Kafka.
    #[error("kafka ({brokers}): {source}")]
    Kafka {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A stage died while running; the pipeline drained what it could.
    #[error(transparent)]
    Stage(#[from] StageFailure),
}

/// How a run ended.
pub enum Exit {
    /// Asked to stop; everything in flight was stored.
    Stopped(Box<Pipeline>),
    /// pipeline.toml changed connection settings: drained, and to be started
    /// again with this configuration.
    Restart(Box<PipelineConfig>),
}

/// The pipeline's shared parts, for tests and the API.
#[derive(Clone)]
pub struct Pipeline {
    /// The configuration it runs with.
    pub config: Arc<PipelineConfig>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The live chain of transforms.
    pub chain: Arc<ArcSwap<Chain>>,
    /// The live aggregate plugin.
    pub aggregate: Arc<Slot<LoadedAggregate>>,
    /// The GeoIP databases, each refreshed live when its file is replaced.
    pub geoip: Arc<GeoIp>,
    /// The store.
    pub store: Store,
    /// The Kafka consumer, for readiness.
    pub consumer: Arc<SourceConsumer>,
    /// The search index, for readiness and queries.
    pub indexer: Indexer,
    /// Forced plugin reloads.
    pub reload: mpsc::Sender<ReloadRequest>,
    /// True once the pipeline drains (stopping, or restarting with a new
    /// pipeline.toml): its parts are about to go away.
    pub draining: watch::Receiver<bool>,
    /// Which stage holds work since when, for readiness.
    pub stages: Arc<Stages>,
}

/// Runs the pipeline until `shutdown`, draining at the end, and again each
/// time pipeline.toml changes connection settings. `sighup` asks for a
/// reload of pipeline.toml.
pub async fn run_until_stopped(
    mut config: PipelineConfig,
    shutdown: watch::Receiver<bool>,
    sighup: Arc<Notify>,
    stats: Arc<Stats>,
    started: impl Fn(&Pipeline),
) -> Result<Pipeline, PipelineError> {
    loop {
        match run(config, shutdown.clone(), sighup.clone(), stats.clone(), &started).await? {
            Exit::Stopped(pipeline) => return Ok(*pipeline),
            Exit::Restart(next) => config = *next,
        }
    }
}

/// Starts the pipeline and runs it until `shutdown` turns true or a reload
/// asks for a restart, then drains: the source stops reading, in-flight
/// batches are enriched and stored, and the final offsets are committed.
/// `started` sees the live parts once everything is connected.
pub async fn run(
    config: PipelineConfig,
    shutdown: watch::Receiver<bool>,
    sighup: Arc<Notify>,
    stats: Arc<Stats>,
    started: impl Fn(&Pipeline),
) -> Result<Exit, PipelineError> {
    // What can be refused without a server answers first, so a pipeline
    // that cannot start says so at once instead of waiting on PostgreSQL.
    let kafka_error = |source| PipelineError::Kafka { brokers: crate::redact::in_text(&config.source.brokers).into_owned(), source };
    source::check_properties(&config.source).map_err(kafka_error)?;
    let geoip = Arc::new(GeoIp::open(&config.geoip.databases)?);
    let chain = Arc::new(ArcSwap::from_pointee(load_chain(config.transform_specs(), &geoip)?));
    let aggregate = Arc::new(Slot::new(LoadedAggregate::load(config.aggregate_spec())?));
    tracing::info!(
        chain = %describe_chain(&chain.load()),
        aggregate = %format!("{} {}", aggregate.current().info.name, aggregate.current().info.version),
        "plugins loaded"
    );
    let store = connect_store(&config.store, config.windows(), &shutdown).await?;
    let offsets = source::OffsetLookup::start(&config.store.database_url).map_err(|e| PipelineError::Store(StoreError::Url(e)))?;
    let consumer = source::connect(&config.source, offsets, stats.clone()).map_err(kafka_error)?;
    tracing::info!(brokers = %crate::redact::in_text(&config.source.brokers), topics = ?config.source.topics, group = %config.source.group_id, "consuming");

    // Drains on shutdown, on a reload that needs a restart, and when a
    // stage dies.
    let (drain_tx, drain) = watch::channel(false);
    let (restart_tx, mut restart_rx) = watch::channel::<Option<PipelineConfig>>(None);
    let stages = Arc::new(Stages::default());
    let forward = tokio::spawn({
        let mut shutdown = shutdown.clone();
        let mut failed = stages.watch_failure();
        let drain_tx = drain_tx.clone();
        async move {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => {}
                _ = restart_rx.wait_for(|r| r.is_some()) => {}
                _ = failed.wait_for(Option::is_some) => {}
            }
            let _ = drain_tx.send(true);
        }
    });

    let (batching_tx, batching_rx) = watch::channel(config.batching());
    let (aggregate_tx, aggregate_rx) = watch::channel(config.aggregate.clone());
    let (decode_tx, decode_rx) = watch::channel(config.decode_limits());
    let live = LiveSettings { batching: batching_tx, decode: decode_tx, aggregate: aggregate_tx };
    let reloader = Reloader::new(config.clone(), chain.clone(), aggregate.clone(), geoip.clone(), live, stats.clone(), restart_tx.clone());
    let refreshing_geoip = stages.spawn("geoip refresh", &drain, {
        let (refresh, mut until) = (crate::plugin::geoip::refresh::watch(geoip.clone(), stats.clone(), drain.clone()), drain.clone());
        // With no file to watch it ends at once; that is no failure.
        async move {
            refresh.await;
            let _ = until.wait_for(|d| *d).await;
        }
    });
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let reloading = stages.spawn("reload", &drain, reloader.run(sighup, reload_rx, drain.clone()));

    let indexer = Indexer::new(&config.index)?;
    let rows_written = Arc::new(Notify::new());
    let aggregator = Aggregator::new(store.pool().clone(), aggregate.clone(), aggregate_rx, config.source.topics.clone(), stats.clone());
    let aggregating = stages.spawn("aggregate", &drain, aggregator.run(rows_written.clone(), drain.clone()));
    let publisher = Publisher::new(store.pool().clone(), indexer.clone(), stats.clone());
    let publishing = stages.spawn("index", &drain, publisher.run(rows_written, drain.clone()));
    let upkeep = stages.spawn(
        "partition upkeep",
        &drain,
        store.partitions().clone().run(store.pool().clone(), PARTITION_UPKEEP_EVERY, drain.clone()),
    );

    let depth = config.store.max_in_flight_batches;
    let (records_tx, records_rx) = mpsc::channel(depth);
    let (batches_tx, mut batches_rx) = mpsc::channel::<WriteBatch>(depth);
    let reading = stages.spawn("source", &drain, source::run(consumer.clone(), batching_rx, records_tx, drain.clone(), stats.clone()));
    let transforming =
        spawn_decode_and_transform(&stages, &drain, ChainRunner::new(chain.clone()), decode_rx, records_rx, batches_tx, stats.clone());

    let config_writers = config.store.writers;
    let pipeline = Pipeline {
        config: Arc::new(config),
        stats: stats.clone(),
        chain,
        aggregate,
        geoip,
        store: store.clone(),
        consumer: consumer.clone(),
        indexer,
        reload: reload_tx,
        draining: drain.clone(),
        stages: stages.clone(),
    };
    started(&pipeline);

    let writers = Writers::start(config_writers, depth, &store, &consumer, &stats, &stages, &drain);
    while let Some(batch) = batches_rx.recv().await {
        if !writers.write(batch).await {
            break;
        }
    }
    // The stages upstream see their channels close and stop.
    drop(batches_rx);
    if let Some(abandoned) = writers.finish().await {
        tracing::warn!(error = %abandoned, "stopping with a batch PostgreSQL did not take; its records are read again on restart");
    }
    let _ = reading.await;
    let _ = upkeep.await;
    let _ = aggregating.await;
    let _ = publishing.await;
    let _ = reloading.await;
    let _ = refreshing_geoip.await;
    forward.abort();
    if let Some(transforming) = transforming {
        let _ = tokio::task::spawn_blocking(move || transforming.join()).await;
    }
    // Only this host's partitions: committing another member's could move
    // its visible offset backwards.
    let assigned = consumer.assignment().map(|tpl| tpl.to_topic_map()).unwrap_or_default();
    let final_offsets =
        store.next_offsets_all().await.unwrap_or_default().into_iter().filter(|(key, _)| assigned.contains_key(key)).collect();
    source::commit(&consumer, &final_offsets, CommitMode::Sync);
    tracing::info!(
        consumed = stats.consumed.get(),
        stored = stats.stored.get(),
        dead_lettered = stats.dead_lettered.get(),
        redelivered = stats.redelivered.get(),
        "pipeline stopped"
    );
    if let Some(failure) = stages.failure() {
        return Err(failure.into());
    }
    let restart = restart_tx.borrow().clone();
    Ok(match restart {
        Some(next) if !*shutdown.borrow() => Exit::Restart(Box::new(next)),
        _ => Exit::Stopped(Box::new(pipeline)),
    })
}

/// Decodes and transforms on a thread of its own (plugin calls are
/// CPU-bound and block) until `input` closes; `output` closes when it
/// returns. `None` when the thread could not be started (recorded as the
/// stage's failure).
fn spawn_decode_and_transform(
    stages: &Arc<Stages>,
    drain: &watch::Receiver<bool>,
    mut runner: ChainRunner,
    limits: watch::Receiver<DecodeLimits>,
    mut input: mpsc::Receiver<Vec<Consumed>>,
    output: mpsc::Sender<WriteBatch>,
    stats: Arc<Stats>,
) -> Option<std::thread::JoinHandle<()>> {
    let stage = stages.stage("transform");
    let spawned = stages.spawn_thread("transform", drain, move || {
        while let Some(records) = input.blocking_recv() {
            let started = std::time::Instant::now();
            let len = records.len();
            let busy = stage.busy(|| format!("a batch of {len} records"));
            crate::runtime::supervise::fault_point("transform");
            let limits = *limits.borrow();
            let batch = runner.process(decode_batch(records, &limits), &stats);
            drop(busy);
            stats.batch(BatchStage::Transform, len, started.elapsed());
            if output.blocking_send(batch).is_err() {
                return;
            }
        }
    });
    spawned.inspect_err(|e| stages.fail("transform", format!("could not start its thread: {e}"))).ok()
}

/// One plugin the pipeline runs, for the API and metrics.
pub struct PluginView {
    /// `transform` or `aggregate`.
    pub kind: &'static str,
    /// The version serving.
    pub info: PluginInfo,
    /// What its slot did.
    pub counters: Arc<PluginCounters>,
    /// A transform's candidate in shadow, if one is.
    pub shadow: Option<Arc<crate::plugin::shadow::Shadow>>,
    /// A transform's candidate in canary (or in its watch), if one is.
    pub canary: Option<Arc<crate::plugin::canary::Canary>>,
}

impl Pipeline {
    /// The transforms in chain order, then the aggregate plugin.
    pub fn plugins(&self) -> Vec<PluginView> {
        let view = |kind, info: &PluginInfo, counters: &Arc<PluginCounters>| PluginView {
            kind,
            info: info.clone(),
            counters: counters.clone(),
            shadow: None,
            canary: None,
        };
        let mut all: Vec<PluginView> = self
            .chain
            .load()
            .iter()
            .map(|slot| PluginView {
                shadow: slot.shadow(),
                canary: slot.canary(),
                ..view("transform", &slot.current().info, slot.counters())
            })
            .collect();
        all.push(view("aggregate", &self.aggregate.current().info, self.aggregate.counters()));
        all
    }
}
