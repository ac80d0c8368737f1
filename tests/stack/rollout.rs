//! Rollouts against the real services: a new build of a transform in
//! shadow beside the serving one, or serving a share of the batches as a
//! canary that is promoted or rolled back by its figures. No event is lost
//! or doubled, whatever the candidate does.

use clickstream_testkit as support;

use crate::reloading;

use std::collections::BTreeMap;

use clickstream::runtime::reload::ReloadAction;
use clickstream::stats::ReloadOutcome;
use reloading::{install, produce_to, request, start, stored, Running, ONE_AT_A_TIME, WAIT};
use sqlx::PgPool;

/// Sets enrich's rollout keys in the running pipeline's pipeline.toml and
/// waits until they apply.
async fn set_rollout(running: &Running, keys: &str) {
    let text = std::fs::read_to_string(&running.pipeline).unwrap();
    let before = running.stats.reloads_of("pipeline.toml", ReloadOutcome::Accepted);
    let path = "enrich.wasm\"\n";
    assert!(text.contains(path), "enrich's path line in {text}");
    std::fs::write(&running.pipeline, text.replace(path, &format!("{path}{keys}\n"))).unwrap();
    let stats = running.stats.clone();
    support::wait_until(WAIT, "pipeline.toml applied", || {
        let stats = stats.clone();
        async move { stats.reloads_of("pipeline.toml", ReloadOutcome::Accepted) > before }
    })
    .await;
}

/// The reload history's record of `outcome` for enrich, once there is one.
async fn history_of(running: &Running, outcome: &'static str) -> String {
    let stats = running.stats.clone();
    support::wait_until(WAIT, outcome, || {
        let stats = stats.clone();
        async move { stats.reload_history().iter().any(|r| r.what == "enrich" && r.outcome == outcome) }
    })
    .await;
    running.stats.reload_history().into_iter().find(|r| r.what == "enrich" && r.outcome == outcome).unwrap().detail
}

/// A running pipeline whose enrich has the rollout `keys`, with the build
/// that rejects a fifth of the events in canary (or the `candidate` build,
/// with [`in_canary_of`]).
struct InCanary {
    /// Holds the plugin file; dropped with the test.
    dir: tempfile::TempDir,
    topic: String,
    pool: PgPool,
    running: Running,
    /// The version serving before the canary.
    serving: clickstream::plugin::PluginInfo,
}

async fn in_canary(name: &str, keys: &str) -> InCanary {
    in_canary_of(name, keys, "enrich-canary-reject").await
}

async fn in_canary_of(name: &str, keys: &str, candidate: &str) -> InCanary {
    let f = support::Fixture::new(name).await;
    let running = start(&f).await;
    let serving = running.slot.current().info.clone();
    set_rollout(&running, keys).await;
    install(&support::plugin(candidate), &f.dir.path().join("enrich.wasm"));
    let enrich = running.slot.clone();
    support::wait_until(WAIT, "the candidate in canary", || {
        let enrich = enrich.clone();
        async move { enrich.canary().is_some() }
    })
    .await;
    let support::Fixture { dir, topic, pool, .. } = f;
    InCanary { dir, topic, pool, running, serving }
}

/// Event ids stored, each once, and how many each version of enrich stored.
async fn stored_once(pool: &PgPool, expected: &std::collections::BTreeSet<String>) -> BTreeMap<String, i64> {
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(pool).await.unwrap();
    assert_eq!(ids.len(), expected.len(), "each event stored once");
    assert_eq!(ids.into_iter().collect::<std::collections::BTreeSet<_>>(), *expected, "every event stored");
    let dead: i64 = support::count(pool, "SELECT count(*) FROM dead_letters").await;
    assert_eq!(dead, 0, "nothing dead-lettered");
    sqlx::query_as("SELECT plugin_version, count(*) FROM events GROUP BY 1").fetch_all(pool).await.unwrap().into_iter().collect()
}

/// Waits until every event of `expected` is stored or dead-lettered.
async fn all_stored_or_dead_lettered(pool: &PgPool, expected: &std::collections::BTreeSet<String>) {
    support::wait_until(WAIT, "every event stored or dead-lettered", || async {
        stored(pool).await + support::count(pool, "SELECT count(*) FROM dead_letters").await >= expected.len() as i64
    })
    .await;
}

/// Every event of `expected` stored or dead-lettered, each once.
async fn stored_or_dead_lettered_once(pool: &PgPool, expected: &std::collections::BTreeSet<String>) {
    let mut ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(pool).await.unwrap();
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM dead_letters").fetch_all(pool).await.unwrap();
    ids.extend(payloads.iter().map(|p| serde_json::from_slice::<serde_json::Value>(p).unwrap()["event_id"].as_str().unwrap().to_string()));
    assert_eq!(ids.len(), expected.len(), "each event stored or dead-lettered once");
    assert_eq!(ids.into_iter().collect::<std::collections::BTreeSet<_>>(), *expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_rejecting_a_fifth_of_the_events_is_rolled_back_and_every_event_is_stored_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let InCanary { dir: _dir, topic, pool, running, serving } =
        in_canary("canary_bad", "rollout = \"canary\"\ncanary_fraction = 0.5\ncanary_batches = 5").await;
    // At least 16 batches of at most 500: the canary gets at least 8.
    let expected = produce_to(&topic, 8_000, 61, Some(2_000)).await;
    let rolled_back = history_of(&running, "rolled_back").await;
    assert!(
        rolled_back.starts_with("reject rate ") && rolled_back.contains("% against 0.0% for the serving version"),
        "rolled back for its rejections, with the figures: {rolled_back}"
    );
    assert!(rolled_back.contains("serving version"), "{rolled_back}");
    assert!(running.slot.canary().is_none());
    assert_eq!(running.slot.current().info, serving, "the serving version serves on");
    support::wait_until(WAIT, "events stored", || async { stored(&pool).await as usize >= expected.len() }).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();

    let by_version = stored_once(&pool, &expected).await;
    let canary = by_version.iter().find(|(v, _)| v.ends_with("-canary-reject")).map(|(_, n)| *n).unwrap_or(0);
    assert!(canary >= 100, "the canary served its share of batches before the verdict: {by_version:?}");
    assert!(by_version[&serving.version] as usize + canary as usize == expected.len(), "{by_version:?}");
    let history = running.stats.reload_history();
    assert!(!history.iter().any(|r| r.what == "enrich" && r.outcome == "promoted"), "{history:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_promoted_by_hand_that_rejects_is_rolled_back_by_the_watch_to_the_previous_version() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let InCanary { dir: _dir, topic, pool, running, serving } =
        in_canary("canary_watch", "rollout = \"canary\"\ncanary_fraction = 0.5\ncanary_batches = 5\nwatch_batches = 50").await;
    // Some baseline first, then promoted before its verdict.
    let mut expected = produce_to(&topic, 2_000, 64, None).await;
    support::wait_until(WAIT, "events stored", || async { stored(&pool).await >= 1_000 }).await;
    let promoted = request(&running, ReloadAction::Promote).await.unwrap();
    assert!(promoted.version.ends_with("-canary-reject"), "{promoted:?}");
    expected.extend(produce_to(&topic, 6_000, 65, Some(2_000)).await);
    let rolled_back = history_of(&running, "rolled_back").await;
    assert!(
        rolled_back.starts_with("in the watch after its promotion: reject rate ") && rolled_back.contains("% against 0.0%"),
        "{rolled_back}"
    );
    assert_eq!(running.slot.current().info, serving, "the previous version serves again");
    all_stored_or_dead_lettered(&pool, &expected).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();

    // Once promoted, a build's rejections are its verdict: dead-lettered (to
    // be replayed), not handed to the old version.
    let dead: Vec<String> = sqlx::query_scalar("SELECT reason FROM dead_letters").fetch_all(&pool).await.unwrap();
    assert!(!dead.is_empty() && dead.iter().all(|r| r.contains("canary-reject")), "{dead:?}");
    stored_or_dead_lettered_once(&pool, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_started_from_shadow_through_the_api_is_promoted_and_watched() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("canary_good").await;
    let running = start(&f).await;
    let serving = running.slot.current().info.clone();
    set_rollout(&running, "rollout = \"shadow\"\ncanary_fraction = 0.5\ncanary_batches = 5\nwatch_batches = 5").await;
    let refused = request(&running, ReloadAction::Canary).await.unwrap_err();
    assert!(refused.contains("holds the build serving now"), "no new build yet: {refused}");

    install(&support::plugin("enrich-canary"), &f.dir.path().join("enrich.wasm"));
    let enrich = running.slot.clone();
    support::wait_until(WAIT, "the candidate in shadow", || {
        let enrich = enrich.clone();
        async move { enrich.shadow().is_some() }
    })
    .await;
    let candidate = request(&running, ReloadAction::Canary).await.unwrap();
    assert!(candidate.version.ends_with("-canary"), "{candidate:?}");
    assert!(running.slot.shadow().is_none() && running.slot.canary().is_some(), "the canary replaces the shadow");

    let mut expected = produce_to(&f.topic, 8_000, 62, Some(2_000)).await;
    let promoted = history_of(&running, "promoted").await;
    assert!(promoted.starts_with("its figures stayed within bounds"), "{promoted}");
    assert_eq!(running.slot.current().info.version, candidate.version);
    // The watch needs batches after the promotion.
    expected.extend(produce_to(&f.topic, 6_000, 63, Some(2_000)).await);
    let watched = history_of(&running, "watch_ended").await;
    assert!(watched.starts_with("watch passed"), "{watched}");
    assert!(running.slot.canary().is_none());
    support::wait_until(WAIT, "events stored", || async { stored(&f.pool).await as usize >= expected.len() }).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();

    let by_version = stored_once(&f.pool, &expected).await;
    assert!(by_version.get(&serving.version).is_some_and(|n| *n >= 500), "the serving version kept its share: {by_version:?}");
    assert!(by_version.get(&candidate.version).is_some_and(|n| *n >= 2_000), "the canary's share, then all: {by_version:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_in_shadow_reports_exactly_its_field_differences_stores_nothing_and_serves_once_promoted() {
    use clickstream::runtime::reload::ReloadAction;
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("reload_shadow").await;
    let running = start(&f).await;
    let serving = running.slot.current().info.clone();

    // The next build of enrich goes into shadow.
    set_rollout(&running, "rollout = \"shadow\"").await;
    assert_eq!(request(&running, ReloadAction::Promote).await.unwrap_err(), "transform `enrich` has no candidate in shadow or in canary");
    install(&support::plugin("enrich-canary"), &f.dir.path().join("enrich.wasm"));
    let enrich = running.slot.clone();
    support::wait_until(WAIT, "the candidate in shadow", || {
        let enrich = enrich.clone();
        async move { enrich.shadow().is_some() }
    })
    .await;
    assert_eq!(running.slot.current().info, serving, "a candidate in shadow does not serve");

    let expected = produce_to(&f.topic, 2_000, 51, None).await;
    support::wait_until(WAIT, "events stored", || async { stored(&f.pool).await as usize >= expected.len() }).await;
    // The candidate runs on its own thread: its last batches may still be under way.
    let shadow = running.slot.shadow().unwrap();
    support::wait_until(WAIT, "the candidate compared a thousand events", || async { shadow.report().events >= 1_000 }).await;
    let report = shadow.report();
    assert!(report.events >= 1_000 && report.errors == 0, "{report:?}");
    // The canary build appends +canary to every browser name, and changes nothing else.
    assert_eq!(report.by_field, BTreeMap::from([("browser".to_string(), report.events)]), "{report:?}");
    assert_eq!(report.differing_events, report.events);
    assert_eq!(report.sample.len(), clickstream::plugin::shadow::SAMPLE);
    for d in &report.sample {
        assert_eq!((d.field.as_str(), d.candidate.clone()), ("browser", format!("{}+canary", d.serving)), "{d:?}");
    }
    let versions: Vec<String> = sqlx::query_scalar("SELECT DISTINCT plugin_version FROM events").fetch_all(&f.pool).await.unwrap();
    assert_eq!(versions, vec![serving.version.clone()], "nothing the candidate output was stored");

    let promoted = request(&running, ReloadAction::Promote).await.unwrap();
    assert!(promoted.version.ends_with("-canary"));
    assert!(running.slot.shadow().is_none() && running.slot.current().info.version == promoted.version);
    let after = produce_to(&f.topic, 500, 52, None).await;
    support::wait_until(WAIT, "events after the promotion", || async { stored(&f.pool).await as usize >= expected.len() + after.len() })
        .await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&f.pool).await.unwrap();
    assert_eq!(ids.len(), expected.len() + after.len(), "each event stored once");
    let canary: i64 = support::count(&f.pool, "SELECT count(*) FROM events WHERE browser LIKE '%+canary'").await;
    assert_eq!(canary as usize, after.len(), "the promoted build serves every event after the promotion, none before");
    let history = running.stats.reload_history();
    let promoted = history.iter().find(|r| r.outcome == "promoted").expect("the promotion is in the reload history");
    assert!(promoted.detail.contains("browser"), "{promoted:?}");
}

/// The settings line a test adds to enrich's table: Firefox counts as a bot.
const FIREFOX_IS_A_BOT: &str = "settings = { extra_bot_markers = \"firefox\" }";

/// Whether a build was loaded with the settings of [`FIREFOX_IS_A_BOT`].
fn firefox_is_a_bot(build: &clickstream::plugin::transform::LoadedTransform) -> bool {
    build.spec().settings == vec![("extra_bot_markers".to_string(), "firefox".to_string())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settings_edit_during_a_canary_applies_to_both_builds_a_reload_meanwhile_is_refused_and_promotion_keeps_the_edit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let InCanary { dir: _dir, topic, pool, running, serving } =
        in_canary_of("canary_settings", "rollout = \"canary\"\ncanary_fraction = 0.5\ncanary_batches = 100000", "enrich-canary").await;
    let candidate = running.slot.canary().unwrap().info();

    // A reload during the trial would swap the untested build in for every batch.
    let refused = request(&running, ReloadAction::Reload).await.unwrap_err();
    assert!(refused.contains("has a candidate in canary") && refused.contains("promote or abort"), "{refused}");
    assert_eq!(running.slot.current().info.content_hash, serving.content_hash, "the serving build serves on");

    // The settings edit: the file on disk is the candidate, but the serving
    // build stays the serving build; both get the new settings.
    set_rollout(&running, FIREFOX_IS_A_BOT).await;
    let canary = running.slot.canary().expect("the trial goes on");
    assert_eq!(running.slot.current().info.content_hash, serving.content_hash, "the serving build serves on");
    assert!(firefox_is_a_bot(&running.slot.current()), "the serving build has the new settings");
    assert_eq!(canary.candidate.current().info.content_hash, candidate.content_hash);
    assert!(firefox_is_a_bot(&canary.candidate.current()), "the candidate has the new settings");
    let settings = history_of(&running, "settings").await;
    assert!(settings.contains("the serving build and its candidate in canary"), "{settings}");

    let expected = produce_to(&topic, 4_000, 66, Some(2_000)).await;
    support::wait_until(WAIT, "events stored", || async { stored(&pool).await as usize >= expected.len() }).await;
    let promoted = request(&running, ReloadAction::Promote).await.unwrap();
    assert_eq!(promoted.content_hash, candidate.content_hash);
    assert!(firefox_is_a_bot(&running.slot.current()), "the promoted candidate keeps the edit");
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();

    let by_version = stored_once(&pool, &expected).await;
    assert!(by_version.get(&serving.version).is_some_and(|n| *n > 0), "{by_version:?}");
    assert!(by_version.get(&candidate.version).is_some_and(|n| *n > 0), "{by_version:?}");
    let firefox: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT plugin_version, device, count(*) FROM events WHERE user_agent LIKE '%Firefox%' GROUP BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(firefox.iter().all(|(_, device, _)| device == "bot"), "both builds ran with the new settings: {firefox:?}");
    assert_eq!(firefox.len(), 2, "Firefox clicks from both builds: {firefox:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_rollback_after_a_settings_edit_restores_the_previous_build_with_the_edit() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let InCanary { dir: _dir, topic, pool, running, serving } =
        in_canary("canary_watch_settings", "rollout = \"canary\"\ncanary_fraction = 0.5\ncanary_batches = 5\nwatch_batches = 50").await;
    let promoted = request(&running, ReloadAction::Promote).await.unwrap();
    assert!(promoted.version.ends_with("-canary-reject"), "{promoted:?}");
    set_rollout(&running, FIREFOX_IS_A_BOT).await;
    assert_eq!(running.slot.current().info.content_hash, promoted.content_hash, "the promoted build serves on in its watch");
    let previous = running.slot.canary().and_then(|c| c.previous()).expect("in the watch");
    assert_eq!(previous.info.content_hash, serving.content_hash);
    assert!(firefox_is_a_bot(&previous) && firefox_is_a_bot(&running.slot.current()), "both builds have the edit");

    let expected = produce_to(&topic, 6_000, 67, Some(2_000)).await;
    let rolled_back = history_of(&running, "rolled_back").await;
    assert!(rolled_back.starts_with("in the watch after its promotion: reject rate "), "{rolled_back}");
    let now = running.slot.current();
    assert_eq!(now.info.content_hash, serving.content_hash, "the build that served before the canary serves again");
    assert!(firefox_is_a_bot(&now), "with the edit");
    all_stored_or_dead_lettered(&pool, &expected).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    stored_or_dead_lettered_once(&pool, &expected).await;
}
