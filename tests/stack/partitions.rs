//! Day partitions of `events` and `dead_letters` on real PostgreSQL: days
//! made ahead, a missing day made on demand, days past `store.retention_days`
//! dropped with their rows, and an event whose day is gone dead-lettered
//! with its reason while the rest of its batch is stored.

use clickstream_testkit as support;

use chrono::{NaiveDate, Utc};
use clickstream::stages::record::WindowSpec;
use clickstream::stages::store::config::StoreConfig;
use clickstream::stages::store::partitions::{day_partitions, DAYS_AHEAD};
use clickstream::stages::store::Store;
use sqlx::PgPool;
use support::records::{batch_of, event};

const WINDOWS: WindowSpec = WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 };
const DAY_MS: i64 = 86_400_000;

async fn open(db: &str, retention_days: u32) -> Store {
    Store::open(&StoreConfig { database_url: db.into(), retention_days, ..StoreConfig::default() }, WINDOWS).await.unwrap()
}

async fn days(pool: &PgPool, table: &str) -> Vec<NaiveDate> {
    day_partitions(pool, table).await.unwrap().into_iter().map(|(_, day)| day).collect()
}

/// `days_ago` days before now, at the same time of day.
fn ago(days_ago: i64) -> i64 {
    Utc::now().timestamp_millis() - days_ago * DAY_MS
}

fn day(days_ago: i64) -> NaiveDate {
    Utc::now().date_naive() - chrono::TimeDelta::days(days_ago)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_are_made_ahead_and_days_past_the_retention_are_dropped_with_their_rows() {
    let db = support::fresh_database("partitions_retention").await;
    // Kept forever first: events ten and two days old are stored.
    let keep_all = open(&db, 0).await;
    let pool = keep_all.pool().clone();
    let ahead: Vec<NaiveDate> = (-DAYS_AHEAD..=1).rev().map(day).collect();
    for table in ["events", "dead_letters"] {
        assert_eq!(days(&pool, table).await, ahead, "{table}: yesterday to {DAYS_AHEAD} days ahead");
    }
    let batch =
        batch_of(vec![event(0, "old", "https://shop.example/", ago(10)), event(1, "recent", "https://shop.example/", ago(2))], vec![]);
    let outcome = keep_all.write(&batch).await.unwrap();
    assert_eq!((outcome.stored, outcome.dead_lettered), (2, 0), "{outcome:?}");
    assert!(days(&pool, "events").await.contains(&day(10)), "a missing day is made on demand");
    let dead_letter_at = |days_ago: i64| {
        sqlx::query(
            "INSERT INTO dead_letters (topic, \"partition\", \"offset\", payload, stage, kind, reason, received_at, dead_at)
             VALUES ('t', 0, 99, 'x', 'decode', 'not_json', 'r', now(), now() - make_interval(days => $1))",
        )
        .bind(days_ago as i32)
    };
    dead_letter_at(20).execute(&pool).await.expect_err("no DEFAULT partition takes a row of a day never made");
    dead_letter_at(10).execute(&pool).await.expect("the day made for the events holds dead letters too");

    // Five days kept: the day ten days ago goes, with its rows; two days ago stays.
    let five = open(&db, 5).await;
    let dropped = five.partitions().maintain(&pool).await.unwrap();
    assert!(dropped.is_empty(), "opening the store already ran the upkeep: {dropped:?}");
    let stamp = day(10).format("%Y%m%d").to_string();
    for table in ["events", "dead_letters"] {
        let left = days(&pool, table).await;
        assert!(!left.contains(&day(10)), "{table}_{stamp} dropped: {left:?}");
        assert!(left.iter().all(|d| *d >= day(4)), "{table}: nothing older than the retention is left: {left:?}");
    }
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&pool).await.unwrap();
    assert_eq!(ids, ["recent"]);
    assert_eq!(support::count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_past_the_retention_is_dead_lettered_as_expired_and_the_rest_of_its_batch_is_stored() {
    let db = support::fresh_database("partitions_expired").await;
    let store = open(&db, 5).await;
    let pool = store.pool().clone();
    let batch = batch_of(
        vec![
            event(0, "today", "https://shop.example/", ago(0)),
            event(1, "expired", "https://shop.example/", ago(9)),
            event(2, "kept", "https://shop.example/", ago(3)),
        ],
        vec![],
    );
    let outcome = store.write(&batch).await.expect("an expired event does not fail the batch");
    assert_eq!((outcome.stored, outcome.dead_lettered, outcome.redelivered), (2, 1, 0), "{outcome:?}");
    let (offset, stage, kind, reason, payload): (i64, String, String, String, Vec<u8>) =
        sqlx::query_as("SELECT \"offset\", stage, kind, reason, payload FROM dead_letters").fetch_one(&pool).await.unwrap();
    assert_eq!((offset, stage.as_str(), kind.as_str()), (1, "store", "expired"));
    assert!(reason.contains(&day(9).to_string()) && reason.contains("store.retention_days"), "{reason}");
    assert_eq!(payload, b"raw record 1", "the raw bytes are kept for replay");
    assert!(days(&pool, "events").await.contains(&day(3)), "a kept day with no partition yet is made on demand");
    assert!(!days(&pool, "events").await.contains(&day(9)), "no partition is made for an expired day");
    let next: i64 = support::count(&pool, "SELECT next_offset FROM ingest_offsets").await;
    assert_eq!(next, 3, "the offsets cover the dead-lettered event too");

    // Redelivered: nothing twice.
    let again = store.write(&batch).await.unwrap();
    assert_eq!((again.stored, again.dead_lettered, again.redelivered), (0, 0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_before_day_partitions_keeps_its_events_and_dead_letters() {
    let db = support::fresh_database("partitions_upgrade").await;
    let pool = support::pool(&db).await;
    // Migrations 0001–0005 only: the tables as the previous release left them.
    let first_five: Vec<_> = clickstream::stages::store::migrations::MIGRATOR.iter().filter(|m| m.version < 6).cloned().collect();
    let before = sqlx::migrate::Migrator { migrations: std::borrow::Cow::Owned(first_five), ..sqlx::migrate::Migrator::DEFAULT };
    before.run(&pool).await.unwrap();
    for (id, ts) in [("a", ago(30)), ("b", ago(1)), ("c", ago(1) + 1)] {
        sqlx::query(
            "INSERT INTO events (event_id, user_id, ts_ms, url, ip, user_agent, country, city, browser, os, device,
                                 plugin_name, plugin_version, topic, \"partition\", \"offset\", received_at)
             VALUES ($1, 'u', $2, '/', 'ip', 'ua', 'DE', 'Berlin', 'b', 'o', 'desktop', 'enrich', '0.2.0', 't', 0, 0, now())",
        )
        .bind(id)
        .bind(ts)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query(
        "INSERT INTO dead_letters (topic, \"partition\", \"offset\", payload, stage, kind, reason, received_at)
         VALUES ('t', 0, 7, 'x', 'decode', 'not_json', 'r', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let old_id: i64 = sqlx::query_scalar("SELECT id FROM dead_letters").fetch_one(&pool).await.unwrap();

    let store = open(&db, 0).await;
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events ORDER BY 1").fetch_all(&pool).await.unwrap();
    assert_eq!(ids, ["a", "b", "c"]);
    let event_days = days(&pool, "events").await;
    assert!(event_days.contains(&day(30)) && event_days.contains(&day(1)), "{event_days:?}");
    assert_eq!(support::count(&pool, "SELECT count(*) FROM dead_letters WHERE \"offset\" = 7").await, 1);
    let batch = batch_of(
        vec![],
        vec![clickstream::stages::record::DeadLetter {
            provenance: support::records::provenance(8),
            key: None,
            payload: b"y".to_vec(),
            stage: clickstream::stages::record::Stage::Decode,
            kind: "not_json".into(),
            reason: "r".into(),
            plugin_version: None,
        }],
    );
    store.write(&batch).await.unwrap();
    let new_id: i64 = sqlx::query_scalar("SELECT id FROM dead_letters WHERE \"offset\" = 8").fetch_one(&pool).await.unwrap();
    assert!(new_id > old_id, "dead letter ids go on from where they were: {old_id} then {new_id}");
}

/// A dead letter whose event's day is past the retention, replayed the way
/// `clickstream dead-letters --replay` does: storing it would recreate the
/// dropped day, which the next upkeep drops again with the event, while the
/// dead letter would say "replayed". It stays pending, and the command says
/// why and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_a_dead_letter_of_an_expired_day_leaves_it_pending_and_says_why() {
    let db = support::fresh_database("partitions_replay_expired").await;
    let store = open(&db, 30).await;
    let pool = store.pool().clone();
    let old = format!(r#"{{"event_id":"sixty-days","user_id":"u","timestamp":{},"url":"https://shop.example/"}}"#, ago(60));
    let recent = format!(r#"{{"event_id":"two-days","user_id":"u","timestamp":{},"url":"https://shop.example/"}}"#, ago(2));
    for (offset, payload) in [(7, &old), (8, &recent)] {
        sqlx::query(
            "INSERT INTO dead_letters (topic, \"partition\", \"offset\", payload, stage, kind, reason, received_at)
             VALUES ('t', 0, $1, $2, 'transform', 'rejected', 'refused by a transform since fixed', now())",
        )
        .bind(offset)
        .bind(payload.as_bytes())
        .execute(&pool)
        .await
        .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let pipeline = dir.path().join("pipeline.toml");
    let text = format!(
        "[source]\ntopics = [\"t\"]\n\n[store]\ndatabase_url = \"{db}\"\nretention_days = 30\n\n[geoip]\ndatabases = []\n\n\
         [[transforms]]\nname = \"enrich\"\npath = \"{}\"\n\n[plugins.aggregate]\npath = \"{}\"\n",
        support::plugin("enrich").display(),
        support::plugin("aggregate").display()
    );
    std::fs::write(&pipeline, text).unwrap();

    let mut command = std::process::Command::new(support::host_binary().unwrap());
    for name in support::OVERRIDES {
        command.env_remove(name);
    }
    let output = command.arg("dead-letters").arg(&pipeline).arg("--replay").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("replay: 1 stored"), "{stdout}");
    assert!(stdout.contains("1 not replayed") && stdout.contains("store.retention_days = 30") && stdout.contains("raise"), "{stdout}");

    let (kind, reason, replayed): (String, String, Option<chrono::DateTime<Utc>>) =
        sqlx::query_as("SELECT kind, reason, replayed_at FROM dead_letters WHERE \"offset\" = 7").fetch_one(&pool).await.unwrap();
    assert_eq!((kind.as_str(), replayed), ("expired", None), "left pending");
    assert!(
        reason.contains(&day(60).to_string()) && reason.contains("Not replayed") && reason.contains("store.retention_days"),
        "{reason}"
    );
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&pool).await.unwrap();
    assert_eq!(ids, ["two-days"], "the kept day's event is replayed");
    assert!(!days(&pool, "events").await.contains(&day(60)), "no partition is made for the expired day");
}

/// A client sending one event per past day — 500 days, within a
/// `source.max_past_days` that allows them — beside a steady stream of
/// current events, written the way a writer writes (what a write defers goes
/// into the next write with what queued meanwhile). Each write makes at most
/// `MAX_NEW_DAYS_PER_WRITE` days and stores every steady event queued for it,
/// so the steady stream is stored all along, long before the burst's last
/// day is made; every burst event is stored once, in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_old_days_is_made_a_few_days_per_write_while_a_steady_stream_keeps_being_stored() {
    use clickstream::stages::store::partitions::MAX_NEW_DAYS_PER_WRITE;
    const BURST_DAYS: i64 = 500;
    let db = support::fresh_database("partitions_burst").await;
    let store = open(&db, 0).await;
    let pool = store.pool().clone();
    let on_burst = |offset: i64| {
        let mut e = event(offset, &format!("burst-{offset}"), "https://old.example/", ago(2 + offset));
        e.provenance.partition = 1;
        e
    };
    let mut pending = batch_of((0..BURST_DAYS).map(on_burst).collect(), vec![]);
    let mut writes = 0;
    loop {
        // The steady stream: one current event queued for each write.
        let steady = event(writes, &format!("steady-{writes}"), "https://shop.example/", ago(0));
        pending.merge(batch_of(vec![steady], vec![]));
        let before = days(&pool, "events").await.len();
        let outcome = store.write(&pending).await.unwrap();
        let made = days(&pool, "events").await.len() - before;
        assert!(made <= MAX_NEW_DAYS_PER_WRITE, "write {writes} made {made} days");
        let steady_stored = support::count(&pool, &format!("SELECT count(*) FROM events WHERE event_id = 'steady-{writes}'")).await;
        assert_eq!(steady_stored, 1, "write {writes} stored the steady event queued for it: {outcome:?}");
        assert_eq!(outcome.dead_lettered, 0, "{outcome:?}");
        writes += 1;
        let rest = pending.split_off_deferred(&outcome.deferred);
        if rest.is_empty() {
            break;
        }
        pending = rest;
    }
    let least = BURST_DAYS as usize / MAX_NEW_DAYS_PER_WRITE;
    assert!(writes as usize >= least, "the burst's days were made over {writes} writes, at least {least}");
    let burst: Vec<(String, i64)> = sqlx::query_as("SELECT event_id, \"offset\" FROM events WHERE \"partition\" = 1 ORDER BY \"offset\"")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(burst, (0..BURST_DAYS).map(|o| (format!("burst-{o}"), o)).collect::<Vec<_>>(), "every burst event once");
    let offsets: Vec<(i32, i64)> =
        sqlx::query_as("SELECT \"partition\", next_offset FROM ingest_offsets ORDER BY 1").fetch_all(&pool).await.unwrap();
    assert_eq!(offsets, [(0, writes), (1, BURST_DAYS)]);
}
