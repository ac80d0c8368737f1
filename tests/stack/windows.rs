//! Aggregation bookkeeping against real PostgreSQL and the search server:
//! the watermark rule (idle partitions, unsubscribed topics, far-future
//! times), versioned documents (an older aggregation never replaces a newer
//! one, whichever indexer sends last), and groups that disappear from a
//! window being deleted from the index.

use clickstream_testkit as support;

use std::sync::Arc;

use chrono::Utc;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::LoadedAggregate;
use clickstream::plugin::Slot;
use clickstream::stages::aggregate::Aggregator;
use clickstream::stages::index::{AggregateDoc, DocQuery, IndexOp, Indexer, Publisher};
use clickstream::stages::record::{Device, Enrichment, Event, Provenance, RawEvent, WriteBatch};
use clickstream::stages::store::Store;
use clickstream::stats::Stats;
use sqlx::{PgPool, Row};

const WINDOW_MS: i64 = 60_000;

struct Setup {
    config: PipelineConfig,
    store: Store,
    pool: PgPool,
    _dir: tempfile::TempDir,
}

/// A fresh database with the migrations applied, and a pipeline file whose
/// index is the test's own.
async fn setup(name: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_database(name).await;
    let file = support::write_pipeline(dir.path(), "clicks", &support::unique(name), &db, extra);
    let config = support::load_config(&file);
    let store = Store::connect(&db, config.windows()).await.unwrap();
    let pool = support::pool(&db).await;
    Setup { config, store, pool, _dir: dir }
}

fn aggregator_for(s: &Setup, topics: &[&str]) -> Aggregator {
    let plugin = LoadedAggregate::load(s.config.aggregate_spec()).unwrap();
    Aggregator::new(
        s.pool.clone(),
        Arc::new(Slot::new(plugin)),
        tokio::sync::watch::channel(s.config.aggregate.clone()).1,
        topics.iter().map(|t| t.to_string()).collect(),
        Arc::new(Stats::default()),
    )
}

/// The index stage of `s`, as a host runs it.
fn publisher_for(s: &Setup) -> Publisher {
    Publisher::new(s.pool.clone(), Indexer::new(&s.config.index).unwrap(), Arc::new(Stats::default()))
}

/// Sets a partition's newest stored event time and when it last stored
/// anything, `idle_secs` ago.
async fn partition(pool: &PgPool, topic: &str, partition: i32, max_ts_ms: i64, idle_secs: i64) {
    sqlx::query(
        "INSERT INTO ingest_offsets (topic, \"partition\", next_offset, max_ts_ms, updated_at)
         VALUES ($1, $2, 1, $3, now() - make_interval(secs => $4))
         ON CONFLICT (topic, \"partition\") DO UPDATE SET max_ts_ms = $3, updated_at = now() - make_interval(secs => $4)",
    )
    .bind(topic)
    .bind(partition)
    .bind(max_ts_ms)
    .bind(idle_secs as f64)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_follows_active_subscribed_partitions_and_clamps_times_from_the_future() {
    // Lateness 60 s, idle after 300 s, skew 300 s (the defaults but lateness).
    let s = setup("wm_rule", "[aggregate]\nallowed_lateness_secs = 60\n").await;
    let aggregator = aggregator_for(&s, &["clicks"]);
    let now = Utc::now().timestamp_millis();
    let t0 = now - 600_000;

    partition(&s.pool, "clicks", 0, t0, 0).await;
    // Behind by an hour, but idle for an hour: it does not hold windows open.
    partition(&s.pool, "clicks", 1, t0 - 3_600_000, 3_600).await;
    // A topic no longer subscribed, far behind and busy: ignored.
    partition(&s.pool, "old-topic", 0, t0 - 7_200_000, 0).await;
    assert_eq!(aggregator.watermark().await.unwrap(), Some(t0 - 60_000), "the active partition of the subscribed topic");

    // The idle partition receives records again: it holds the watermark back.
    partition(&s.pool, "clicks", 1, t0 - 3_600_000, 0).await;
    assert_eq!(aggregator.watermark().await.unwrap(), Some(t0 - 3_600_000 - 60_000));

    // One event ten days ahead (a wrong client clock) on the only active
    // partition counts as now + 300 s at most.
    partition(&s.pool, "clicks", 1, t0, 3_600).await;
    partition(&s.pool, "clicks", 0, now + 10 * 86_400_000, 0).await;
    let clamped = aggregator.watermark().await.unwrap().unwrap();
    let after = Utc::now().timestamp_millis();
    assert!(
        clamped >= now + 300_000 - 60_000 - 5_000 && clamped <= after + 300_000 - 60_000 + 5_000,
        "clamped to now + skew - lateness: {clamped} vs now {now}"
    );

    // Every partition quiet: the stream has stopped, and the newest time
    // of any of them counts, so the last windows become final too.
    partition(&s.pool, "clicks", 0, t0, 3_600).await;
    partition(&s.pool, "clicks", 1, t0 - 120_000, 3_600).await;
    assert_eq!(aggregator.watermark().await.unwrap(), Some(t0 - 60_000));

    // Subscribed to nothing stored yet: no watermark, nothing final.
    assert_eq!(aggregator_for(&s, &["new-topic"]).watermark().await.unwrap(), None);
}

fn event(offset: i64, user: &str, url: &str, ts_ms: i64) -> Event {
    Event {
        raw: RawEvent {
            event_id: format!("e{offset}"),
            user_id: user.into(),
            timestamp_ms: ts_ms,
            url: url.into(),
            ip: String::new(),
            user_agent: String::new(),
            referrer: None,
            session_id: None,
        },
        enrichment: Enrichment {
            country: Some("DE".into()),
            city: Some("Berlin".into()),
            device: Some(Device::Unknown),
            ..Enrichment::default()
        },
        attributes: Vec::new(),
        chain: Arc::from(Vec::new()),
        provenance: Provenance { topic: "clicks".into(), partition: 0, offset, received_at: Utc::now() },
        key: None,
        payload: Vec::new(),
    }
}

async fn store(s: &Setup, events: Vec<Event>) {
    let mut batch = WriteBatch::default();
    for e in &events {
        batch.saw(&e.provenance);
    }
    batch.events = events;
    s.store.write(&batch).await.unwrap();
}

async fn docs(indexer: &Indexer) -> Vec<AggregateDoc> {
    indexer.refresh().await.unwrap();
    indexer.search(&DocQuery { limit: 1000, ..DocQuery::default() }).await.unwrap()
}

/// The pending rows as an indexer reads them, turned into the operations it
/// would send (a slow indexer holding them while another host moves on).
async fn pending_ops(pool: &PgPool) -> Vec<IndexOp> {
    sqlx::query("SELECT window_start_ms, url, country, clicks, aggregated_at FROM aggregates WHERE indexed_at IS NULL AND NOT deleted")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let at: chrono::DateTime<Utc> = r.get(4);
            let w: i64 = r.get(0);
            IndexOp::Put {
                doc: AggregateDoc {
                    window_start_ms: w,
                    window_end_ms: w + WINDOW_MS,
                    url: r.get(1),
                    country: r.get(2),
                    clicks: r.get::<i64, _>(3) as u64,
                    unique_users: 1,
                    time_spent_total_ms: 0,
                    time_spent_samples: 0,
                    avg_time_spent_s: None,
                    is_final: false,
                    plugin_name: "stale".into(),
                    plugin_version: "stale".into(),
                    aggregated_at_ms: at.timestamp_millis(),
                },
                version: Some(at.timestamp_micros()),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_aggregation_sent_last_never_replaces_a_newer_document() {
    let s = setup("wm_versions", "").await;
    let (a, b) = (aggregator_for(&s, &["clicks"]), aggregator_for(&s, &["clicks"]));
    let indexer = Indexer::new(&s.config.index).unwrap();
    indexer.ensure_mapping().await.unwrap();
    let w = 1_795_400_000_000 - 1_795_400_000_000 % WINDOW_MS;
    store(&s, vec![event(0, "u1", "https://shop.example/a", w + 1_000)]).await;
    assert_eq!(a.aggregate_windows(&[w], None).await.unwrap(), Some(1));
    // Host A reads the row to index it, and is slow to send it.
    let stale = pending_ops(&s.pool).await;
    assert_eq!(stale.len(), 1);

    // Meanwhile a second event arrives and host B re-aggregates and indexes.
    store(&s, vec![event(1, "u2", "https://shop.example/a", w + 2_000)]).await;
    assert_eq!(b.aggregate_windows(&[w], None).await.unwrap(), Some(1));
    publisher_for(&s).index_pending().await.unwrap();
    assert_eq!(docs(&indexer).await.iter().map(|d| d.clicks).collect::<Vec<_>>(), vec![2]);

    // A's stale document arrives last: the index keeps B's.
    let outcome = indexer.apply(&stale).await.unwrap();
    assert_eq!((outcome.indexed, outcome.superseded.clone(), outcome.rejected.len()), (0, vec![0], 0));
    let now = docs(&indexer).await;
    assert_eq!(now.iter().map(|d| (d.clicks, d.plugin_name.as_str())).collect::<Vec<_>>(), vec![(2, "aggregate")]);

    // Re-sending the current aggregation (a retry after a timeout) is not a conflict.
    sqlx::query("UPDATE aggregates SET indexed_at = NULL").execute(&s.pool).await.unwrap();
    assert_eq!(publisher_for(&s).index_pending().await.unwrap(), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_gone_from_its_window_is_deleted_from_the_index() {
    let s = setup("wm_orphans", "").await;
    let aggregator = aggregator_for(&s, &["clicks"]);
    let indexer = Indexer::new(&s.config.index).unwrap();
    indexer.ensure_mapping().await.unwrap();
    let w = 1_795_500_000_000 - 1_795_500_000_000 % WINDOW_MS;
    store(&s, vec![event(0, "u1", "https://shop.example/a", w + 1_000), event(1, "u2", "https://shop.example/b", w + 2_000)]).await;
    let outcome = aggregator.backfill(w, w + WINDOW_MS, |_, _| {}).await.unwrap();
    assert_eq!((outcome.windows, outcome.rows), (1, 2));
    assert_eq!(publisher_for(&s).index_pending().await.unwrap(), (2, 0));
    assert_eq!(docs(&indexer).await.len(), 2);

    // The events of /b are removed (a user's cleanup); re-aggregating the
    // window leaves /b's group without events.
    sqlx::query("DELETE FROM events WHERE url LIKE '%/b'").execute(&s.pool).await.unwrap();
    let outcome = aggregator.backfill(w, w + WINDOW_MS, |_, _| {}).await.unwrap();
    assert_eq!(outcome.rows, 1);
    assert_eq!(publisher_for(&s).index_pending().await.unwrap(), (2, 0), "one document rewritten, one deleted");
    let left = docs(&indexer).await;
    assert_eq!(left.iter().map(|d| d.url.as_str()).collect::<Vec<_>>(), vec!["https://shop.example/a"]);
    assert_eq!(support::count(&s.pool, "SELECT count(*) FROM aggregates").await, 1, "the tombstone is gone once deleted from the index");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_longer_than_a_btree_row_aggregates_like_any_other() {
    let s = setup("wm_long_url", "").await;
    let aggregator = aggregator_for(&s, &["clicks"]);
    let w = 1_795_600_000_000 - 1_795_600_000_000 % WINDOW_MS;
    // 8 KiB of path, the most an event's URL may hold; random, so
    // PostgreSQL cannot compress it under the ~2.7 kB a btree row holds.
    let path: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..8_000).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap()).collect()
    };
    let url = format!("https://shop.example/{path}");
    store(&s, vec![event(0, "u1", &url, w + 1_000), event(1, "u1", &url, w + 3_000)]).await;
    assert_eq!(aggregator.aggregate_windows(&[w], None).await.unwrap(), Some(1));
    let (stored_url, clicks): (String, i64) = sqlx::query_as("SELECT url, clicks FROM aggregates").fetch_one(&s.pool).await.unwrap();
    assert_eq!((stored_url.len(), clicks), (url.len(), 2));
}
