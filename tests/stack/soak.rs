//! The chaos soak: two hosts on a steady stream with bad records mixed in,
//! while a driver at random moments SIGKILLs and restarts a host, restarts
//! PostgreSQL, restarts the broker (durable storage), freezes the search
//! server, swaps the enrich plugin, puts a build in canary and edits the
//! transform's settings during its trial, replaces a GeoIP database with a
//! damaged file (refused; the good one put back), and sends poison records. At the end every
//! produced good event must be stored exactly once, every bad record
//! dead-lettered once, and the index must equal a reference computed here
//! from the produced events alone.
//!
//! `CLICKSTREAM_SOAK_SECS` sets how long faults are injected (default 60, the
//! short form CI runs); `scripts/soak` runs a longer one.

use clickstream_testkit as support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clickstream::plugin::geoip::GeoIp;
use clickstream::produce::{BadKind, Generator, GeneratorConfig, Record};
use clickstream::stages::index::{DocQuery, Indexer};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Records per second of the steady stream.
const RATE: u64 = 400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillHost,
    RestartPostgres,
    RestartBroker,
    FreezeSearch,
    SwapPlugin,
    Poison,
    SettingsEditInCanary,
    DamagedGeoIp,
}

const FAULTS: [Fault; 8] = [
    Fault::KillHost,
    Fault::RestartPostgres,
    Fault::RestartBroker,
    Fault::FreezeSearch,
    Fault::SwapPlugin,
    Fault::Poison,
    Fault::SettingsEditInCanary,
    Fault::DamagedGeoIp,
];

/// Replaces `path` with `text` the way editors and deploys do: written
/// beside it, renamed over it.
fn replace_file(path: &Path, text: &[u8]) {
    let tmp = path.with_extension("soak-tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A host process that can be killed and started again, each run logging
/// to a file of its own.
struct Restartable {
    name: &'static str,
    pipeline: PathBuf,
    dir: PathBuf,
    runs: usize,
    host: Option<support::Host>,
}

impl Restartable {
    fn start(name: &'static str, pipeline: &Path, dir: &Path) -> Restartable {
        let mut r = Restartable { name, pipeline: pipeline.to_path_buf(), dir: dir.to_path_buf(), runs: 0, host: None };
        r.start_again();
        r
    }

    fn start_again(&mut self) {
        self.runs += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.runs));
        self.host = Some(support::Host::start(&self.pipeline, &log));
    }

    fn kill(&mut self) {
        if let Some(mut host) = self.host.take() {
            host.signal("KILL");
            host.wait();
        }
    }

    fn stop(&mut self) -> Option<i32> {
        let mut host = self.host.take()?;
        host.signal("TERM");
        host.wait()
    }
}

/// Poison records beyond the generator's own bad kinds, one of each per
/// injection: each must be dead-lettered once.
fn poison(n: u64) -> Vec<(String, Vec<u8>)> {
    let key = format!("poison-{n}");
    let at = 1_764_000_000_000i64;
    [
        format!(r#"{{"event_id":"p{n}-nul","user_id":"{key}","timestamp":{at},"url":"https://shop.example/\u0000"}}"#),
        format!(r#"{{"event_id":"p{n}-far","user_id":"{key}","timestamp":9300000000000000,"url":"https://shop.example/"}}"#),
        format!(r#"{{"event_id":"p{n}-long","user_id":"{}","timestamp":{at},"url":"https://shop.example/"}}"#, "u".repeat(400)),
        format!(r#"{{"event_id":"p{n}-json","user_id":"{key}","timestamp":{at},"url":"#),
    ]
    .into_iter()
    .map(|p| (key.clone(), p.into_bytes()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chaos_soak_loses_and_duplicates_nothing() {
    let soak = Duration::from_secs(std::env::var("CLICKSTREAM_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60));
    let seed: u64 = std::env::var("CLICKSTREAM_SOAK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let pg = support::PrivatePostgres::start();
    let broker = support::PrivateBroker::start();
    let search = support::PrivateSearch::start();
    let topic = support::unique("soak");
    clickstream::kafka::ensure_topic(&broker.brokers(), &topic, 4).await.unwrap();

    // The enrich plugin is the test's own copy, so swapping it touches no other test.
    let plugin = dir.path().join("enrich.wasm");
    std::fs::copy(support::plugin("enrich"), &plugin).unwrap();
    let extra = "[aggregate]\ninterval_ms = 500\n\n[source.kafka]\n\"session.timeout.ms\" = \"6000\"\n";
    let pipeline = support::write_pipeline(dir.path(), &topic, &support::unique("soak"), &pg.url, extra);
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace(&support::brokers(), &broker.brokers())
        .replace(&support::search_url(), &search.url)
        .replace(&support::plugin("enrich").display().to_string(), &plugin.display().to_string());
    // The GeoIP files too are the test's own copies, so damaging one touches no other test.
    let city = support::city_db();
    let own_city = dir.path().join(city.file_name().unwrap());
    std::fs::copy(&city, &own_city).unwrap();
    let text = text.replace(&city.display().to_string(), &own_city.display().to_string());
    std::fs::write(&pipeline, &text).unwrap();
    // Where the faults that edit enrich's table put their keys.
    let enrich_path_line = format!("path = \"{}\"\n", plugin.display());
    assert!(text.contains(&enrich_path_line), "enrich's table in {text}");
    // enrich's settings line as the last edit left it.
    let mut settings = String::new();
    let config = support::load_config(&pipeline);

    let events = RATE * (soak.as_secs() + 10);
    let generator =
        GeneratorConfig { events, users: 400, urls: 60, seed, bad_fraction: 0.03, span_secs: 3_600, ..GeneratorConfig::default() };
    let records: Vec<Record> = Generator::new(generator.clone()).collect();
    let mut hosts = [Restartable::start("a", &pipeline, dir.path()), Restartable::start("b", &pipeline, dir.path())];

    let producing = tokio::spawn({
        let (brokers, topic) = (broker.brokers(), topic.clone());
        let properties = [("enable.idempotence".to_string(), "true".to_string())].into_iter().collect();
        async move {
            clickstream::produce::to_kafka(
                Generator::new(generator),
                &brokers,
                &topic,
                Some(RATE),
                &properties,
                &indicatif::ProgressBar::hidden(),
            )
            .await
        }
    });
    let poison_producer: FutureProducer = clickstream::kafka::client_config(&broker.brokers(), &Default::default()).create().unwrap();
    let mut poisoned: Vec<Vec<u8>> = Vec::new();

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    let mut deck: Vec<Fault> = Vec::new();
    let started = Instant::now();
    // At least one whole deck: every kind of fault, however short the soak.
    while started.elapsed() < soak || faults.len() < FAULTS.len() {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..6_000))).await;
        // Dealt from a shuffled deck: every kind of fault comes once before
        // any comes again, so even CI's short run injects each.
        if deck.is_empty() {
            deck = FAULTS.to_vec();
            deck.shuffle(&mut rng);
        }
        let fault = deck.pop().expect("a full deck");
        eprintln!("soak: {:>5.1} s: {fault:?}", started.elapsed().as_secs_f64());
        match fault {
            Fault::KillHost => {
                let host = &mut hosts[rng.gen_range(0..2)];
                host.kill();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..3_000))).await;
                host.start_again();
            }
            Fault::RestartPostgres => {
                pg.stop();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..5_000))).await;
                pg.start_again();
            }
            Fault::RestartBroker => {
                broker.kill();
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..3_000))).await;
                broker.start_again();
            }
            Fault::FreezeSearch => {
                search.freeze(true);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..8_000))).await;
                search.freeze(false);
            }
            Fault::SwapPlugin => {
                let next = if faults.get(&Fault::SwapPlugin).copied().unwrap_or(0) % 2 == 0 { "enrich-canary" } else { "enrich" };
                let staged = dir.path().join("staged.wasm");
                std::fs::copy(support::plugin(next), &staged).unwrap();
                std::fs::rename(&staged, &plugin).unwrap();
            }
            Fault::SettingsEditInCanary => {
                // The next build goes into canary; during its trial the
                // transform's settings change (a bot marker no clicks have:
                // the metrics the reference checks do not move), which must
                // apply to both builds and lose nothing.
                let n = faults.get(&Fault::SettingsEditInCanary).copied().unwrap_or(0);
                let canary = "rollout = \"canary\"\ncanary_fraction = 0.5\ncanary_batches = 10\nwatch_batches = 0\n";
                let enrich_keys = |keys: &str| text.replace(&enrich_path_line, &format!("{enrich_path_line}{keys}"));
                replace_file(&pipeline, enrich_keys(&format!("{canary}{settings}")).as_bytes());
                tokio::time::sleep(Duration::from_millis(500)).await;
                // The build that is not on disk now, so that there is a new one.
                let canary_build = std::fs::read(support::plugin("enrich-canary")).unwrap();
                let next = if std::fs::read(&plugin).unwrap() == canary_build { "enrich" } else { "enrich-canary" };
                replace_file(&plugin, &std::fs::read(support::plugin(next)).unwrap());
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2_000))).await;
                settings = format!("settings = {{ extra_bot_markers = \"soak-marker-{n}\" }}\n");
                replace_file(&pipeline, enrich_keys(&format!("{canary}{settings}")).as_bytes());
                tokio::time::sleep(Duration::from_millis(rng.gen_range(2_000..4_000))).await;
                // Back to plain swaps for the next builds; the canary ends on its own figures.
                replace_file(&pipeline, enrich_keys(&settings).as_bytes());
            }
            Fault::DamagedGeoIp => {
                // A refresh with a file cut in half: refused, the serving
                // database stays; the good file is put back before a host
                // restart could open the damaged one.
                let good = std::fs::read(&city).unwrap();
                replace_file(&own_city, &good[..good.len() / 2]);
                tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2_000))).await;
                replace_file(&own_city, &good);
            }
            Fault::Poison => {
                let n = faults.get(&Fault::Poison).copied().unwrap_or(0) as u64;
                for (key, payload) in poison(n) {
                    poison_producer.send(FutureRecord::to(&topic).key(&key).payload(&payload), Duration::from_secs(60)).await.unwrap();
                    poisoned.push(payload);
                }
            }
        }
        *faults.entry(fault).or_default() += 1;
    }
    let summary = producing.await.unwrap().expect("the producer rides out broker restarts");
    assert_eq!(summary.records as usize, records.len());
    for host in &mut hosts {
        if host.host.as_mut().is_some_and(|h| h.child.try_wait().ok().flatten().is_some()) {
            host.start_again();
        }
    }

    let good: BTreeSet<&str> = records.iter().filter(|r| r.bad.is_none_or(|k| !k.is_dead_letter())).map(|r| r.event_id.as_str()).collect();
    let mut bad: Vec<&[u8]> = records.iter().filter(|r| r.bad.is_some_and(BadKind::is_dead_letter)).map(|r| r.payload.as_slice()).collect();
    bad.extend(poisoned.iter().map(Vec::as_slice));
    let pool = support::pool(&pg.url).await;
    let reconciled = || async {
        support::count(&pool, "SELECT count(*) FROM events").await as usize >= good.len()
            && support::count(&pool, "SELECT count(*) FROM dead_letters").await as usize >= bad.len()
            && support::aggregation_caught_up(&pool).await
            && support::count(&pool, "SELECT count(*) FROM aggregates WHERE indexed_at IS NULL").await == 0
    };
    support::wait_until(Duration::from_secs(300), "everything stored, aggregated and indexed after the faults", reconciled).await;
    let exits: Vec<Option<i32>> = hosts.iter_mut().map(Restartable::stop).collect();
    assert_eq!(exits, vec![Some(0), Some(0)], "both hosts drain and exit cleanly");

    // Every good event stored exactly once.
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&pool).await.unwrap();
    let stored_set: BTreeSet<&str> = stored.iter().map(String::as_str).collect();
    let lost = good.difference(&stored_set).count();
    let unexpected = stored_set.difference(&good).count();
    // Every bad record dead-lettered exactly once.
    let dead: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM dead_letters").fetch_all(&pool).await.unwrap();
    let mut dead_count: HashMap<&[u8], usize> = HashMap::new();
    for d in &dead {
        *dead_count.entry(d.as_slice()).or_default() += 1;
    }
    let dead_twice = dead_count.values().filter(|n| **n > 1).count();
    let dead_missing = bad.iter().filter(|b| !dead_count.contains_key(*b)).count();

    // The index equals the reference computed from the produced events.
    let geoip = GeoIp::open(&config.geoip.databases).unwrap();
    let produced: Vec<(String, String, i64, String, String)> = records
        .iter()
        .filter(|r| good.contains(r.event_id.as_str()))
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            let ts = match &v["timestamp"] {
                serde_json::Value::String(s) => chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis(),
                other => other.as_i64().unwrap(),
            };
            let ip = v["ip"].as_str().unwrap_or_default();
            let country = geoip.lookup(ip).and_then(|l| l.country).unwrap_or_else(|| "unknown".into());
            (r.event_id.clone(), v["user_id"].as_str().unwrap().to_string(), ts, v["url"].as_str().unwrap().to_string(), country)
        })
        .collect();
    let expected = support::reference::of_events(produced);
    let indexer = Indexer::new(&config.index).unwrap();
    indexer.refresh().await.unwrap();
    let docs = indexer.search(&DocQuery { limit: 1_000_000, ..DocQuery::default() }).await.unwrap();
    let mut wrong = 0;
    let mut seen = BTreeSet::new();
    for d in &docs {
        let key = (d.window_start_ms, d.url.clone(), d.country.clone());
        let right = expected.get(&key).is_some_and(|e| {
            (e.clicks, e.users.len() as u64, e.total_ms, e.samples)
                == (d.clicks, d.unique_users, d.time_spent_total_ms, d.time_spent_samples)
        });
        if !right || !seen.insert(key) {
            wrong += 1;
        }
    }
    let missing_docs = expected.len() - seen.len().min(expected.len());

    eprintln!("soak: {:.0} s of faults (seed {seed}): {faults:?}", soak.as_secs_f64());
    eprintln!(
        "soak: produced {} records ({} good events, {} bad, {} poison); stored {} events, {} dead letters; lost {lost}, unexpected {unexpected}, duplicates {}; dead letters missing {dead_missing}, twice {dead_twice}; documents {} (wrong {wrong}, missing {missing_docs})",
        records.len() + poisoned.len(),
        good.len(),
        bad.len() - poisoned.len(),
        poisoned.len(),
        stored.len(),
        dead.len(),
        stored.len() - stored_set.len(),
        docs.len(),
    );
    assert_eq!((lost, unexpected, stored.len()), (0, 0, good.len()), "every good event stored exactly once");
    assert_eq!((dead_missing, dead_twice, dead.len()), (0, 0, bad.len()), "every bad record dead-lettered exactly once");
    assert_eq!((wrong, missing_docs), (0, 0), "the index equals the reference");
    assert_eq!(faults.len(), FAULTS.len(), "the soak injected every kind of fault: {faults:?}");
}
