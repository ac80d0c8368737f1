//! Ingest against a real Kafka broker (nisshi, from `scripts/services`) and
//! PostgreSQL: every record ends up stored once or dead-lettered with its
//! reason, across kills, restarts and rebalances, and a consumer resuming
//! inside a record batch or after a broker restart misses nothing.

use clickstream_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use clickstream::produce::{self, BadKind, Generator, GeneratorConfig, Record};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(120);

fn generator(events: u64, bad: f64, seed: u64) -> GeneratorConfig {
    GeneratorConfig { events, users: 300, urls: 40, seed, bad_fraction: bad, ..GeneratorConfig::default() }
}

/// Produces the generator's records to a new 4-partition topic and returns
/// them, in the load generator's multi-record batches (`linger.ms` 20, up to
/// 10,000 records, lz4).
async fn produce_to(topic: &str, config: GeneratorConfig, rate: Option<u64>) -> Vec<Record> {
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, topic, 4)
        .await
        .unwrap_or_else(|e| panic!("broker at {brokers} refused ({e}): run `scripts/services up`"));
    let records: Vec<Record> = Generator::new(config.clone()).collect();
    produce::to_kafka(Generator::new(config), &brokers, topic, rate, &Default::default(), &indicatif::ProgressBar::hidden()).await.unwrap();
    records
}

fn expected_event_ids(records: &[Record]) -> BTreeSet<String> {
    records.iter().filter(|r| r.bad.is_none_or(|k| !k.is_dead_letter())).map(|r| r.event_id.clone()).collect()
}

async fn stored_ids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT event_id FROM events ORDER BY event_id").fetch_all(pool).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_good_event_is_stored_once_enriched_and_every_bad_record_is_dead_lettered_with_its_reason() {
    let f = support::Fixture::new("ingest_all").await;
    let records = produce_to(&f.topic, generator(4000, 0.08, 1), None).await;
    // One click from an address the city database places in London.
    let london = r#"{"event_id":"london-1","user_id":"u-london","timestamp":"2026-11-28T12:00:00Z","url":"https://shop.example/","ip":"81.2.69.142","user_agent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"}"#;
    {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = clickstream::kafka::client_config(&support::brokers(), &Default::default()).create().unwrap();
        producer.send(FutureRecord::to(&f.topic).key("u-london").payload(london), Duration::from_secs(5)).await.unwrap();
    }
    let total = records.len() + 1;

    let config = support::load_config(&f.pipeline);
    let running = support::InProcess::start(config);
    let stats = running.stats.clone();
    support::wait_until(WAIT, "every record stored or dead-lettered", || support::reconciled(&f.pool, total)).await;
    running.stop().await;

    // Exactly the good events (bad IPs included: only their location is unknown), once each.
    let mut expected = expected_event_ids(&records);
    expected.insert("london-1".into());
    let stored = stored_ids(&f.pool).await;
    assert_eq!(stored.len(), expected.len(), "stored count");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);

    // Enrichment: the London click, and bad IPs as unknown locations.
    let (country, city, browser, os, device, version): (String, String, String, String, String, String) =
        sqlx::query_as("SELECT country, city, browser, os, device, plugin_version FROM events WHERE event_id = 'london-1'")
            .fetch_one(&f.pool)
            .await
            .unwrap();
    assert_eq!((country.as_str(), city.as_str()), ("GB", "London"));
    assert_eq!((browser.as_str(), os.as_str(), device.as_str()), ("Safari", "iPhone", "mobile"));
    assert_eq!(version, support::enrich_version());
    let bad_ips: Vec<&Record> = records.iter().filter(|r| r.bad == Some(BadKind::BadIp)).collect();
    assert!(!bad_ips.is_empty());
    for r in bad_ips {
        let country: String =
            sqlx::query_scalar("SELECT country FROM events WHERE event_id = $1").bind(&r.event_id).fetch_one(&f.pool).await.unwrap();
        assert_eq!(country, "unknown");
    }
    let located = support::count(&f.pool, "SELECT count(*) FROM events WHERE country <> 'unknown'").await;
    assert!(located as f64 > 0.8 * expected.len() as f64, "only {located} of {} events located", expected.len());

    // Each bad kind lands with its stage, reason and raw bytes.
    let rows: Vec<(i32, i64, Vec<u8>, String, String, String)> =
        sqlx::query_as("SELECT \"partition\", \"offset\", payload, stage, kind, reason FROM dead_letters")
            .fetch_all(&f.pool)
            .await
            .unwrap();
    let mut by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for (_, _, payload, stage, kind, reason) in &rows {
        *by_kind.entry(kind.clone()).or_default() += 1;
        assert!(!reason.is_empty());
        let original = records.iter().find(|r| &r.payload == payload).expect("dead letter holds the raw bytes");
        let expected_kind = match original.bad {
            Some(BadKind::MalformedJson) => ("decode", "not_json"),
            Some(BadKind::MissingField) => ("decode", "missing_field"),
            Some(BadKind::WrongType) => ("decode", "wrong_type"),
            Some(BadKind::Huge) => ("decode", "too_large"),
            Some(BadKind::Refused) => ("transform", "rejected"),
            Some(BadKind::NulCharacter) => ("decode", "nul_character"),
            Some(BadKind::FarTimestamp) => ("decode", "timestamp_out_of_range"),
            Some(BadKind::LongId) => ("decode", "field_too_long"),
            other => panic!("{other:?} was dead-lettered: {reason}"),
        };
        assert_eq!((stage.as_str(), kind.as_str()), expected_kind, "{reason}");
    }
    let expected_dead = records.iter().filter(|r| r.bad.is_some_and(BadKind::is_dead_letter)).count();
    assert_eq!(rows.len(), expected_dead, "dead letters by kind: {by_kind:?}");
    assert!(by_kind.len() == 8, "every dead-letter kind is exercised: {by_kind:?}");

    // Counts reconcile, in the database and in the counters.
    assert_eq!(stats.consumed.get() as usize, total);
    assert_eq!((stats.stored.get() + stats.dead_lettered.get()) as usize, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_loses_and_duplicates_nothing() {
    let f = support::Fixture::new("ingest_kill").await;
    // Normal multi-record batches: the restarted host resumes from the offsets
    // stored in PostgreSQL, almost always inside a batch.
    let records = produce_to(&f.topic, generator(40_000, 0.02, 2), None).await;
    // No static membership (`group.instance.id`): nisshi evicts the killed
    // member once its session times out (the source's 10 s) while the restarted
    // host waits to join, and hands it every partition, as Apache Kafka does.
    // tansu 0.6 never did, so this test used static membership on tansu.

    let mut first = support::Host::start(&f.pipeline, &f.dir.path().join("first.log"));
    support::wait_until(WAIT, "the first host to store some events", || async {
        support::count(&f.pool, "SELECT count(*) FROM events").await > 2_000
    })
    .await;
    first.signal("KILL");
    first.wait();
    let at_kill =
        support::count(&f.pool, "SELECT count(*) FROM events").await + support::count(&f.pool, "SELECT count(*) FROM dead_letters").await;
    assert!((at_kill as usize) < records.len(), "the kill came after everything was stored; nothing was proven");

    let mut second = support::Host::start(&f.pipeline, &f.dir.path().join("second.log"));
    support::wait_until(WAIT, "the restarted host to finish", || support::reconciled(&f.pool, records.len())).await;
    second.signal("TERM");
    assert_eq!(second.wait(), Some(0), "graceful shutdown exits 0:\n{}", second.log());

    let stored = stored_ids(&f.pool).await;
    let expected = expected_event_ids(&records);
    assert_eq!(stored.len(), expected.len(), "every event stored exactly once");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);
    let dead = support::count(&f.pool, "SELECT count(*) FROM dead_letters").await as usize;
    assert_eq!(dead, records.iter().filter(|r| r.bad.is_some_and(BadKind::is_dead_letter)).count());
    let next: i64 = support::count(&f.pool, "SELECT sum(next_offset)::bigint FROM ingest_offsets").await;
    assert_eq!(next as usize, records.len(), "stored offsets cover every record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_in_one_group_split_the_partitions_and_store_each_event_once() {
    let f = support::Fixture::new("ingest_pair").await;
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 4).await.unwrap();

    let mut a = support::Host::start(&f.pipeline, &f.dir.path().join("a.log"));
    let mut b = support::Host::start(&f.pipeline, &f.dir.path().join("b.log"));
    support::wait_until(WAIT, "both hosts to own partitions", || async {
        let owns = |log: String| {
            log.lines()
                .rev()
                .find(|l| l.contains("partitions assigned") || l.contains("partitions revoked"))
                .is_some_and(|l| l.contains("assigned"))
        };
        owns(a.log()) && owns(b.log())
    })
    .await;
    let records = produce_to(&f.topic, generator(20_000, 0.0, 3), Some(8_000)).await;
    support::wait_until(WAIT, "the pair to store everything", || support::reconciled(&f.pool, records.len())).await;
    // Both hosts aggregate too; each window is done by one at a time, and the
    // rows must equal the reference whichever host wrote them.
    support::wait_until(WAIT, "the pair to aggregate every window", || async {
        support::aggregation_caught_up(&f.pool).await && support::count(&f.pool, "SELECT count(*) FROM aggregate_windows").await > 0
    })
    .await;
    let rows: Vec<(i64, String, String, i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT window_start_ms, url, country, clicks, unique_users, time_spent_total_ms, time_spent_samples FROM aggregates",
    )
    .fetch_all(&f.pool)
    .await
    .unwrap();
    let expected = support::reference::reference(&f.pool).await;
    assert_eq!(rows.len(), expected.len(), "one row per group");
    for (w, url, country, clicks, users, total, samples) in rows {
        let e = &expected[&(w, url, country)];
        assert_eq!((clicks as u64, users as u64, total as u64, samples as u64), (e.clicks, e.users.len() as u64, e.total_ms, e.samples));
    }
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.wait(), Some(0));
    assert_eq!(b.wait(), Some(0));

    let stored = stored_ids(&f.pool).await;
    assert_eq!(stored.len(), records.len(), "each event stored once");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected_event_ids(&records));
    let consumed = |log: String| -> u64 {
        let line = log.lines().find(|l| l.contains("pipeline stopped")).unwrap_or_else(|| panic!("no summary in:\n{log}"));
        line.split_whitespace().find_map(|w| w.strip_prefix("consumed=")).and_then(|n| n.parse().ok()).unwrap()
    };
    let (ca, cb) = (consumed(a.log()), consumed(b.log()));
    assert!(ca > 0 && cb > 0, "both hosts did work: {ca} and {cb}");
}

/// Writers store partitions side by side on their own connections; a host
/// joining and another leaving mid-stream moves partitions between writers
/// of different hosts with batches still in flight, and the offsets rows
/// keep every record stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_partition_writers_store_each_record_once_while_hosts_join_and_leave_mid_stream() {
    let f = support::Fixture::new("ingest_writers").await;
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 8).await.unwrap();
    // Three writers over eight partitions: uneven, so writers hold several.
    let text = std::fs::read_to_string(&f.pipeline).unwrap().replacen("[store]\n", "[store]\nwriters = 3\n", 1);
    std::fs::write(&f.pipeline, text).unwrap();

    let mut a = support::Host::start(&f.pipeline, &f.dir.path().join("a.log"));
    let producing = tokio::spawn({
        let topic = f.topic.clone();
        async move { produce_to(&topic, generator(40_000, 0.02, 11), Some(5_000)).await }
    });
    let stored = |n: i64| {
        let pool = f.pool.clone();
        move || {
            let pool = pool.clone();
            async move { support::count(&pool, "SELECT count(*) FROM events").await >= n }
        }
    };
    support::wait_until(WAIT, "a to store a quarter", stored(10_000)).await;
    let mut b = support::Host::start(&f.pipeline, &f.dir.path().join("b.log"));
    support::wait_until(WAIT, "b to store after joining", || async { b.log().contains("partitions assigned") }).await;
    support::wait_until(WAIT, "the pair to store three quarters", stored(30_000)).await;
    a.signal("TERM");
    assert_eq!(a.wait(), Some(0), "a leaves cleanly:\n{}", support::tail(&f.dir.path().join("a.log"), 30));
    let records = producing.await.unwrap();
    support::wait_until(WAIT, "b to store the rest", || support::reconciled(&f.pool, records.len())).await;
    b.signal("TERM");
    assert_eq!(b.wait(), Some(0));

    let stored = stored_ids(&f.pool).await;
    assert_eq!(stored.len(), stored.iter().collect::<BTreeSet<_>>().len(), "no event stored twice");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected_event_ids(&records));
    let dead = support::count(&f.pool, "SELECT count(*) FROM dead_letters").await as usize;
    assert_eq!(dead, records.iter().filter(|r| r.bad.is_some_and(BadKind::is_dead_letter)).count(), "each bad record dead-lettered once");
    let next: i64 = support::count(&f.pool, "SELECT sum(next_offset)::bigint FROM ingest_offsets").await;
    assert_eq!(next as usize, records.len(), "stored offsets cover every record");
    let partitions = support::count(&f.pool, "SELECT count(*) FROM ingest_offsets").await;
    assert_eq!(partitions, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_stream_pauses_ingest_and_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pg = support::PrivatePostgres::start();
    let topic = support::unique("ingest_pg_restart");
    clickstream::kafka::ensure_topic(&support::brokers(), &topic, 4).await.unwrap();
    let pipeline = support::write_pipeline(dir.path(), &topic, &support::unique("g"), &pg.url, "");
    // Logs as a shipper would read them: the pause must be findable by field.
    let mut host = support::Host::try_start(&pipeline, &dir.path().join("host.log"), &[("CLICKSTREAM_LOG_FORMAT", "json")]).unwrap();
    let producing = tokio::spawn({
        let topic = topic.clone();
        async move { produce_to(&topic, generator(30_000, 0.02, 4), Some(4_000)).await }
    });
    let pool = PgPoolOptions::new().max_connections(1).connect_lazy(&pg.url).unwrap();
    support::wait_until(WAIT, "some events stored", || async { support::count(&pool, "SELECT count(*) FROM events").await > 3_000 }).await;
    pg.stop();
    // Longer than the pool's acquire timeout, so writes fail and are retried.
    tokio::time::sleep(Duration::from_secs(8)).await;
    pg.start_again();
    let records = producing.await.unwrap();
    support::wait_until(WAIT, "everything stored after the restart", || support::reconciled(&pool, records.len())).await;
    host.signal("TERM");
    assert_eq!(host.wait(), Some(0), "{}", host.log());

    let stored = stored_ids(&pool).await;
    let expected = expected_event_ids(&records);
    assert_eq!(stored.len(), expected.len(), "each event stored once");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);
    let log = host.log();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))).collect();
    assert!(lines.iter().all(|l| l["timestamp"].is_string() && l["level"].is_string() && l["target"].is_string()));
    let paused = lines.iter().find(|l| l["message"] == "cannot store batch; ingestion paused").expect("the pause was logged");
    assert_eq!(paused["level"], "WARN");
    assert!(paused["retry_in"].is_string() && paused["records"].is_u64(), "{paused}");
    let log = host.log();
    assert!(log.contains("ingestion paused"), "the outage was noticed and logged:\n{log}");
    assert!(log.contains("ingestion resumed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_traps_the_plugin_is_dead_lettered_alone_and_replays_after_the_fix() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let f = support::Fixture::new("ingest_trap").await;
    let records = produce_to(&f.topic, generator(300, 0.0, 5), None).await;
    let producer: FutureProducer = clickstream::kafka::client_config(&support::brokers(), &Default::default()).create().unwrap();
    for i in 0..3 {
        let poison = format!(
            r#"{{"event_id":"poison-{i}","user_id":"trap","timestamp":1764000000000,"url":"https://shop.example/","ip":"81.2.69.142","user_agent":""}}"#
        );
        producer.send(FutureRecord::to(&f.topic).key("trap").payload(&poison), Duration::from_secs(5)).await.unwrap();
    }
    let total = records.len() + 3;

    // Run with the buggy plugin: it traps on user "trap".
    let fixed = std::fs::read_to_string(&f.pipeline).unwrap();
    support::use_plugin(&f.pipeline, "enrich", "misbehave");
    let running = support::InProcess::start(support::load_config(&f.pipeline));
    let stats = running.stats.clone();
    support::wait_until(WAIT, "every record stored or dead-lettered", || support::reconciled(&f.pool, total)).await;
    running.stop().await;

    assert!(stats.transform_batch_failures.get() >= 1, "the trap failed a whole batch first");
    let trapped: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT kind, reason, plugin_version FROM dead_letters ORDER BY id").fetch_all(&f.pool).await.unwrap();
    assert_eq!(trapped.len(), 3, "only the poison records are dead-lettered: {trapped:?}");
    for (kind, reason, version) in &trapped {
        assert_eq!(kind, "trap");
        assert!(reason.contains("asked to trap"), "{reason}");
        assert_eq!(version.as_deref(), Some("enrich@0.0.1-misbehave"));
    }
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events").await as usize, records.len(), "the rest of each batch was stored");

    // Fix: the real plugin accepts those records; replay stores them once.
    std::fs::write(&f.pipeline, fixed).unwrap();
    let config = support::load_config(&f.pipeline);
    let chain = clickstream::stages::transform::load_chain(config.transform_specs(), &Arc::new(clickstream::plugin::geoip::GeoIp::empty()))
        .unwrap();
    let mut runner = clickstream::stages::transform::ChainRunner::fixed(chain);
    let outcome = clickstream::runtime::dead_letters::replay(
        &f.pool,
        config.windows(),
        &mut runner,
        &config.decode_limits(),
        config.store.retention_days,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!((outcome.stored, outcome.still_failing), (3, 0));
    let versions: Vec<String> =
        sqlx::query_scalar("SELECT plugin_version FROM events WHERE event_id LIKE 'poison-%'").fetch_all(&f.pool).await.unwrap();
    assert_eq!(versions, vec![support::enrich_version(); 3]);
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL").await, 0);
    let again = clickstream::runtime::dead_letters::replay(
        &f.pool,
        config.windows(),
        &mut runner,
        &config.decode_limits(),
        config.store.retention_days,
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(again, Default::default(), "a second replay finds nothing pending");
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events").await as usize, total);
}

/// The same event sent twice — in one batch, in a later batch, and under
/// another key (another partition) — is stored once; the repeats are counted
/// as duplicates, not dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_id_is_stored_once_and_counted_as_a_duplicate() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let f = support::Fixture::new("ingest_dup").await;
    let first = produce_to(&f.topic, generator(300, 0.0, 11), None).await;
    let producer: FutureProducer = clickstream::kafka::client_config(&support::brokers(), &Default::default()).create().unwrap();
    // Repeats within the first wave: the same records again, right behind.
    for r in first.iter().take(10) {
        producer.send(FutureRecord::to(&f.topic).key(&r.key).payload(&r.payload), Duration::from_secs(5)).await.unwrap();
    }
    let running = support::InProcess::start(support::load_config(&f.pipeline));
    let stats = running.stats.clone();
    support::wait_until(WAIT, "the first wave stored", || {
        let stats = stats.clone();
        async move { stats.stored.get() + stats.duplicates.get() >= 310 }
    })
    .await;
    // Repeats of events stored long before, under other keys, so other partitions.
    for (i, r) in first.iter().skip(100).take(15).enumerate() {
        let key = format!("elsewhere-{i}");
        producer.send(FutureRecord::to(&f.topic).key(&key).payload(&r.payload), Duration::from_secs(5)).await.unwrap();
    }
    support::wait_until(WAIT, "the repeats consumed", || {
        let stats = stats.clone();
        async move { stats.consumed.get() >= 325 && stats.stored.get() + stats.duplicates.get() >= 325 }
    })
    .await;
    running.stop().await;

    let stored = stored_ids(&f.pool).await;
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected_event_ids(&first), "each event once");
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events").await, 300);
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM dead_letters").await, 0, "a repeat is not an error");
    assert_eq!((stats.stored.get(), stats.duplicates.get()), (300, 25));
}

/// One record per past day, 500 days (allowed by `source.max_past_days`),
/// beside current records, through the running pipeline: the writers make
/// the days a few per transaction, handing what a transaction deferred to
/// the next, and every record is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_old_days_through_the_writers_is_stored_once_over_many_transactions() {
    use clickstream::stages::store::partitions::MAX_NEW_DAYS_PER_WRITE;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const BURST_DAYS: i64 = 500;
    let f = support::Fixture::new("ingest_burst").await;
    let now = chrono::Utc::now().timestamp_millis();
    let current = produce_to(&f.topic, GeneratorConfig { start_ms: now - 600_000, span_secs: 600, ..generator(200, 0.0, 17) }, None).await;
    let producer: FutureProducer = clickstream::kafka::client_config(&support::brokers(), &Default::default()).create().unwrap();
    for i in 0..BURST_DAYS {
        let ts = now - (2 + i) * 86_400_000;
        let payload = format!(r#"{{"event_id":"burst-{i}","user_id":"replayer","timestamp":{ts},"url":"https://old.example/"}}"#);
        producer.send(FutureRecord::to(&f.topic).partition(1).key("replayer").payload(&payload), Duration::from_secs(5)).await.unwrap();
    }
    let total = current.len() + BURST_DAYS as usize;

    support::set_source_key(&f.pipeline, "max_past_days", "600");
    let running = support::InProcess::start(support::load_config(&f.pipeline));
    support::wait_until(WAIT, "every record stored", || support::reconciled(&f.pool, total)).await;
    running.stop().await;

    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM dead_letters").await, 0);
    let burst = support::count(&f.pool, "SELECT count(DISTINCT event_id) FROM events WHERE event_id LIKE 'burst-%'").await;
    assert_eq!((burst, support::count(&f.pool, "SELECT count(*) FROM events").await), (BURST_DAYS, total as i64), "each once");
    let transactions = support::count(&f.pool, "SELECT count(DISTINCT stored_at) FROM events WHERE event_id LIKE 'burst-%'").await;
    let least = BURST_DAYS / MAX_NEW_DAYS_PER_WRITE as i64;
    assert!(transactions >= least, "the burst's days were made over {transactions} transactions, at least {least}");
}

/// Counts the Produce requests a producer sent, from librdkafka's statistics.
/// With one partition, one request carries one record batch.
#[derive(Default)]
struct ProduceRequests(Arc<std::sync::atomic::AtomicI64>);

impl rdkafka::ClientContext for ProduceRequests {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let sent = statistics.brokers.values().filter_map(|broker| broker.req.get("Produce")).sum();
        self.0.store(sent, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Produces `batches` record batches of `per_batch` records to partition 0
/// of `topic`, payloads `record-OFFSET` (for a topic that starts empty), and
/// checks from the producer's statistics that each wave went out as one batch:
/// the batch boundaries are then exactly the multiples of `per_batch`.
async fn produce_in_batches(brokers: &str, topic: &str, first: i64, batches: i64, per_batch: i64) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut config = clickstream::kafka::client_config(brokers, &Default::default());
    // A wave is queued in microseconds, well within linger.ms, and is then
    // sent as one batch; it is delivered before the next wave is queued.
    config.set("linger.ms", "500").set("batch.num.messages", "1000").set("statistics.interval.ms", "100");
    let counter = ProduceRequests::default();
    let sent = counter.0.clone();
    let producer: FutureProducer<ProduceRequests> = config.create_with_context(counter).unwrap();
    for wave in 0..batches {
        let start = first + wave * per_batch;
        let deliveries: Vec<_> = (start..start + per_batch)
            .map(|offset| {
                let payload = format!("record-{offset}");
                producer.send_result(FutureRecord::<(), _>::to(topic).partition(0).payload(&payload)).map_err(|(e, _)| e).unwrap()
            })
            .collect();
        for delivery in deliveries {
            let delivered = delivery.await.unwrap().unwrap_or_else(|(e, _)| panic!("produce to {brokers}: {e}"));
            assert_eq!(delivered.partition, 0);
            assert!((start..start + per_batch).contains(&delivered.offset), "offset {}: the topic was not empty", delivered.offset);
        }
    }
    let requests = || sent.load(std::sync::atomic::Ordering::Relaxed);
    support::wait_until(Duration::from_secs(10), "the producer's statistics", || async { requests() >= batches }).await;
    assert_eq!(requests(), batches, "the producer split a wave into several batches; the offsets below prove nothing");
}

/// Reads partition 0 of `topic` from `offset` (assigned, no consumer group
/// rebalance) until `count` records arrived, or none for 20 s; returns their
/// offsets and payloads.
async fn read_from(brokers: &str, topic: &str, offset: i64, count: usize) -> Vec<(i64, String)> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let mut config = clickstream::kafka::client_config(brokers, &Default::default());
    config.set("group.id", support::unique("reader")).set("enable.auto.commit", "false");
    let consumer: StreamConsumer = config.create().unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, Offset::Offset(offset)).unwrap();
    consumer.assign(&assignment).unwrap();
    let mut records = Vec::with_capacity(count);
    while records.len() < count {
        // Fewer than `count`: the caller's assertions say which are missing.
        let Ok(message) = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await else { break };
        let message = message.unwrap();
        let payload = String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned();
        records.push((message.offset(), payload));
    }
    records
}

/// Asserts that `records`, read from `offset`, are exactly `offset..end`, in
/// order, each with its own payload.
fn assert_every_record_from(records: &[(i64, String)], offset: i64, end: i64) {
    let first = records.first().map(|(o, _)| *o);
    assert_eq!(first, Some(offset), "the first record received from offset {offset} is {first:?}: records before it were skipped");
    let expected: Vec<(i64, String)> = (offset..end).map(|o| (o, format!("record-{o}"))).collect();
    assert_eq!(records, expected, "every record from offset {offset}, in order, once");
}

/// A consumer resumes mid-partition after a restart or a rebalance, from an
/// offset that usually lies inside a producer's record batch. The broker must
/// answer that fetch with the batch containing the offset (the client drops
/// the records before it). tansu 0.6 answered with the next batch: assigned
/// at offset 37 of batches of 50, the first record received was 50.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_resuming_inside_a_record_batch_gets_every_record() {
    const PER_BATCH: i64 = 50;
    const BATCHES: i64 = 3;
    let brokers = support::brokers();
    let topic = support::unique("ingest_mid_batch");
    clickstream::kafka::ensure_topic(&brokers, &topic, 1)
        .await
        .unwrap_or_else(|e| panic!("broker at {brokers} refused ({e}): run `scripts/services up`"));
    produce_in_batches(&brokers, &topic, 0, BATCHES, PER_BATCH).await;
    // Inside the first batch; the last record of the middle one; a batch
    // boundary (which tansu 0.6 got right); the first record of all.
    for offset in [37, 99, 50, 0] {
        let records = read_from(&brokers, &topic, offset, (BATCHES * PER_BATCH - offset) as usize).await;
        assert_every_record_from(&records, offset, BATCHES * PER_BATCH);
    }
}

/// The chaos tests' broker: records produced before a crash (SIGKILL) or a
/// graceful stop are all there after the restart, the broker keeps accepting
/// writes at the next offset, and a mid-batch resume still works on its
/// storage engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_private_broker_keeps_its_records_across_a_restart() {
    const PER_BATCH: i64 = 50;
    let broker = support::PrivateBroker::start();
    let topic = support::unique("ingest_durable");
    clickstream::kafka::ensure_topic(&broker.brokers(), &topic, 1).await.unwrap();
    produce_in_batches(&broker.brokers(), &topic, 0, 2, PER_BATCH).await;

    broker.kill();
    broker.start_again();
    assert_every_record_from(&read_from(&broker.brokers(), &topic, 0, 100).await, 0, 100);
    produce_in_batches(&broker.brokers(), &topic, 100, 1, PER_BATCH).await;

    broker.stop();
    broker.start_again();
    assert_every_record_from(&read_from(&broker.brokers(), &topic, 0, 150).await, 0, 150);
    assert_every_record_from(&read_from(&broker.brokers(), &topic, 137, 13).await, 137, 150);
}
