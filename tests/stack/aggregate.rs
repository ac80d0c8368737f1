//! Aggregation and indexing against a real Kafka broker (nisshi), PostgreSQL and the search
//! server: the indexed documents equal a reference computed here, late events
//! update documents in place, and a search outage only delays indexing.

use clickstream_testkit as support;

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use clickstream::config::PipelineConfig;
use clickstream::produce::{self, Generator, GeneratorConfig};
use clickstream::stages::index::{AggregateDoc, DocQuery, Indexer};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(180);
use support::reference::{reference, Expected, WINDOW_MS};

fn assert_docs_match(docs: &[AggregateDoc], expected: &BTreeMap<(i64, String, String), Expected>) {
    let mut seen: HashMap<(i64, String, String), &AggregateDoc> = HashMap::new();
    for d in docs {
        let key = (d.window_start_ms, d.url.clone(), d.country.clone());
        assert!(seen.insert(key.clone(), d).is_none(), "two documents for {key:?}");
    }
    assert_eq!(seen.len(), expected.len(), "one document per group");
    for (key, e) in expected {
        let d = seen.get(key).unwrap_or_else(|| panic!("no document for {key:?}"));
        assert_eq!(
            (d.clicks, d.unique_users, d.time_spent_total_ms, d.time_spent_samples),
            (e.clicks, e.users.len() as u64, e.total_ms, e.samples),
            "metrics of {key:?}"
        );
        let avg = (e.samples > 0).then(|| e.total_ms as f64 / e.samples as f64 / 1000.0);
        // The search server re-serialises doubles; equal to the last bits is not promised.
        match (d.avg_time_spent_s, avg) {
            (Some(got), Some(want)) => assert!((got - want).abs() <= want * 1e-12, "average of {key:?}: {got} vs {want}"),
            (got, want) => assert_eq!(got, want, "average of {key:?}"),
        }
        assert_eq!(d.window_end_ms, key.0 + WINDOW_MS);
    }
}

async fn settled(pool: &PgPool, events: usize) -> bool {
    support::count(pool, "SELECT count(*) FROM events").await as usize >= events
        && support::aggregation_caught_up(pool).await
        && support::count(pool, "SELECT count(*) FROM aggregates WHERE indexed_at IS NULL").await == 0
}

/// A pipeline of the test's own, with the configuration it runs.
struct Running {
    pipeline: support::InProcess,
    config: PipelineConfig,
}

/// A fixture whose pipeline aggregates every 300 ms, with no lateness allowed.
async fn fixture(name: &str) -> support::Fixture {
    support::Fixture::with(name, "[aggregate]\ninterval_ms = 300\nallowed_lateness_secs = 0\n").await
}

/// Starts `f`'s pipeline, on the search server at `search` when given.
async fn start(f: &support::Fixture, search: Option<&str>) -> Running {
    start_with(f, search, None).await
}

/// [`start`], with another aggregate plugin file when given.
async fn start_with(f: &support::Fixture, search: Option<&str>, aggregate: Option<&std::path::Path>) -> Running {
    let mut text = std::fs::read_to_string(&f.pipeline).unwrap();
    if let Some(url) = search {
        text = text.replace(&support::search_url(), url);
    }
    if let Some(plugin) = aggregate {
        text = text.replace(&support::plugin("aggregate").display().to_string(), &plugin.display().to_string());
    }
    std::fs::write(&f.pipeline, text).unwrap();
    let config = support::load_config(&f.pipeline);
    Running { pipeline: support::InProcess::start(config.clone()), config }
}

async fn produce_to(topic: &str, config: GeneratorConfig) -> usize {
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, topic, 4).await.unwrap();
    let summary = produce::to_kafka(Generator::new(config), &brokers, topic, None, &Default::default(), &indicatif::ProgressBar::hidden())
        .await
        .unwrap();
    summary.records as usize
}

fn clickstream_config(events: u64, seed: u64, start_ms: i64) -> GeneratorConfig {
    GeneratorConfig { events, users: 120, urls: 12, seed, start_ms, span_secs: 1_200, ..GeneratorConfig::default() }
}

async fn all_docs(indexer: &Indexer) -> Vec<AggregateDoc> {
    indexer.refresh().await.unwrap();
    indexer.search(&DocQuery { from_ms: None, to_ms: None, url: None, country: None, limit: 100_000 }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexed_aggregates_match_a_reference_and_late_events_update_them_in_place() {
    let f = fixture("agg_reference").await;
    let start_ms = 1_795_000_000_000;
    let first = produce_to(&f.topic, clickstream_config(3_000, 11, start_ms)).await;
    let running = start(&f, None).await;
    let indexer = Indexer::new(&running.config.index).unwrap();
    support::wait_until(WAIT, "aggregates indexed", || settled(&f.pool, first)).await;
    let docs = all_docs(&indexer).await;
    assert!(docs.len() > 100, "a realistic stream gives many groups: {}", docs.len());
    assert_docs_match(&docs, &reference(&f.pool).await);
    assert!(docs.iter().any(|d| d.time_spent_samples > 0) && docs.iter().any(|d| d.unique_users > 1));

    // Late events: the same users, earlier in the same span, arriving now.
    let late = produce_to(&f.topic, clickstream_config(400, 12, start_ms - 60_000)).await;
    support::wait_until(WAIT, "late events aggregated and indexed", || settled(&f.pool, first + late)).await;
    let updated = all_docs(&indexer).await;
    assert_docs_match(&updated, &reference(&f.pool).await);
    let changed = updated.iter().filter(|d| !docs.contains(d)).count();
    assert!(changed > 0, "late events changed some documents");

    running.pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_outage_delays_indexing_and_every_aggregate_arrives_after() {
    let f = fixture("agg_outage").await;
    let search = support::PrivateSearch::start();
    let start_ms = 1_795_100_000_000;
    let first = produce_to(&f.topic, clickstream_config(1_000, 21, start_ms)).await;
    let running = start(&f, Some(&search.url)).await;
    let indexer = Indexer::new(&running.config.index).unwrap();
    support::wait_until(WAIT, "first aggregates indexed", || settled(&f.pool, first)).await;

    search.freeze(true);
    let more = produce_to(&f.topic, clickstream_config(1_500, 22, start_ms + 600_000)).await;
    support::wait_until(WAIT, "ingest and aggregation to go on during the outage", || async {
        support::count(&f.pool, "SELECT count(*) FROM events").await as usize >= first + more
            && support::aggregation_caught_up(&f.pool).await
    })
    .await;
    let waiting = support::count(&f.pool, "SELECT count(*) FROM aggregates WHERE indexed_at IS NULL").await;
    assert!(waiting > 0, "aggregates wait in PostgreSQL while the search server is down");
    search.freeze(false);

    support::wait_until(WAIT, "every aggregate indexed after the outage", || settled(&f.pool, first + more)).await;
    assert_docs_match(&all_docs(&indexer).await, &reference(&f.pool).await);
    running.pipeline.stop().await;
}

/// A late batch holding a user's events on both sides of an event stored
/// earlier changes that stored event's time on page (its next event is now
/// the late one): its window is re-aggregated although no new event falls
/// in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_batch_around_a_stored_event_re_aggregates_that_events_window() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let f = fixture("agg_between").await;
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 1).await.unwrap();
    let producer: FutureProducer = clickstream::kafka::client_config(&support::brokers(), &Default::default()).create().unwrap();
    let t0 = 1_795_200_000_000 - 1_795_200_000_000 % WINDOW_MS;
    let click = |id: &str, user: &str, at_s: i64| {
        format!(
            r#"{{"event_id":"{id}","user_id":"{user}","timestamp":{},"url":"https://shop.example/p{id}","ip":"81.2.69.142","user_agent":"Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"}}"#,
            t0 + at_s * 1000
        )
    };
    let send = |events: Vec<String>| {
        let producer = producer.clone();
        let topic = f.topic.clone();
        async move {
            let sends: Vec<_> =
                events.iter().map(|e| producer.send(FutureRecord::to(&topic).key("u1").payload(e), Duration::from_secs(5))).collect();
            for s in sends {
                s.await.unwrap();
            }
        }
    };
    // Stored first: A in window 0, B in window 1, C in window 2 (C is the
    // user's last page: no time on page yet).
    send(vec![click("a", "u1", 0), click("b", "u1", 70), click("c", "u1", 130)]).await;
    let running = start(&f, None).await;
    let indexer = Indexer::new(&running.config.index).unwrap();
    support::wait_until(WAIT, "the first events aggregated", || settled(&f.pool, 3)).await;
    assert_docs_match(&all_docs(&indexer).await, &reference(&f.pool).await);

    // One late batch: n1 in window 0 and n3 in window 3. C's next page is now
    // n3, 70 s later; window 2 gets no new event.
    send(vec![click("n1", "u1", 10), click("n3", "u1", 200)]).await;
    support::wait_until(WAIT, "the late events aggregated", || settled(&f.pool, 5)).await;
    let docs = all_docs(&indexer).await;
    assert_docs_match(&docs, &reference(&f.pool).await);
    let window_2 = docs.iter().find(|d| d.window_start_ms == t0 + 2 * WINDOW_MS).expect("a document for window 2");
    assert_eq!((window_2.time_spent_total_ms, window_2.time_spent_samples), (70_000, 1), "C's time on page counts");

    running.pipeline.stop().await;
}

/// A window whose aggregation fails (the plugin traps on one of its events,
/// or returns a row outside its run) is set aside with its error while every
/// other window is aggregated and indexed; once a fixed plugin is swapped in,
/// the set-aside windows are retried and everything matches the reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_window_is_set_aside_while_the_others_are_aggregated_and_indexed() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let f = fixture("agg_poison").await;
    let start_ms = 1_795_300_000_000 - 1_795_300_000_000 % WINDOW_MS;
    let good = produce_to(&f.topic, clickstream_config(1_500, 31, start_ms)).await;
    let producer: FutureProducer = clickstream::kafka::client_config(&support::brokers(), &Default::default()).create().unwrap();
    let (trap_window, bad_window) = (start_ms + 5 * WINDOW_MS, start_ms + 9 * WINDOW_MS);
    for (id, at, path) in [("p-trap", trap_window + 1_000, "/trap-aggregate"), ("p-bad", bad_window + 1_000, "/bad-row")] {
        let click = format!(
            r#"{{"event_id":"{id}","user_id":"poison-{id}","timestamp":{at},"url":"https://shop.example{path}","ip":"81.2.69.142"}}"#
        );
        producer.send(FutureRecord::to(&f.topic).key(id).payload(&click), Duration::from_secs(5)).await.unwrap();
    }
    // The plugin file is the test's own copy, so swapping it touches no other test.
    let plugin = f.dir.path().join("aggregate.wasm");
    std::fs::copy(support::plugin("aggregate-poison"), &plugin).unwrap();
    let running = start_with(&f, None, Some(&plugin)).await;
    let stats = running.pipeline.stats.clone();
    let indexer = Indexer::new(&running.config.index).unwrap();

    let total = good + 2;
    support::wait_until(WAIT, "every window but the two poisoned ones aggregated and indexed", || async {
        support::count(&f.pool, "SELECT count(*) FROM events").await >= total as i64
            && support::count(&f.pool, "SELECT count(*) FROM aggregate_windows WHERE version > aggregated_version AND last_error IS NULL")
                .await
                == 0
            && support::count(&f.pool, "SELECT count(*) FROM window_changes").await == 0
            && support::count(&f.pool, "SELECT count(*) FROM aggregate_windows WHERE last_error IS NOT NULL").await == 2
            && support::count(&f.pool, "SELECT count(*) FROM aggregates WHERE indexed_at IS NULL").await == 0
    })
    .await;
    let failing = clickstream::stages::aggregate::failing_windows(&f.pool, 100).await.unwrap();
    assert_eq!(failing.iter().map(|f| f.window_start_ms).collect::<Vec<_>>(), vec![trap_window, bad_window]);
    assert!(failing[0].last_error.contains("trapped") && failing[0].last_error.contains("/trap-aggregate"), "{}", failing[0].last_error);
    assert!(failing[1].last_error.contains("not a window of the run"), "{}", failing[1].last_error);
    assert!(failing.iter().all(|f| f.failures >= 1 && f.retry_at > f.failed_at));
    assert!(stats.window_failures_of("trap") >= 1 && stats.window_failures_of("contract") >= 1);
    // Every other window is indexed and right.
    let expected: BTreeMap<_, _> =
        reference(&f.pool).await.into_iter().filter(|((w, _, _), _)| *w != trap_window && *w != bad_window).collect();
    let docs: Vec<AggregateDoc> =
        all_docs(&indexer).await.into_iter().filter(|d| d.window_start_ms != trap_window && d.window_start_ms != bad_window).collect();
    assert_docs_match(&docs, &expected);

    // The fix: the real plugin swapped in over the file. The set-aside
    // windows come back on their next retry.
    let fixed = f.dir.path().join("fixed.wasm");
    std::fs::copy(support::plugin("aggregate"), &fixed).unwrap();
    std::fs::rename(&fixed, &plugin).unwrap();
    support::wait_until(WAIT, "the set-aside windows aggregated after the fix", || async {
        support::count(&f.pool, "SELECT count(*) FROM aggregate_windows WHERE last_error IS NOT NULL").await == 0
            && settled(&f.pool, total).await
    })
    .await;
    assert_docs_match(&all_docs(&indexer).await, &reference(&f.pool).await);
    running.pipeline.stop().await;
}
