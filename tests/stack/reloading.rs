//! What the hot-reload tests share: a running pipeline whose plugin is a
//! copy the test replaces, and the API's reload requests.
#![allow(dead_code)] // each test module uses its own part

use clickstream_testkit as support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickstream::plugin::transform::LoadedTransform;
use clickstream::plugin::Slot;
use clickstream::produce::{self, Generator, GeneratorConfig};
use clickstream::runtime::pipeline::Pipeline;
use clickstream::runtime::reload::ReloadAction;
use clickstream::stats::Stats;
use sqlx::PgPool;

pub const WAIT: Duration = Duration::from_secs(120);

/// Replaces `to` the way build tools do: write a temporary file beside it,
/// then rename it over.
pub fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

pub struct Running {
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<Result<Pipeline, clickstream::runtime::pipeline::PipelineError>>,
    /// The transform the test replaces.
    pub slot: Arc<Slot<LoadedTransform>>,
    pub stats: Arc<Stats>,
    pub pipeline: std::path::PathBuf,
    /// What the API sends the reloader.
    pub requests: tokio::sync::mpsc::Sender<clickstream::runtime::reload::ReloadRequest>,
}

/// Reload tests compile plugins while they measure; one at a time keeps
/// them from slowing each other down.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `f`'s pipeline with its enrich plugin a copy in `f.dir`, so the
/// test can replace it.
pub async fn start(f: &support::Fixture) -> Running {
    let enrich = f.dir.path().join("enrich.wasm");
    install(&support::plugin("enrich"), &enrich);
    start_chain(f, &[("enrich", &enrich)], 0).await
}

/// Runs `f`'s pipeline with the chain `transforms`; the test replaces the
/// one at `replaced`.
pub async fn start_chain(f: &support::Fixture, transforms: &[(&str, &Path)], replaced: usize) -> Running {
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 4).await.unwrap();
    let pipeline = f.pipeline.clone();
    support::set_chain(&pipeline, transforms);
    let config = support::load_config(&pipeline);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stats = Arc::new(Stats::default());
    type Started = (Arc<Slot<LoadedTransform>>, tokio::sync::mpsc::Sender<clickstream::runtime::reload::ReloadRequest>);
    let slot: Arc<Mutex<Option<Started>>> = Default::default();
    let task = tokio::spawn(clickstream::runtime::pipeline::run_until_stopped(config, stopped, Default::default(), stats.clone(), {
        let slot = slot.clone();
        move |p: &Pipeline| *slot.lock().unwrap() = Some((p.chain.load()[replaced].clone(), p.reload.clone()))
    }));
    let deadline = Instant::now() + WAIT;
    let (slot, requests) = loop {
        if let Some(s) = slot.lock().unwrap().clone() {
            break s;
        }
        assert!(Instant::now() < deadline, "pipeline did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Running { stop, task, slot, stats, pipeline, requests }
}

pub async fn produce_to(topic: &str, events: u64, seed: u64, rate: Option<u64>) -> BTreeSet<String> {
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, topic, 4).await.unwrap();
    let config = GeneratorConfig { events, users: 200, urls: 20, seed, ..GeneratorConfig::default() };
    let ids = Generator::new(config.clone()).map(|r| r.event_id).collect();
    produce::to_kafka(Generator::new(config), &brokers, topic, rate, &Default::default(), &indicatif::ProgressBar::hidden()).await.unwrap();
    ids
}

pub async fn stored(pool: &PgPool) -> i64 {
    support::count(pool, "SELECT count(*) FROM events").await
}

/// Sends the reloader what the API would, for the enrich transform.
pub async fn request(running: &Running, action: ReloadAction) -> Result<clickstream::plugin::PluginInfo, String> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = clickstream::runtime::reload::ReloadRequest { slot: "enrich".into(), action, reply };
    running.requests.send(request).await.unwrap();
    answer.await.unwrap()
}
