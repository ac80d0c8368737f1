//! The transform chain against the real services: transforms run in the
//! order pipeline.toml gives, what they drop or reject reconciles from
//! PostgreSQL alone (consumed = stored + dead-lettered + dropped), and one
//! transform swapped, or the chain itself edited, under load loses and
//! duplicates nothing.

use clickstream_testkit as support;

use crate::reloading::install;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use clickstream::produce::{Generator, GeneratorConfig, Record};
use clickstream::runtime::pipeline::Pipeline;
use clickstream::stages::transform::Chain;
use clickstream::stats::ReloadOutcome;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(180);

/// These tests produce under load and compile plugins while they measure;
/// one at a time keeps them from starving each other on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn generated(events: u64, seed: u64) -> Vec<Record> {
    Generator::new(GeneratorConfig { events, users: 300, urls: 20, seed, ..GeneratorConfig::default() }).collect()
}

/// Why bot-filter (after enrich, default settings) drops a generated
/// record, if it does: its user agent is a crawler enrich knows, or holds
/// one of bot-filter's default markers.
fn bot_reason(record: &Record) -> Option<&'static str> {
    let value: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
    let agent = value["user_agent"].as_str().unwrap_or_default();
    if agent.contains("Googlebot") || agent.contains("bingbot") {
        Some("bot")
    } else if agent.starts_with("curl/") {
        Some("marker:curl/")
    } else {
        None
    }
}

/// Produces `records` in order, at `rate` per second when given, until
/// all are sent or `stop` is set; returns how many were sent.
async fn produce_until(topic: &str, records: &[Record], rate: Option<u64>, stop: &AtomicBool) -> usize {
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, topic, 4).await.unwrap();
    let producer: FutureProducer = clickstream::kafka::client_config(&brokers, &Default::default()).create().unwrap();
    let started = Instant::now();
    for (i, r) in records.iter().enumerate() {
        if stop.load(Ordering::Relaxed) {
            return i;
        }
        producer.send(FutureRecord::to(topic).key(&r.key).payload(&r.payload), Duration::from_secs(5)).await.unwrap();
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
    records.len()
}

async fn produce(topic: &str, records: &[Record], rate: Option<u64>) {
    produce_until(topic, records, rate, &AtomicBool::new(false)).await;
}

/// Starts `pipeline` in process and hands back the live chain.
async fn start(pipeline: &Path) -> (support::InProcess, Arc<ArcSwap<Chain>>) {
    support::init_logs();
    let live: Arc<Mutex<Option<Arc<ArcSwap<Chain>>>>> = Default::default();
    let running = support::InProcess::start_with(support::load_config(pipeline), {
        let live = live.clone();
        move |p: &Pipeline| *live.lock().unwrap() = Some(p.chain.clone())
    });
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(chain) = live.lock().unwrap().clone() {
            return (running, chain);
        }
        assert!(Instant::now() < deadline, "the pipeline did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies a built plugin into `dir`, so a test can replace it there.
fn copy_plugin(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(format!("{name}.wasm"));
    std::fs::copy(support::plugin(name), &to).unwrap();
    to
}

async fn dropped_by_transform(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT transform, sum(dropped)::bigint FROM dropped_events GROUP BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// `(partition, offset, chain)` of every stored event, in offset order per partition.
async fn chains(pool: &PgPool) -> Vec<(i32, i64, String)> {
    sqlx::query_as("SELECT \"partition\", \"offset\", chain FROM events ORDER BY \"partition\", \"offset\"").fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_runs_in_order_and_its_drops_and_rejections_reconcile_from_the_database() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("chain_order").await;
    let mut records = generated(3_000, 51);
    let asked = |id: &str, user: &str| {
        Record {
        key: user.into(),
        payload: serde_json::json!({"event_id": id, "user_id": user, "timestamp": 1_764_000_000_000i64, "url": "https://shop.example/", "ip": "81.2.69.142", "user_agent": "Firefox/121.0"})
            .to_string()
            .into_bytes(),
        bad: None,
        event_id: id.into(),
    }
    };
    for i in 0..5 {
        records.insert(100 + i * 500, asked(&format!("drop-{i}"), "drop"));
    }
    for i in 0..4 {
        records.insert(300 + i * 500, asked(&format!("reject-{i}"), "reject"));
    }
    produce(&f.topic, &records, None).await;
    let bots: BTreeMap<&str, i64> = records.iter().filter_map(bot_reason).fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r).or_default() += 1;
        m
    });
    assert!(bots.get("bot").is_some_and(|n| *n > 0) && bots.get("marker:curl/").is_some_and(|n| *n > 0), "{bots:?}");

    let chain = ["enrich", "bot-filter", "anonymize-ip", "misbehave"];
    let files: Vec<PathBuf> = chain.iter().map(|name| support::plugin(name)).collect();
    support::set_chain(&f.pipeline, &chain.iter().zip(&files).map(|(n, file)| (*n, file.as_path())).collect::<Vec<_>>());
    let (running, live) = start(&f.pipeline).await;
    support::wait_until(WAIT, "every record stored, dead-lettered or dropped", || support::reconciled(&f.pool, records.len())).await;
    running.stop().await;

    // From PostgreSQL alone: consumed = stored + dead-lettered + dropped.
    let stored = support::count(&f.pool, "SELECT count(*) FROM events").await;
    let dead = support::count(&f.pool, "SELECT count(*) FROM dead_letters").await;
    let dropped = dropped_by_transform(&f.pool).await;
    assert_eq!(stored + dead + dropped.values().sum::<i64>(), records.len() as i64, "{stored} stored, {dead} dead, {dropped:?}");
    let bots_total: i64 = bots.values().sum();
    assert_eq!(dropped, BTreeMap::from([("bot-filter".to_string(), bots_total), ("misbehave".to_string(), 5)]));
    let per_partition: i64 =
        support::count(&f.pool, "SELECT count(DISTINCT \"partition\") FROM dropped_events WHERE transform = 'bot-filter'").await;
    assert!(per_partition > 1, "drops are counted per partition");
    let rejected: Vec<(String, String, String, Option<String>)> =
        sqlx::query_as("SELECT stage, kind, reason, plugin_version FROM dead_letters ORDER BY id").fetch_all(&f.pool).await.unwrap();
    assert_eq!(rejected.len(), 4, "{rejected:?}");
    for (stage, kind, reason, version) in &rejected {
        assert_eq!((stage.as_str(), kind.as_str(), reason.as_str()), ("transform", "rejected", "user_id: asked to reject"));
        assert_eq!(version.as_deref(), Some("misbehave@0.0.1-misbehave"));
    }

    // Every stored event went through the four, in order: bot-filter saw
    // enrich's device classes (Googlebot dropped as `bot`), and
    // anonymize-ip cut the address after enrich had located it.
    let expected_chain = format!("enrich@{},bot-filter@1.0.0,anonymize-ip@1.0.0,misbehave@0.0.1-misbehave", support::enrich_version());
    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT chain, ip, country, device FROM events").fetch_all(&f.pool).await.unwrap();
    assert!(rows.iter().all(|r| r.0 == expected_chain), "chains: {:?}", rows.iter().map(|r| &r.0).collect::<BTreeSet<_>>());
    assert!(rows.iter().all(|r| r.3 != "bot"), "bot-filter kept a bot");
    for (_, ip, _, _) in &rows {
        let cut = match ip.parse::<std::net::IpAddr>().unwrap() {
            std::net::IpAddr::V4(v4) => v4.octets()[3] == 0,
            std::net::IpAddr::V6(v6) => v6.segments()[3..].iter().all(|s| *s == 0),
        };
        assert!(cut, "{ip} was stored uncut");
    }
    let located = rows.iter().filter(|r| r.2 != "unknown").count();
    assert!(located * 10 >= rows.len() * 9, "only {located} of {} events located: located after the cut?", rows.len());

    // Each transform's counters tell the same story.
    let live = live.load();
    let counters: Vec<_> = live.iter().map(|slot| slot.counters().clone()).collect();
    assert_eq!(counters[0].records_in.get(), records.len() as u64, "enrich saw every record");
    for i in 1..counters.len() {
        assert_eq!(counters[i].records_in.get(), counters[i - 1].kept.get(), "transform {i} got what transform {} kept", i - 1);
    }
    assert_eq!(counters[3].kept.get() as i64, stored);
    assert_eq!(counters[3].rejected.get(), 4);
    let by_reason = counters[1].dropped_by();
    assert_eq!(by_reason.iter().map(|(r, n)| (r.as_str(), *n as i64)).collect::<BTreeMap<_, _>>(), bots);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_one_transform_of_the_chain_under_load_loses_and_duplicates_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("chain_swap").await;
    let files = [copy_plugin(f.dir.path(), "enrich"), copy_plugin(f.dir.path(), "bot-filter"), copy_plugin(f.dir.path(), "anonymize-ip")];
    support::set_chain(&f.pipeline, &[("enrich", &files[0]), ("bot-filter", &files[1]), ("anonymize-ip", &files[2])]);
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 4).await.unwrap();
    let (running, live) = start(&f.pipeline).await;
    let before: Vec<_> = live.load().iter().cloned().collect();

    let records = generated(10_000, 52);
    let producing = tokio::spawn({
        let (topic, records) = (f.topic.clone(), records.clone());
        async move { produce(&topic, &records, Some(2_500)).await }
    });
    support::wait_until(WAIT, "events flowing", || async { support::count(&f.pool, "SELECT count(*) FROM events").await > 1_000 }).await;
    install(&support::plugin("enrich-canary"), &files[0]);
    support::wait_until(WAIT, "the canary to serve", || async { before[0].current().info.version.ends_with("-canary") }).await;
    producing.await.unwrap();
    let tail = generated(500, 53);
    produce(&f.topic, &tail, None).await;
    let total = records.len() + tail.len();
    support::wait_until(WAIT, "everything stored or dropped", || support::reconciled(&f.pool, total)).await;
    let stats = running.stats.clone();
    running.stop().await;

    // The swap happened in enrich's slot; the other two kept theirs.
    let after = live.load();
    assert!(before.iter().zip(after.iter()).all(|(a, b)| Arc::ptr_eq(a, b)), "the chain's slots were replaced");
    assert_eq!((stats.reloads_of("enrich", ReloadOutcome::Accepted), stats.reloads_of("bot-filter", ReloadOutcome::Accepted)), (1, 0));

    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&f.pool).await.unwrap();
    let expected_drops: i64 = records.iter().chain(&tail).filter(|r| bot_reason(r).is_some()).count() as i64;
    let dropped: i64 = dropped_by_transform(&f.pool).await.values().sum();
    assert_eq!(dropped, expected_drops, "bot-filter dropped every bot once");
    assert_eq!(ids.len() as i64 + dropped, total as i64, "nothing lost or doubled");
    let kept: BTreeSet<String> = records.iter().chain(&tail).filter(|r| bot_reason(r).is_none()).map(|r| r.event_id.clone()).collect();
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), kept);

    // Per partition, in offset order: the old enrich, then the canary, never back.
    let (mut old, mut new) = (0, 0);
    let mut switched: BTreeMap<i32, bool> = BTreeMap::new();
    for (partition, offset, chain) in chains(&f.pool).await {
        let is_new = chain.starts_with(&format!("enrich@{}-canary,", support::enrich_version()));
        assert!(chain.ends_with(",bot-filter@1.0.0,anonymize-ip@1.0.0"), "{chain}");
        let seen_new = switched.entry(partition).or_default();
        assert!(!*seen_new || is_new, "partition {partition} offset {offset} went back to the old enrich");
        *seen_new |= is_new;
        if is_new {
            new += 1
        } else {
            old += 1
        }
    }
    assert!(old > 0 && new > 0, "events on both sides of the swap: {old} old, {new} new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transforms_added_reordered_replaced_and_removed_in_pipeline_toml_apply_under_load_without_loss() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("chain_edit").await;
    let [enrich, bots, anonymize, legacy] = ["enrich", "bot-filter", "anonymize-ip", "legacy-enrich"].map(support::plugin);
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 4).await.unwrap();
    let (running, live) = start(&f.pipeline).await;

    // More than the steps need: production stops once the last chain has stored some.
    let records = generated(200_000, 54);
    let stop = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn({
        let (topic, records, stop) = (f.topic.clone(), records.clone(), stop.clone());
        async move { produce_until(&topic, &records, Some(2_000), &stop).await }
    });
    let v = support::enrich_version();
    // Each step's chain, and the `chain` column it stores.
    let steps: Vec<(Vec<(&str, &Path)>, String)> = vec![
        (vec![("enrich", &enrich), ("bot-filter", &bots)], format!("enrich@{v},bot-filter@1.0.0")),
        (
            vec![("enrich", &enrich), ("bot-filter", &bots), ("anonymize-ip", &anonymize)],
            format!("enrich@{v},bot-filter@1.0.0,anonymize-ip@1.0.0"),
        ),
        (
            vec![("enrich", &enrich), ("anonymize-ip", &anonymize), ("bot-filter", &bots)],
            format!("enrich@{v},anonymize-ip@1.0.0,bot-filter@1.0.0"),
        ),
        // A contract 0.1.0 build takes enrich's place; bot-filter leaves.
        (vec![("enrich", &legacy), ("anonymize-ip", &anonymize)], "enrich@0.1.0-legacy,anonymize-ip@1.0.0".to_string()),
    ];
    let mut order = vec![format!("enrich@{v}")];
    for (n, (chain, stored_as)) in steps.iter().enumerate() {
        support::wait_until(WAIT, &format!("events stored by chain {n}"), || {
            let (pool, last) = (f.pool.clone(), order.last().unwrap().clone());
            async move { support::count(&pool, &format!("SELECT count(*) FROM events WHERE chain = '{last}'")).await > 200 }
        })
        .await;
        support::set_chain(&f.pipeline, chain);
        let stats = running.stats.clone();
        support::wait_until(WAIT, &format!("chain {} to apply", n + 1), || {
            let stats = stats.clone();
            async move { stats.reloads_of("pipeline.toml", ReloadOutcome::Accepted) > n as u64 }
        })
        .await;
        assert_eq!(live.load().len(), chain.len());
        order.push(stored_as.clone());
    }
    support::wait_until(WAIT, "events stored by the last chain", || {
        let (pool, last) = (f.pool.clone(), order.last().unwrap().clone());
        async move { support::count(&pool, &format!("SELECT count(*) FROM events WHERE chain = '{last}'")).await > 200 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let records = &records[..producing.await.unwrap()];
    support::wait_until(WAIT, "everything stored or dropped", || support::reconciled(&f.pool, records.len())).await;
    let stats = running.stats.clone();
    running.stop().await;
    assert_eq!(stats.reloads_of("pipeline.toml", ReloadOutcome::Rejected), 0);

    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&f.pool).await.unwrap();
    let dropped = dropped_by_transform(&f.pool).await;
    assert_eq!(dropped.keys().collect::<Vec<_>>(), vec!["bot-filter"], "only bot-filter drops");
    assert_eq!(ids.len() as i64 + dropped["bot-filter"], records.len() as i64, "nothing lost or doubled");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());

    // Every batch went through one chain, and each partition moved through
    // the chains in the order they were applied.
    let rank: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let mut at: BTreeMap<i32, usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (partition, offset, chain) in chains(&f.pool).await {
        let r = *rank.get(chain.as_str()).unwrap_or_else(|| panic!("{chain} at {partition}/{offset} is none of the applied chains"));
        let current = at.entry(partition).or_default();
        assert!(r >= *current, "partition {partition} offset {offset} went back from chain {} to {chain}", order[*current]);
        *current = r;
        seen.insert(r);
    }
    assert_eq!(seen.len(), order.len(), "every chain stored events");
    // While bot-filter ran, no bot was stored; before and after, they were.
    let bots_stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT chain, count(*) FROM events WHERE device = 'bot' GROUP BY 1").fetch_all(&f.pool).await.unwrap();
    assert!(bots_stored.iter().all(|(chain, _)| !chain.contains("bot-filter")), "{bots_stored:?}");
}

/// The plugin author's loop: several files run as a chain, in the order
/// given, on the author's events, without Kafka; each event's path printed.
#[test]
fn plugin_check_runs_files_as_a_chain_and_prints_each_events_path() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.ndjson");
    let click = |id: &str, user: &str, ip: &str, agent: &str| {
        serde_json::json!({"event_id": id, "user_id": user, "timestamp": 1_764_000_000_000i64, "url": "https://shop.example/", "ip": ip, "user_agent": agent})
            .to_string()
    };
    let lines = [
        click("person", "u1", "81.2.69.142", "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"),
        click("crawler", "u2", "81.2.69.142", "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        click("asked", "reject", "81.2.69.142", "Firefox/121.0"),
    ];
    std::fs::write(&events, lines.join("\n")).unwrap();
    let files = ["enrich", "bot-filter", "anonymize-ip", "misbehave"].map(support::plugin);
    let output = std::process::Command::new(support::host_binary().unwrap())
        .args(["plugin", "check"])
        .args(&files)
        .arg("--events")
        .arg(&events)
        .arg("--geoip")
        .arg(support::city_db())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let v = support::enrich_version();
    let expected = [
        format!("chain: enrich {v} → bot-filter 1.0.0 → anonymize-ip 1.0.0 → misbehave 0.0.1-misbehave"),
        format!("  person  kept     enrich@{v} → bot-filter@1.0.0 → anonymize-ip@1.0.0 → misbehave@0.0.1-misbehave"),
        "      country=GB city=London browser=Firefox os=Linux device=desktop ip=81.2.69.0 attributes={}".to_string(),
        "  crawler  dropped  enrich → bot-filter (by bot-filter: bot)".to_string(),
        "  asked  rejected  enrich → bot-filter → anonymize-ip → misbehave (by misbehave: user_id: asked to reject)".to_string(),
        "3 events: 1 kept, 1 dropped, 1 rejected or failed".to_string(),
    ];
    for line in expected {
        assert!(stdout.lines().any(|l| l == line), "missing `{line}` in:\n{stdout}");
    }
}
