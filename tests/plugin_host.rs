//! The plugin host against the real `.wasm` components: enrichment results,
//! order, and the limits that keep a misbehaving plugin from hurting the host.

use clickstream_testkit as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickstream::plugin::aggregate::{AggregateRun, LoadedAggregate};
use clickstream::plugin::enrich::{EnrichRunner, LoadedEnrich};
use clickstream::plugin::{PluginError, PluginLimits, PluginSpec, Slot};
use clickstream::stages::record::{AggregateParams, Device, RawEvent, StoredEvent};

const CHROME_WINDOWS: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const CURL: &str = "curl/8.4.0";

fn spec(slot: &str, file: &str, limits: PluginLimits) -> PluginSpec {
    PluginSpec { slot: slot.into(), path: support::plugin(file), settings: vec![], limits }
}

fn click(user: &str, ts: i64, ua: &str) -> RawEvent {
    RawEvent {
        event_id: format!("{user}-{ts}"),
        user_id: user.into(),
        timestamp_ms: ts,
        url: "https://shop.example/".into(),
        ip: "8.8.8.8".into(),
        user_agent: ua.into(),
        referrer: None,
        session_id: None,
    }
}

fn runner(file: &str, limits: PluginLimits) -> EnrichRunner {
    let loaded = LoadedEnrich::load(spec("enrich", file, limits), None).unwrap();
    EnrichRunner::new(Arc::new(Slot::new(loaded)))
}

#[test]
fn enrich_component_classifies_real_user_agents() {
    let mut runner = runner("enrich", PluginLimits::default());
    let batch = vec![
        click("chrome", 1, CHROME_WINDOWS),
        click("iphone", 2, SAFARI_IPHONE),
        click("bot", 3, GOOGLEBOT),
        click("curl", 4, CURL),
        click("empty", 5, ""),
    ];
    let (loaded, results) = runner.enrich(&batch).unwrap();
    assert_eq!(loaded.info.name, "enrich");
    let out: Vec<_> = results.into_iter().map(|r| r.unwrap().enrichment).collect();
    assert_eq!((out[0].browser.as_str(), out[0].device), ("Chrome", Device::Desktop));
    assert!(out[0].os.starts_with("Windows"), "{:?}", out[0].os);
    assert_eq!((out[1].browser.as_str(), out[1].os.as_str(), out[1].device), ("Safari", "iPhone", Device::Mobile));
    assert_eq!((out[2].browser.as_str(), out[2].device), ("Googlebot", Device::Bot));
    assert_ne!(out[3].device, Device::Desktop, "curl is no desktop browser: {:?}", out[3]);
    assert_eq!((out[4].browser.as_str(), out[4].os.as_str(), out[4].device), ("unknown", "unknown", Device::Unknown));
    // No geoip database was given: every location is unknown, not an error.
    assert!(out.iter().all(|c| c.country == "unknown" && c.city == "unknown"));
    assert!(out.iter().all(|c| c.plugin_version == loaded.info.version));
}

#[test]
fn enrich_results_keep_input_order_and_refuse_structural_problems() {
    let mut runner = runner("enrich", PluginLimits::default());
    let mut batch: Vec<RawEvent> = (1..=500).map(|i| click(&format!("u{i}"), i, CHROME_WINDOWS)).collect();
    batch[7].user_id = String::new();
    batch[9].timestamp_ms = -5;
    let (_, results) = runner.enrich(&batch).unwrap();
    assert_eq!(results.len(), 500);
    for (i, (input, result)) in batch.iter().zip(&results).enumerate() {
        match (i, result) {
            (7, Err(e)) => assert_eq!(e.field.as_deref(), Some("user_id")),
            (9, Err(e)) => assert_eq!(e.field.as_deref(), Some("timestamp")),
            (_, Ok(out)) => assert_eq!(out.raw.event_id, input.event_id, "result {i} out of order"),
            (_, other) => panic!("unexpected result {i}: {other:?}"),
        }
    }
}

#[test]
fn a_trapping_plugin_yields_a_typed_error_and_the_next_batch_is_served() {
    let mut runner = runner("misbehave", PluginLimits::default());
    let err = runner.enrich(&[click("ok", 1, ""), click("trap", 2, "")]).unwrap_err();
    assert!(matches!(err, PluginError::Trap { ref plugin, .. } if plugin == "enrich"), "{err}");
    assert!(err.to_string().contains("asked to trap"), "{err}");
    let (_, results) = runner.enrich(&[click("ok", 3, "")]).unwrap();
    assert_eq!(results.len(), 1);
}

#[test]
fn a_plugin_that_loops_forever_hits_its_deadline_and_the_host_keeps_serving() {
    let limits = PluginLimits { deadline: Duration::from_millis(200), ..PluginLimits::default() };
    let mut runner = runner("misbehave", limits);
    let started = Instant::now();
    let err = runner.enrich(&[click("loop", 1, "")]).unwrap_err();
    assert!(matches!(err, PluginError::Deadline { deadline_ms: 200, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "deadline took {:?}", started.elapsed());
    assert!(runner.enrich(&[click("ok", 2, "")]).is_ok());
}

#[test]
fn a_plugin_allocating_past_its_cap_yields_memory_exceeded_and_the_host_keeps_serving() {
    let limits = PluginLimits { memory_bytes: 64 << 20, ..PluginLimits::default() };
    let mut runner = runner("misbehave", limits);
    let err = runner.enrich(&[click("alloc", 1, "")]).unwrap_err();
    match err {
        PluginError::MemoryExceeded { requested, cap, .. } => {
            assert_eq!(cap, 64 << 20);
            assert!(requested > cap);
        }
        other => panic!("expected MemoryExceeded, got {other}"),
    }
    assert!(runner.enrich(&[click("ok", 2, "")]).is_ok());
    assert!(runner.memory_high_water <= 64 << 20);
}

#[test]
fn a_component_of_the_wrong_world_is_refused_at_load() {
    let err = LoadedEnrich::load(spec("enrich", "aggregate", PluginLimits::default()), None).unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { world: "enricher", .. }), "{err}");
    assert!(err.to_string().contains("it is an aggregator"), "{err}");
    let err = LoadedAggregate::load(spec("aggregate", "enrich", PluginLimits::default())).unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { world: "aggregator", .. }), "{err}");
    assert!(err.to_string().contains("it is an enricher"), "{err}");
}

/// Read from the component's imports and exports before linking: a build
/// for another contract version is named as such, not as a link error.
#[test]
fn a_component_for_a_contract_version_this_host_does_not_serve_is_refused_with_both_versions() {
    let err = LoadedEnrich::load(spec("enrich", "future-contract", PluginLimits::default()), None).unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { world: "enricher", .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("targets clickstream:pipeline@9.0.0; this host supports 0.1.0..0.1.0"), "{message}");
    let target = clickstream::plugin::instance::target_of(&spec("enrich", "enrich", PluginLimits::default())).unwrap();
    assert_eq!((target.world, target.version.to_string()), (clickstream::plugin::wit::World::Enricher, "0.1.0".to_string()));
    let target = clickstream::plugin::instance::target_of(&spec("aggregate", "aggregate", PluginLimits::default())).unwrap();
    assert_eq!(target.world, clickstream::plugin::wit::World::Aggregator);
}

#[test]
fn a_file_that_is_not_a_component_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.wasm");
    std::fs::write(&path, b"\0asm not really").unwrap();
    let spec = PluginSpec { slot: "enrich".into(), path, settings: vec![], limits: PluginLimits::default() };
    let err = LoadedEnrich::load(spec, None).unwrap_err();
    assert!(matches!(err, PluginError::NotAComponent { .. }), "{err}");
}

#[test]
fn settings_a_plugin_refuses_fail_the_load_with_its_reason() {
    let mut s = spec("enrich", "enrich", PluginLimits::default());
    s.settings = vec![("no_such_setting".into(), "1".into())];
    let err = LoadedEnrich::load(s, None).unwrap_err();
    assert!(matches!(err, PluginError::Configure { ref reason, .. } if reason.contains("no_such_setting")), "{err}");
}

#[test]
fn swapping_the_slot_moves_the_next_batch_to_the_new_version() {
    let slot = Arc::new(Slot::new(LoadedEnrich::load(spec("enrich", "enrich", PluginLimits::default()), None).unwrap()));
    let mut runner = EnrichRunner::new(slot.clone());
    let (before, _) = runner.enrich(&[click("a", 1, "")]).unwrap();
    assert_eq!(before.info.name, "enrich");
    slot.swap(LoadedEnrich::load(spec("enrich", "misbehave", PluginLimits::default()), None).unwrap());
    let (after, results) = runner.enrich(&[click("b", 2, "")]).unwrap();
    assert_eq!(after.info.name, "misbehave");
    assert_eq!(results[0].as_ref().unwrap().enrichment.plugin_version, "0.0.1-misbehave");
}

#[test]
fn aggregate_component_streams_a_run_in_batches() {
    let loaded = LoadedAggregate::load(spec("aggregate", "aggregate", PluginLimits::default())).unwrap();
    let slot = Slot::new(loaded);
    let params = AggregateParams { window_ms: 60_000, session_timeout_ms: 1_800_000, keep_query: false };
    let mut run = AggregateRun::start(&slot, params, 0, 120_000).unwrap();
    let c = |id: &str, user: &str, ts: i64, url: &str| StoredEvent {
        event_id: id.into(),
        user_id: user.into(),
        timestamp_ms: ts,
        url: url.into(),
        country: "FR".into(),
    };
    run.push(&[c("1", "u1", 1_000, "https://X.example/a?q=1"), c("2", "u1", 11_000, "https://x.example/b")]).unwrap();
    run.push(&[c("3", "u1", 200_000, "https://x.example/c"), c("4", "u2", 5_000, "https://x.example/a")]).unwrap();
    assert_eq!(run.plugin().name, "aggregate");
    let rows = run.finish().unwrap();
    let a = rows.iter().find(|r| r.url == "https://x.example/a").unwrap();
    assert_eq!((a.window_start_ms, a.clicks, a.unique_users, a.time_spent_total_ms, a.time_spent_samples), (0, 2, 2, 10_000, 1));
    let b = rows.iter().find(|r| r.url == "https://x.example/b").unwrap();
    assert_eq!((b.time_spent_total_ms, b.time_spent_samples), (189_000, 1));
    assert!(rows.iter().all(|r| r.url != "https://x.example/c"), "the lookahead click is outside the range");
}

#[test]
fn an_unsorted_aggregate_push_is_a_contract_error() {
    let slot = Slot::new(LoadedAggregate::load(spec("aggregate", "aggregate", PluginLimits::default())).unwrap());
    let params = AggregateParams { window_ms: 60_000, session_timeout_ms: 1_800_000, keep_query: false };
    let mut run = AggregateRun::start(&slot, params, 0, 60_000).unwrap();
    let c = |id: &str, user: &str| StoredEvent {
        event_id: id.into(),
        user_id: user.into(),
        timestamp_ms: 1,
        url: "/".into(),
        country: "FR".into(),
    };
    let err = run.push(&[c("1", "b"), c("2", "a")]).unwrap_err();
    assert!(matches!(err, PluginError::Contract { .. }), "{err}");
}
