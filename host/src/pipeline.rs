//! Wires the stages: source → enrich → store, each a task or thread joined
//! by bounded channels so reading, plugin calls and database writes overlap
//! and a slow stage applies backpressure upstream.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::CommitMode;
use tokio::sync::{mpsc, watch, Notify};

use crate::config::PipelineConfig;
use crate::decode::DecodeLimits;
use crate::geoip::{GeoIp, GeoIpError};
use crate::aggregate::Aggregator;
use crate::index::Indexer;
use crate::plugin::aggregate::LoadedAggregate;
use crate::plugin::enrich::{EnrichRunner, LoadedEnrich};
use crate::plugin::{PluginError, Slot};
use crate::reload::{LiveSettings, ReloadRequest, Reloader};
use rdkafka::consumer::Consumer;

use crate::source::{self, Batching, SourceConsumer};
use crate::stats::{BatchStage, Stats};
use crate::store::{Store, StoreError, WindowSpec, WriteBatch};

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
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
    Index(#[from] crate::index::IndexError),
    /// Kafka.
    #[error("kafka ({brokers}): {source}")]
    Kafka {
        /// The brokers.
        brokers: String,
        /// Why.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// How a run ended.
pub enum Exit {
    /// Asked to stop; everything in flight was stored.
    Stopped(Pipeline),
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
    /// The live enrich plugin.
    pub enrich: Arc<Slot<LoadedEnrich>>,
    /// The live aggregate plugin.
    pub aggregate: Arc<Slot<LoadedAggregate>>,
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
}

/// Longest pause between attempts to write a batch while PostgreSQL is down.
const MAX_STORE_BACKOFF: Duration = Duration::from_secs(10);

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
            Exit::Stopped(pipeline) => return Ok(pipeline),
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
    let geoip = Arc::new(GeoIp::open(&config.geoip.databases)?);
    let enrich = Arc::new(Slot::new(LoadedEnrich::load(config.enrich_spec(), Some(geoip.clone()))?));
    let aggregate = Arc::new(Slot::new(LoadedAggregate::load(config.aggregate_spec())?));
    tracing::info!(
        enrich = %format!("{} {}", enrich.current().info.name, enrich.current().info.version),
        aggregate = %format!("{} {}", aggregate.current().info.name, aggregate.current().info.version),
        "plugins loaded"
    );
    let store = connect_store(&config.store.database_url, WindowSpec::of(&config.aggregate), &shutdown).await?;
    let offsets = source::OffsetLookup::start(&config.store.database_url).map_err(|e| PipelineError::Store(StoreError::Url(e)))?;
    let consumer = source::connect(&config.source, offsets, stats.clone()).map_err(|source| PipelineError::Kafka {
        brokers: config.source.brokers.clone(),
        source,
    })?;
    tracing::info!(brokers = %config.source.brokers, topics = ?config.source.topics, group = %config.source.group_id, "consuming");

    // Drains on shutdown, and on a reload that needs a restart.
    let (drain_tx, drain) = watch::channel(false);
    let (restart_tx, mut restart_rx) = watch::channel::<Option<PipelineConfig>>(None);
    let forward = tokio::spawn({
        let mut shutdown = shutdown.clone();
        let drain_tx = drain_tx.clone();
        async move {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => {}
                _ = restart_rx.wait_for(|r| r.is_some()) => {}
            }
            let _ = drain_tx.send(true);
        }
    });

    let (batching_tx, batching_rx) = watch::channel(Batching {
        batch_size: config.source.batch_size,
        max_wait: Duration::from_millis(config.source.batch_max_wait_ms),
    });
    let (aggregate_tx, aggregate_rx) = watch::channel(config.aggregate.clone());
    let (decode_tx, decode_rx) = watch::channel(DecodeLimits::of(&config.source));
    let live = LiveSettings {
        batching: batching_tx,
        decode: decode_tx,
        aggregate: aggregate_tx,
    };
    let reloader = Reloader::new(config.clone(), enrich.clone(), aggregate.clone(), geoip, live, stats.clone(), restart_tx.clone());
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let reloading = tokio::spawn(reloader.run(sighup, reload_rx, drain.clone()));

    let indexer = Indexer::new(&config.index)?;
    let aggregator = Aggregator::new(store.pool().clone(), aggregate.clone(), aggregate_rx, config.source.topics.clone(), indexer.clone(), stats.clone());
    let aggregating = tokio::spawn(aggregator.run(drain.clone()));

    let depth = config.store.max_in_flight_batches;
    let (records_tx, records_rx) = mpsc::channel(depth);
    let (batches_tx, mut batches_rx) = mpsc::channel::<WriteBatch>(depth);
    let reading = tokio::spawn(source::run(consumer.clone(), batching_rx, records_tx, drain.clone(), stats.clone()));
    let enriching = crate::enrich::spawn(EnrichRunner::new(enrich.clone()), decode_rx, records_rx, batches_tx, stats.clone());

    let pipeline = Pipeline {
        config: Arc::new(config),
        stats: stats.clone(),
        enrich,
        aggregate,
        store: store.clone(),
        consumer: consumer.clone(),
        indexer,
        reload: reload_tx,
        draining: drain.clone(),
    };
    started(&pipeline);

    while let Some(batch) = batches_rx.recv().await {
        if let Err(abandoned) = store_batch(&store, &batch, &stats, drain.clone()).await {
            tracing::warn!(records = batch.len(), error = %abandoned, "stopping with a batch PostgreSQL did not take; its records are read again on restart");
            // The stages upstream see their channels close and stop.
            drop(batches_rx);
            break;
        }
        source::commit(&consumer, &batch.next_offsets, CommitMode::Async);
    }
    let _ = reading.await;
    let _ = aggregating.await;
    let _ = reloading.await;
    forward.abort();
    let _ = tokio::task::spawn_blocking(move || enriching.join()).await;
    // Only this host's partitions: committing another member's could move
    // its visible offset backwards.
    let assigned = consumer.assignment().map(|tpl| tpl.to_topic_map()).unwrap_or_default();
    let final_offsets = store
        .next_offsets_all()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| assigned.contains_key(key))
        .collect();
    source::commit(&consumer, &final_offsets, CommitMode::Sync);
    tracing::info!(
        consumed = stats.consumed.get(),
        stored = stats.stored.get(),
        dead_lettered = stats.dead_lettered.get(),
        redelivered = stats.redelivered.get(),
        "pipeline stopped"
    );
    let restart = restart_tx.borrow().clone();
    Ok(match restart {
        Some(next) if !*shutdown.borrow() => Exit::Restart(Box::new(next)),
        _ => Exit::Stopped(pipeline),
    })
}

/// Connects to PostgreSQL, retrying with backoff until it answers or the
/// pipeline is asked to stop.
async fn connect_store(url: &str, windows: WindowSpec, shutdown: &watch::Receiver<bool>) -> Result<Store, StoreError> {
    let mut backoff = Duration::from_millis(200);
    let mut shutdown = shutdown.clone();
    loop {
        match Store::connect(url, windows).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Database(e)) if !*shutdown.borrow() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "PostgreSQL unreachable; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|stop| *stop) => return Err(StoreError::Database(e)),
                }
                backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long a write already under way may still finish once the pipeline
/// drains: a healthy PostgreSQL answers in well under a second, and a hung
/// one must not hold up a shutdown.
const DRAIN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// The pipeline drained while a batch was not yet stored.
#[derive(Debug, thiserror::Error)]
#[error("drained after {attempts} failed attempts to store the batch; last error: {last}")]
pub struct Abandoned {
    /// Attempts made.
    pub attempts: u32,
    /// The last error, or that the write did not finish in time.
    pub last: String,
}

/// Writes a batch, retrying with backoff for as long as PostgreSQL cannot
/// take it (records PostgreSQL refuses are dead-lettered inside the write;
/// what is retried here is the server's fault): meanwhile the channels fill
/// and reading pauses, so nothing is dropped. Once `drain` turns true it
/// stops retrying and gives the batch up unstored: its offsets were not
/// advanced, so it is read again on restart.
async fn store_batch(store: &Store, batch: &WriteBatch, stats: &Stats, mut drain: watch::Receiver<bool>) -> Result<(), Abandoned> {
    let mut backoff = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        let write = store.write(batch);
        tokio::pin!(write);
        let result = tokio::select! {
            result = &mut write => result,
            _ = async {
                let _ = drain.wait_for(|d| *d).await;
                tokio::time::sleep(DRAIN_WRITE_GRACE).await;
            } => {
                return Err(Abandoned { attempts: attempts + 1, last: format!("no answer from PostgreSQL within {DRAIN_WRITE_GRACE:?} of draining") });
            }
        };
        attempts += 1;
        match result {
            Ok(outcome) => {
                stats.batch(BatchStage::Store, batch.len(), started.elapsed());
                stats.stored.add(outcome.stored);
                stats.dead_lettered.add(outcome.dead_lettered);
                stats.redelivered.add(outcome.redelivered);
                stats.duplicates.add(outcome.duplicates);
                stats.batches_written.inc();
                for ((stage, kind), n) in &outcome.dead_letters_by {
                    stats.dead_letters(stage, kind, *n);
                }
                for ((topic, partition), next) in &batch.next_offsets {
                    stats.stored_next(topic, *partition, *next);
                }
                if attempts > 1 {
                    tracing::info!("PostgreSQL is back; ingestion resumed");
                }
                return Ok(());
            }
            Err(e) => {
                stats.store_retries.inc();
                tracing::warn!(error = %crate::store::describe(&e), records = batch.len(), retry_in = ?backoff, "cannot store batch; ingestion paused");
                if *drain.borrow() {
                    return Err(Abandoned { attempts, last: crate::store::describe(&e) });
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = drain.wait_for(|d| *d) => return Err(Abandoned { attempts, last: crate::store::describe(&e) }),
                }
                backoff = (backoff * 2).min(MAX_STORE_BACKOFF);
            }
        }
    }
}
