//! Poison isolation against real PostgreSQL and the broker: a record that the
//! decoder, the plugin's contract or PostgreSQL refuses is dead-lettered with
//! its reason, the rest of its batch is stored once, and counts reconcile
//! (consumed = stored + dead-lettered). A shutdown while PostgreSQL refuses
//! every write is prompt and loses nothing.

use clickstream_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clickstream::stages::record::{DeadLetter, Dropped, Event, Provenance, Stage, WindowSpec};
use clickstream::stages::store::Store;
use rdkafka::producer::{FutureProducer, FutureRecord};
use support::records::{batch_of, event, provenance};

const WAIT: Duration = Duration::from_secs(120);
const WINDOWS: WindowSpec = WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 };

/// Random hex: compresses too little to fit a btree row however PostgreSQL
/// tries.
fn incompressible(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..len).map(|_| char::from_digit(rng.gen_range(0..16), 16).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_postgresql_refuses_are_dead_lettered_alone_and_the_rest_of_the_batch_is_stored_once() {
    let db = support::fresh_database("poison_store").await;
    let store = Store::connect(&db, WINDOWS).await.unwrap();
    let pool = support::pool(&db).await;
    let ts = 1_795_000_000_000;
    let mut events: Vec<Event> = (0..40).map(|i| event(i, &format!("good-{i}"), "https://shop.example/", ts + i * 1000)).collect();
    // Three records each refused for what they hold, bypassing the
    // decoder's checks: a NUL in text (PostgreSQL), a time no day partition
    // holds (the store), an id too long for the primary key's btree
    // (PostgreSQL).
    events.insert(5, event(40, "nul", "https://shop.example/\0", ts));
    events.insert(20, event(41, "far", "https://shop.example/", 9_300_000_000_000_000));
    events.insert(33, event(42, &incompressible(8000), "https://shop.example/", ts));
    // A dead letter whose reason (a plugin's refusal text) holds a NUL.
    let dead = vec![DeadLetter {
        provenance: provenance(43),
        key: None,
        payload: b"{\"user_id\":\"\"}".to_vec(),
        stage: Stage::Transform,
        kind: "rejected".into(),
        reason: "user_id: empty\0".into(),
        plugin_version: Some("1.0.0".into()),
    }];
    let batch = batch_of(events, dead);

    let outcome = store.write(&batch).await.expect("a batch with poison records is written, not retried");
    assert_eq!((outcome.stored, outcome.dead_lettered, outcome.duplicates), (40, 4, 0), "{outcome:?}");
    let refused: Vec<(i64, String, String, String, Vec<u8>)> =
        sqlx::query_as("SELECT \"offset\", stage, kind, reason, payload FROM dead_letters WHERE stage = 'store' ORDER BY \"offset\"")
            .fetch_all(&pool)
            .await
            .unwrap();
    let kinds: Vec<(i64, &str)> = refused.iter().map(|r| (r.0, r.2.as_str())).collect();
    assert_eq!(kinds, vec![(40, "invalid_value"), (41, "no_partition"), (42, "limit_exceeded")]);
    for (offset, _, kind, reason, payload) in &refused {
        if kind == "no_partition" {
            assert!(reason.contains("outside the days a partition can be made for"), "{reason}");
        } else {
            assert!(reason.starts_with("PostgreSQL refused the event:") && reason.contains("SQLSTATE"), "{reason}");
        }
        assert_eq!(payload, format!("raw record {offset}").as_bytes(), "the raw bytes are kept for replay");
    }
    let enrich_reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters WHERE \"offset\" = 43").fetch_one(&pool).await.unwrap();
    assert_eq!(enrich_reason, "user_id: empty\u{FFFD}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events ORDER BY event_id").fetch_all(&pool).await.unwrap();
    assert_eq!(stored, (0..40).map(|i| format!("good-{i}")).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>());
    // Offsets cover the whole batch; the newest event time is the good
    // events' (a refused far-future time does not move the watermark).
    let (next, max_ts): (i64, i64) = sqlx::query_as("SELECT next_offset, max_ts_ms FROM ingest_offsets").fetch_one(&pool).await.unwrap();
    assert_eq!((next, max_ts), (44, ts + 39_000));
    assert!(support::count(&pool, "SELECT count(*) FROM window_changes").await > 0, "the stored events' windows are logged");

    // Redelivered whole (a restart before Kafka's commit): nothing twice.
    let again = store.write(&batch).await.unwrap();
    assert_eq!((again.stored, again.dead_lettered, again.redelivered), (0, 0, 44));
    assert_eq!(
        support::count(&pool, "SELECT count(*) FROM events").await + support::count(&pool, "SELECT count(*) FROM dead_letters").await,
        44
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_larger_together_than_one_statement_may_carry_are_all_stored() {
    let db = support::fresh_database("poison_bind").await;
    let store = Store::connect(&db, WINDOWS).await.unwrap();
    // 70 records of 16 MiB, the largest source.max_record_bytes allows:
    // 1.1 GiB, past PostgreSQL's 1 GiB limit on one message.
    let payload = vec![b'x'; 16 << 20];
    let dead: Vec<DeadLetter> = (0..70)
        .map(|i| DeadLetter {
            provenance: provenance(i),
            key: None,
            payload: payload.clone(),
            stage: Stage::Decode,
            kind: "too_large".into(),
            reason: "record is 16777216 bytes".into(),
            plugin_version: None,
        })
        .collect();
    let outcome = store.write(&batch_of(Vec::new(), dead)).await.expect("written in chunks, not refused as a whole");
    assert_eq!(outcome.dead_lettered, 70);
    let pool = support::pool(&db).await;
    let bytes: i64 = sqlx::query_scalar("SELECT sum(length(payload))::bigint FROM dead_letters").fetch_one(&pool).await.unwrap();
    assert_eq!(bytes, 70 << 24);
}

/// A dead letter of stage `stage` and kind `kind` for the record at `offset`.
fn dead_letter(offset: i64, stage: Stage, kind: &str) -> DeadLetter {
    DeadLetter {
        provenance: provenance(offset),
        key: None,
        payload: format!("raw record {offset}").into_bytes(),
        stage,
        kind: kind.into(),
        reason: format!("{kind} at {offset}"),
        plugin_version: None,
    }
}

/// After a rebalance the consumer seeks back to PostgreSQL's offset while
/// the records after it are still in flight, and a writer merges what is
/// queued into one transaction: both copies of a record meet in one write.
/// The first delivered is written (as a write of its own would have, the
/// second then skipped); the later copy counts as redelivered, whatever it
/// became the second time (here one record became a dead letter instead of
/// an event, as after a chain swap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_delivered_twice_into_one_merged_write_is_written_once_and_counted_as_redelivered() {
    let db = support::fresh_database("poison_twice").await;
    let store = Store::connect(&db, WINDOWS).await.unwrap();
    let pool = support::pool(&db).await;
    let ts = 1_795_000_000_000;
    // Each delivery's records, received at `received`; in the later one the
    // chain has changed and refuses offset 2.
    let delivery = |received: chrono::DateTime<chrono::Utc>, refuses_2: bool| {
        let at = |offset: i64| Provenance { received_at: received, ..provenance(offset) };
        let mut events: Vec<Event> = (0..3)
            .map(|i| Event { provenance: at(i), ..event(i, &format!("twice-{i}"), "https://shop.example/", ts + i * 1000) })
            .collect();
        let mut dead = vec![DeadLetter { provenance: at(3), ..dead_letter(3, Stage::Decode, "not_json") }];
        if refuses_2 {
            events.pop();
            dead.push(DeadLetter { provenance: at(2), ..dead_letter(2, Stage::Transform, "rejected") });
        }
        let mut batch = batch_of(events, dead);
        batch.saw(&at(4));
        batch.dropped.push(Dropped { provenance: at(4), transform: "bot-filter".into(), reason: "a bot".into() });
        batch
    };
    let first = chrono::Utc::now();
    let mut merged = delivery(first, false);
    merged.merge(delivery(first + chrono::TimeDelta::seconds(1), true));
    assert_eq!(merged.len(), 10);

    let outcome = store.write(&merged).await.unwrap();
    assert_eq!(
        (outcome.stored, outcome.dead_lettered, outcome.dropped, outcome.redelivered, outcome.duplicates),
        (3, 1, 1, 5, 0),
        "{outcome:?}"
    );
    let dead: Vec<(i64, String)> =
        sqlx::query_as("SELECT \"offset\", kind FROM dead_letters ORDER BY \"offset\"").fetch_all(&pool).await.unwrap();
    assert_eq!(dead, vec![(3, "not_json".to_string())], "one dead letter, and none for the offset stored as an event");
    let drops: i64 = sqlx::query_scalar("SELECT sum(dropped)::bigint FROM dropped_events").fetch_one(&pool).await.unwrap();
    assert_eq!(drops, 1, "the drop counted once");
    assert_eq!(support::count(&pool, "SELECT count(*) FROM events").await, 3);
    let next: i64 = sqlx::query_scalar("SELECT next_offset FROM ingest_offsets").fetch_one(&pool).await.unwrap();
    assert_eq!(next, 5);
    // Reconciles: 5 records consumed once each = 3 stored + 1 dead-lettered + 1 dropped.
    assert_eq!(outcome.stored + outcome.dead_lettered + outcome.dropped + outcome.redelivered, merged.len() as u64);
}

/// The same event (id and time) sent to two partitions is one event: stored
/// once and counted as a duplicate, whether both copies are in one write or
/// the other copy is stored by another writer while this one waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_from_two_partitions_is_stored_once_and_counted_as_a_duplicate_not_dead_lettered() {
    let db = support::fresh_database("poison_two_partitions").await;
    let store = Store::connect(&db, WINDOWS).await.unwrap();
    let pool = support::pool(&db).await;
    let ts = 1_795_000_000_000;
    let on = |partition: i32, offset: i64, id: &str| {
        let mut e = event(offset, id, "https://shop.example/", ts);
        e.provenance.partition = partition;
        e
    };

    // In one write.
    let outcome = store.write(&batch_of(vec![on(0, 0, "both"), on(1, 0, "both")], Vec::new())).await.unwrap();
    assert_eq!((outcome.stored, outcome.duplicates, outcome.dead_lettered), (1, 1, 0), "{outcome:?}");

    // Stored by another writer whose transaction commits while this write's
    // COPY waits on the key: the write's check ran before that commit.
    let mut other = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO events (event_id, user_id, ts_ms, url, ip, user_agent, country, city, browser, os, device,
                             plugin_name, plugin_version, topic, \"partition\", \"offset\", received_at)
         VALUES ('raced', 'u', $1, '/', '', '', 'unknown', 'unknown', 'unknown', 'unknown', 'unknown', 'test', '1', 't', 2, 0, now())",
    )
    .bind(ts)
    .execute(&mut *other)
    .await
    .unwrap();
    let raced = batch_of(vec![on(3, 0, "raced")], Vec::new());
    let writing = tokio::spawn({
        let store = store.clone();
        async move { store.write(&raced).await }
    });
    support::wait_until(Duration::from_secs(30), "the write waits on the other writer's key", || {
        let pool = pool.clone();
        async move {
            support::count(&pool, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'COPY events%'")
                .await
                == 1
        }
    })
    .await;
    other.commit().await.unwrap();
    let outcome = writing.await.unwrap().unwrap();
    assert_eq!((outcome.stored, outcome.duplicates, outcome.dead_lettered), (0, 1, 0), "{outcome:?}");
    assert_eq!(support::count(&pool, "SELECT count(*) FROM dead_letters").await, 0, "a duplicate is not an error");
    assert_eq!(support::count(&pool, "SELECT count(*) FROM events").await, 2);
    let next: i64 = sqlx::query_scalar("SELECT next_offset FROM ingest_offsets WHERE \"partition\" = 3").fetch_one(&pool).await.unwrap();
    assert_eq!(next, 1, "its offset is stored");
}

/// Produces `payloads` to a new topic, keyed by `key`.
async fn produce_raw(topic: &str, records: &[(String, Vec<u8>)]) {
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, topic, 4).await.unwrap();
    let producer: FutureProducer = clickstream::kafka::client_config(&brokers, &Default::default()).create().unwrap();
    for (key, payload) in records {
        producer.send(FutureRecord::to(topic).key(key).payload(payload), Duration::from_secs(5)).await.unwrap();
    }
}

fn click(event_id: &str, user_id: &str, url: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": event_id,
        "user_id": user_id,
        "timestamp": 1_795_000_000_000i64,
        "url": url,
        "ip": "81.2.69.142",
    })
    .to_string()
    .into_bytes()
}

/// The host keeps the identity it decoded and refuses what it cannot store
/// from a plugin; a CHECK constraint a user added to `events` refuses a
/// record at the store. Each lands in `dead_letters` with its stage, and the
/// pipeline goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cannot_change_an_events_identity_and_what_neither_it_nor_postgresql_can_store_is_dead_lettered() {
    let f = support::Fixture::new("poison_e2e").await;
    // The user's own rule, added after the migrations.
    Store::connect(&f.db, WINDOWS).await.unwrap();
    sqlx::query("ALTER TABLE events ADD CONSTRAINT no_forbidden_pages CHECK (url NOT LIKE '%/forbidden%')").execute(&f.pool).await.unwrap();

    let mut records: Vec<(String, Vec<u8>)> =
        (0..200).map(|i| (format!("u{}", i % 9), click(&format!("good-{i}"), &format!("u{}", i % 9), "https://shop.example/"))).collect();
    let poison = [
        ("renamed", "rename", "https://shop.example/"),
        ("long-city", "long-city", "https://shop.example/"),
        ("nul-country", "nul-country", "https://shop.example/"),
        ("forbidden", "u1", "https://shop.example/forbidden/page"),
    ];
    for (i, (id, user, url)) in poison.iter().enumerate() {
        records.insert(30 + 40 * i, (user.to_string(), click(id, user, url)));
    }
    produce_raw(&f.topic, &records).await;

    support::use_plugin(&f.pipeline, "enrich", "misbehave");
    let running = support::InProcess::start(support::load_config(&f.pipeline));
    let stats = running.stats.clone();
    support::wait_until(WAIT, "every record stored or dead-lettered", || support::reconciled(&f.pool, records.len())).await;
    running.stop().await;

    // The identity is the decoded one, whatever the plugin returned.
    let (user, ts): (String, i64) =
        sqlx::query_as("SELECT user_id, ts_ms FROM events WHERE event_id = 'renamed'").fetch_one(&f.pool).await.unwrap();
    assert_eq!((user.as_str(), ts), ("rename", 1_795_000_000_000));
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events WHERE event_id LIKE 'renamed-%' OR user_id = 'someone-else'").await, 0);

    let dead: BTreeMap<String, (String, String, String)> =
        sqlx::query_as::<_, (String, String, String, Vec<u8>)>("SELECT stage, kind, reason, payload FROM dead_letters")
            .fetch_all(&f.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(stage, kind, reason, payload)| {
                let id = serde_json::from_slice::<serde_json::Value>(&payload).unwrap()["event_id"].as_str().unwrap().to_string();
                (id, (stage, kind, reason))
            })
            .collect();
    assert_eq!(dead.keys().map(String::as_str).collect::<Vec<_>>(), vec!["forbidden", "long-city", "nul-country"]);
    let (stage, kind, reason) = &dead["long-city"];
    assert_eq!((stage.as_str(), kind.as_str()), ("transform", "contract"));
    assert!(reason.contains("field `city` is 1048576 bytes"), "{reason}");
    let (stage, kind, reason) = &dead["nul-country"];
    assert_eq!((stage.as_str(), kind.as_str()), ("transform", "contract"));
    assert!(reason.contains("`country` contains a NUL"), "{reason}");
    let (stage, kind, reason) = &dead["forbidden"];
    assert_eq!((stage.as_str(), kind.as_str()), ("store", "constraint"));
    assert!(reason.contains("no_forbidden_pages") && reason.contains("23514"), "{reason}");

    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events").await as usize, records.len() - 3);
    assert_eq!((stats.stored.get() + stats.dead_lettered.get()) as usize, records.len(), "consumed = stored + dead-lettered");
    assert_eq!(stats.dead_letters_of("store", "constraint"), 1);
}

/// While PostgreSQL refuses every write for a reason of its own (here the
/// events table is gone), the batch is retried, not dead-lettered; SIGTERM
/// then stops the host promptly without advancing offsets, and once the
/// table is back a restarted host stores everything exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_postgresql_refuses_every_write_stops_promptly_and_a_restart_loses_nothing() {
    let f = support::Fixture::new("poison_stop").await;
    let first: Vec<(String, Vec<u8>)> =
        (0..200).map(|i| (format!("u{}", i % 9), click(&format!("a-{i}"), &format!("u{}", i % 9), "https://shop.example/"))).collect();
    produce_raw(&f.topic, &first).await;
    let mut host = support::Host::start(&f.pipeline, &f.dir.path().join("first.log"));
    support::wait_until(WAIT, "the first records stored", || support::reconciled(&f.pool, first.len())).await;

    sqlx::query("ALTER TABLE events RENAME TO events_away").execute(&f.pool).await.unwrap();
    let second: Vec<(String, Vec<u8>)> =
        (0..200).map(|i| (format!("u{}", i % 9), click(&format!("b-{i}"), &format!("u{}", i % 9), "https://shop.example/"))).collect();
    produce_raw(&f.topic, &second).await;
    support::wait_until(WAIT, "the host to pause ingestion", || {
        let log = host.log();
        async move { log.matches("cannot store batch; ingestion paused").count() >= 2 }
    })
    .await;
    let signalled = Instant::now();
    host.signal("TERM");
    let code = host.wait();
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "{}", host.log());
    // Before, it retried until killed; a drain gives an unfinished write 5 s.
    assert!(took < Duration::from_secs(15), "stopped after {took:?}");
    assert!(host.log().contains("stopping with a batch PostgreSQL did not take"), "{}", host.log());
    let next: i64 = support::count(&f.pool, "SELECT sum(next_offset)::bigint FROM ingest_offsets").await;
    assert_eq!(next, 200, "offsets were not advanced past what was stored");
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM dead_letters").await, 0, "nothing was dead-lettered for the server's fault");

    sqlx::query("ALTER TABLE events_away RENAME TO events").execute(&f.pool).await.unwrap();
    let mut second_host = support::Host::start(&f.pipeline, &f.dir.path().join("second.log"));
    support::wait_until(WAIT, "everything stored after the restart", || support::reconciled(&f.pool, first.len() + second.len())).await;
    second_host.signal("TERM");
    assert_eq!(second_host.wait(), Some(0));
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&f.pool).await.unwrap();
    assert_eq!(ids.len(), 400, "each event once");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>().len(), 400);
}

/// A record with a key twice — at the top (`user_id`, which a last-wins
/// parser would read as `b` and another as `a`) or in an object the tracker
/// sends along — is dead-lettered at decode with its own kind, naming the
/// key, its bytes kept; a page URL with a user and password in it is stored
/// without them; the rest is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_with_a_duplicate_key_is_dead_lettered_with_its_own_kind() {
    let f = support::Fixture::new("poison_dup").await;
    let mut records: Vec<(String, Vec<u8>)> =
        (0..50).map(|i| (format!("u{}", i % 5), click(&format!("good-{i}"), &format!("u{}", i % 5), "https://shop.example/"))).collect();
    let top = br#"{"event_id":"dup-top","user_id":"a","timestamp":1795000000000,"url":"https://shop.example/","user_id":"b"}"#.to_vec();
    let nested =
        br#"{"event_id":"dup-nested","user_id":"a","timestamp":1795000000000,"url":"https://shop.example/","attributes":{"plan":"free","plan":"pro"}}"#
            .to_vec();
    records.insert(10, ("a".into(), top.clone()));
    records.insert(30, ("a".into(), nested.clone()));
    records.push(("u1".into(), click("userinfo", "u1", "https://user:pa@ss@shop.example/account?tab=1")));
    produce_raw(&f.topic, &records).await;

    let running = support::InProcess::start(support::load_config(&f.pipeline));
    let stats = running.stats.clone();
    support::wait_until(WAIT, "every record stored or dead-lettered", || support::reconciled(&f.pool, records.len())).await;
    running.stop().await;

    let dead: Vec<(String, String, String, Vec<u8>)> =
        sqlx::query_as("SELECT stage, kind, reason, payload FROM dead_letters ORDER BY \"offset\", \"partition\"")
            .fetch_all(&f.pool)
            .await
            .unwrap();
    let mut dead: Vec<_> = dead.into_iter().map(|(stage, kind, reason, payload)| (payload, (stage, kind, reason))).collect();
    dead.sort();
    let mut expected = vec![(top, "`user_id` appears twice"), (nested, "`attributes.plan` appears twice")];
    expected.sort();
    assert_eq!(dead.len(), 2, "{dead:?}");
    for ((payload, (stage, kind, reason)), (sent, named)) in dead.iter().zip(&expected) {
        assert_eq!(payload, sent, "the raw bytes are kept");
        assert_eq!((stage.as_str(), kind.as_str()), ("decode", "duplicate_key"));
        assert!(reason.contains(named), "{reason}");
    }
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events WHERE event_id LIKE 'dup-%'").await, 0);
    assert_eq!(stats.dead_letters_of("decode", "duplicate_key"), 2);

    let url: String = sqlx::query_scalar("SELECT url FROM events WHERE event_id = 'userinfo'").fetch_one(&f.pool).await.unwrap();
    assert_eq!(url, "https://shop.example/account?tab=1");
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events WHERE url LIKE '%pa@ss%' OR url LIKE '%user:%'").await, 0);
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events").await as usize, records.len() - 2);
}

/// A plugin that waits in WASI on one event, or opens a socket on another,
/// fails its batch with a typed error; the host retries the batch event by
/// event, dead-letters those two with their kinds (`deadline`, `denied`),
/// and stores the rest once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_sleeps_or_opens_a_socket_on_one_event_loses_only_that_event() {
    let f = support::Fixture::new("sandbox_e2e").await;
    Store::connect(&f.db, WINDOWS).await.unwrap();
    let mut records: Vec<(String, Vec<u8>)> =
        (0..120).map(|i| (format!("u{}", i % 7), click(&format!("good-{i}"), &format!("u{}", i % 7), "https://shop.example/"))).collect();
    records.insert(20, ("sleep".into(), click("sleeper", "sleep", "https://shop.example/")));
    records.insert(90, ("socket".into(), click("dialer", "socket", "https://shop.example/")));
    produce_raw(&f.topic, &records).await;

    support::use_plugin(&f.pipeline, "enrich", "misbehave");
    let running = support::InProcess::start(support::load_config(&f.pipeline));
    support::wait_until(WAIT, "every record stored or dead-lettered", || support::reconciled(&f.pool, records.len())).await;
    running.stop().await;

    let dead: Vec<(String, String, String)> =
        sqlx::query_as("SELECT convert_from(payload, 'UTF8')::json->>'event_id', stage, kind FROM dead_letters ORDER BY 1")
            .fetch_all(&f.pool)
            .await
            .unwrap();
    assert_eq!(
        dead,
        vec![("dialer".into(), "transform".into(), "denied".into()), ("sleeper".into(), "transform".into(), "deadline".into())]
    );
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events").await, 120);
    assert_eq!(support::count(&f.pool, "SELECT count(DISTINCT event_id) FROM events").await, 120);
}
