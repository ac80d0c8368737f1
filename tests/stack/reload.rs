//! Hot reload against the real services: plugin files and pipeline.toml
//! change under a running pipeline, and no event is lost or doubled.

use clickstream_testkit as support;

use crate::reloading;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clickstream::stats::ReloadOutcome;
use reloading::{install, produce_to, start, stored, ONE_AT_A_TIME, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_enrich_without_loss() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("reload_swap").await;
    let running = start(&f).await;
    let old_version = running.slot.current().info.version.clone();

    let producing = tokio::spawn({
        let topic = f.topic.clone();
        async move { produce_to(&topic, 12_000, 31, Some(2_500)).await }
    });
    support::wait_until(WAIT, "events flowing", || async { stored(&f.pool).await > 1_000 }).await;
    let written = Instant::now();
    install(&support::plugin("enrich-canary"), &f.dir.path().join("enrich.wasm"));
    while !running.slot.current().info.version.ends_with("-canary") {
        assert!(written.elapsed() < WAIT, "the new version never went live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let swap_took = written.elapsed();
    let mut expected = producing.await.unwrap();
    // Events after the swap for certain, however long compiling took on a
    // busy machine.
    expected.extend(produce_to(&f.topic, 1_000, 32, None).await);
    support::wait_until(WAIT, "everything stored", || async { stored(&f.pool).await as usize >= expected.len() }).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    eprintln!("swap went live {swap_took:?} after the file write");

    let rows: Vec<(String, i32, i64, String, String)> = sqlx::query_as(
        "SELECT event_id, \"partition\", \"offset\", plugin_version, browser FROM events ORDER BY \"partition\", \"offset\"",
    )
    .fetch_all(&f.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), expected.len(), "each event stored once");
    assert_eq!(rows.iter().map(|r| r.0.clone()).collect::<BTreeSet<_>>(), expected);
    // Per partition, in offset order: old versions first, then new, never mixed.
    let mut switched: BTreeMap<i32, bool> = BTreeMap::new();
    let (mut old, mut new) = (0, 0);
    for (_, partition, offset, version, browser) in &rows {
        let is_new = version.ends_with("-canary");
        let seen_new = switched.entry(*partition).or_default();
        assert!(!*seen_new || is_new, "partition {partition} offset {offset} went back to the old version");
        *seen_new |= is_new;
        if is_new {
            new += 1;
            assert!(browser.ends_with("+canary"), "new version's output at {partition}/{offset}: {browser}");
        } else {
            old += 1;
            assert_eq!(version, &old_version);
            assert!(!browser.ends_with("+canary"));
        }
    }
    assert!(old > 0 && new > 0, "events on both sides of the swap: {old} old, {new} new");
    assert_eq!(running.stats.reloads_of("enrich", ReloadOutcome::Accepted), 1);
    // Swap latency is a benchmark figure (about 0.7 s on an idle 2-core
    // machine, most of it compiling the component); this only bounds it
    // loosely, since a shared CI machine's timing is not the product's.
    assert!(swap_took < Duration::from_secs(10), "the swap took {swap_took:?} from the file write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_plugin_files_leave_the_old_version_serving() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("reload_reject").await;
    let running = start(&f).await;
    let serving = running.slot.current().info.clone();
    let target = f.dir.path().join("enrich.wasm");
    let corrupt = f.dir.path().join("corrupt.bin");
    std::fs::write(&corrupt, b"\0asm\x0d\0\x01\0 definitely not a component").unwrap();

    for (n, bad) in [corrupt, support::plugin("aggregate"), support::plugin("misbehave-trap")].iter().enumerate() {
        install(bad, &target);
        let stats = running.stats.clone();
        support::wait_until(WAIT, &format!("rejection of {}", bad.display()), || {
            let stats = stats.clone();
            async move { stats.reloads_of("enrich", ReloadOutcome::Rejected) as usize > n }
        })
        .await;
        assert_eq!(running.slot.current().info, serving, "the old version keeps serving after {}", bad.display());
    }
    let expected = produce_to(&f.topic, 1_000, 32, None).await;
    support::wait_until(WAIT, "events stored by the old version", || async { stored(&f.pool).await as usize >= expected.len() }).await;
    let versions: Vec<String> = sqlx::query_scalar("SELECT DISTINCT plugin_version FROM events").fetch_all(&f.pool).await.unwrap();
    assert_eq!(versions, vec![serving.version.clone()]);
    assert_eq!(running.stats.reloads_of("enrich", ReloadOutcome::Accepted), 0);
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_toml_edits_apply_live_are_refused_when_invalid_and_reconnect_on_a_topic_change() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("reload_config").await;
    let running = start(&f).await;
    let original = std::fs::read_to_string(&running.pipeline).unwrap();
    let accepted = |n: u64| {
        let stats = running.stats.clone();
        move || {
            let stats = stats.clone();
            async move { stats.reloads_of("pipeline.toml", ReloadOutcome::Accepted) >= n }
        }
    };
    let rejected = |n: u64| {
        let stats = running.stats.clone();
        move || {
            let stats = stats.clone();
            async move { stats.reloads_of("pipeline.toml", ReloadOutcome::Rejected) >= n }
        }
    };

    // 1. A smaller batch size applies live: 600 records need at least 60 batches of 10.
    std::fs::write(&running.pipeline, original.replace("batch_size = 500", "batch_size = 10")).unwrap();
    support::wait_until(WAIT, "the batch size edit to apply", accepted(1)).await;
    let before = running.stats.batches_written.get();
    let first = produce_to(&f.topic, 600, 33, None).await;
    support::wait_until(WAIT, "events stored", || async { stored(&f.pool).await as usize >= first.len() }).await;
    let batches = running.stats.batches_written.get() - before;
    assert!(batches >= 60, "600 records in {batches} batches: the batch size of 10 did not apply");

    // 2. An invalid edit is refused and nothing changes.
    std::fs::write(&running.pipeline, original.replace("batch_size = 500", "batch_size = 10\nbatch_sise = 3")).unwrap();
    support::wait_until(WAIT, "the invalid edit to be refused", rejected(1)).await;
    // 3. Changing what the metrics mean is refused too.
    std::fs::write(
        &running.pipeline,
        format!("{}\n[aggregate]\nwindow_secs = 300\n", original.replace("batch_size = 500", "batch_size = 10")),
    )
    .unwrap();
    support::wait_until(WAIT, "the window change to be refused", rejected(2)).await;

    // 4. A topic change drains, reconnects and consumes the new topic.
    let second_topic = support::unique("reload_config_2");
    let second = produce_to(&second_topic, 400, 34, None).await;
    std::fs::write(&running.pipeline, original.replace(&f.topic, &second_topic)).unwrap();
    support::wait_until(WAIT, "the new topic to be consumed", || async {
        support::count(&f.pool, &format!("SELECT count(*) FROM events WHERE topic = '{second_topic}'")).await as usize >= second.len()
    })
    .await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    assert_eq!(stored(&f.pool).await as usize, first.len() + second.len(), "nothing lost or doubled across the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_seen_build_serves_from_the_baseline_tier_until_the_optimised_build_replaces_it_without_loss() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("reload_tier").await;
    let running = start(&f).await;

    let producing = tokio::spawn({
        let topic = f.topic.clone();
        async move { produce_to(&topic, 8_000, 41, Some(2_000)).await }
    });
    support::wait_until(WAIT, "events flowing", || async { stored(&f.pool).await > 500 }).await;
    let build = f.dir.path().join("unseen.bin");
    std::fs::write(&build, support::unseen_build("enrich-canary", &support::unique("tier"))).unwrap();
    install(&build, &f.dir.path().join("enrich.wasm"));
    let written = Instant::now();
    while !running.slot.current().info.version.ends_with("-canary") {
        assert!(written.elapsed() < WAIT, "the new version never went live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = running.slot.current().info.clone();
    assert_eq!(first.origin, clickstream::plugin::Origin::Baseline, "a build never seen serves from the baseline compiler first");
    let stats = running.stats.clone();
    support::wait_until(WAIT, "the optimised build", || {
        let stats = stats.clone();
        async move { stats.reloads_of("enrich", ReloadOutcome::Optimized) == 1 }
    })
    .await;
    let now = running.slot.current().info.clone();
    assert_eq!((now.origin, &now.content_hash, &now.version), (clickstream::plugin::Origin::Compiled, &first.content_hash, &first.version));
    assert_eq!(
        running.stats.reloads_of("enrich", ReloadOutcome::Accepted),
        1,
        "one swap from the file; the optimised build replaced it in place"
    );

    let mut expected = producing.await.unwrap();
    expected.extend(produce_to(&f.topic, 1_000, 42, None).await);
    support::wait_until(WAIT, "everything stored", || async { stored(&f.pool).await as usize >= expected.len() }).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    let ids: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&f.pool).await.unwrap();
    assert_eq!(ids.len(), expected.len(), "each event stored once");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
    let canary: i64 = support::count(&f.pool, "SELECT count(*) FROM events WHERE browser LIKE '%+canary'").await;
    assert!(canary >= 1_000, "the events produced after the swap went through the new build: {canary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_toml_edit_whose_aggregate_fails_applies_nothing_and_its_fix_applies_whole_with_the_new_transform_watched() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("reload_whole").await;
    let running = start(&f).await;
    let stats = running.stats.clone();
    let reloads = |what: &'static str, outcome: ReloadOutcome, n: u64| {
        let stats = stats.clone();
        move || {
            let stats = stats.clone();
            async move { stats.reloads_of(what, outcome) >= n }
        }
    };
    let bot = f.dir.path().join("bot-filter.wasm");
    install(&support::plugin("bot-filter"), &bot);
    let broken = f.dir.path().join("broken-aggregate.wasm");
    std::fs::write(&broken, b"no component").unwrap();
    let aggregate = support::plugin("aggregate").display().to_string();

    // One edit: a new transform (fine) and an aggregate plugin that fails.
    let draft = f.dir.path().join("draft.toml");
    std::fs::copy(&running.pipeline, &draft).unwrap();
    support::set_chain(&draft, &[("enrich", &f.dir.path().join("enrich.wasm")), ("bot-filter", &bot)]);
    let with_chain = std::fs::read_to_string(&draft).unwrap();
    let tmp = f.dir.path().join("next.toml");
    std::fs::write(&tmp, with_chain.replace(&aggregate, &broken.display().to_string())).unwrap();
    std::fs::rename(&tmp, &running.pipeline).unwrap();
    support::wait_until(WAIT, "the edit refused", reloads("pipeline.toml", ReloadOutcome::Rejected, 1)).await;
    assert_eq!(running.stats.reloads_of("aggregate", ReloadOutcome::Rejected), 1);
    assert_eq!(running.stats.reloads_of("bot-filter", ReloadOutcome::Accepted), 0, "nothing of the refused edit applied");
    let first = produce_to(&f.topic, 300, 43, None).await;
    support::wait_until(WAIT, "events stored", || async { stored(&f.pool).await as usize >= first.len() }).await;
    let chains: Vec<String> = sqlx::query_scalar("SELECT DISTINCT chain::text FROM events").fetch_all(&f.pool).await.unwrap();
    assert!(chains.iter().all(|c| !c.contains("bot-filter")), "the old chain served on: {chains:?}");

    // The fix applies whole, and the new transform's file is watched.
    std::fs::write(&tmp, &with_chain).unwrap();
    std::fs::rename(&tmp, &running.pipeline).unwrap();
    support::wait_until(WAIT, "the fixed edit applied", reloads("pipeline.toml", ReloadOutcome::Accepted, 1)).await;
    assert_eq!(running.stats.reloads_of("bot-filter", ReloadOutcome::Accepted), 1);
    let build = f.dir.path().join("unseen.bin");
    std::fs::write(&build, support::unseen_build("bot-filter", &support::unique("whole"))).unwrap();
    install(&build, &bot);
    support::wait_until(WAIT, "the new bot-filter build hot-reloaded", reloads("bot-filter", ReloadOutcome::Accepted, 2)).await;

    // bot-filter drops the bots' clicks: every event is stored or dropped, once.
    let second = produce_to(&f.topic, 300, 44, None).await;
    let done =
        || async { stored(&f.pool).await + support::count(&f.pool, "SELECT coalesce(sum(dropped), 0)::bigint FROM dropped_events").await };
    support::wait_until(WAIT, "events stored or dropped", || async { done().await as usize >= first.len() + second.len() }).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();
    assert_eq!(done().await as usize, first.len() + second.len(), "each event stored or dropped once");
}
