//! The plugin host against the real `.wasm` components: transform outcomes,
//! order, both contract versions, and the limits that keep a misbehaving
//! plugin from hurting the host.

use clickstream_testkit as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickstream::plugin::aggregate::{AggregateRun, LoadedAggregate};
use clickstream::plugin::transform::{LoadedTransform, TransformRunner};
use clickstream::plugin::{PluginError, PluginLimits, PluginSpec, Slot};
use clickstream::stages::record::{AggregateParams, Device, Outcome, RawEvent, StoredEvent, TransformEvent};

const CHROME_WINDOWS: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const CURL: &str = "curl/8.4.0";

fn spec(slot: &str, file: &str, limits: PluginLimits) -> PluginSpec {
    PluginSpec { slot: slot.into(), path: support::plugin(file), settings: vec![], limits }
}

fn click(user: &str, ts: i64, ua: &str) -> TransformEvent {
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
    .into()
}

fn runner(file: &str, limits: PluginLimits) -> TransformRunner {
    let loaded = LoadedTransform::load(spec(file, file, limits), None).unwrap();
    TransformRunner::new(Arc::new(Slot::new(loaded)))
}

fn kept(outcome: &Outcome) -> &TransformEvent {
    match outcome {
        Outcome::Keep(event) => event,
        other => panic!("expected keep, got {other:?}"),
    }
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
    let (loaded, outcomes) = runner.transform(&batch).unwrap();
    assert_eq!((loaded.info.name.as_str(), loaded.info.contract.as_str()), ("enrich", "0.2.0"));
    let out: Vec<_> = outcomes.iter().map(|o| kept(o).enrichment.clone()).collect();
    assert_eq!((out[0].browser.as_deref(), out[0].device), (Some("Chrome"), Some(Device::Desktop)));
    assert!(out[0].os.as_deref().unwrap().starts_with("Windows"), "{:?}", out[0].os);
    assert_eq!((out[1].browser.as_deref(), out[1].os.as_deref(), out[1].device), (Some("Safari"), Some("iPhone"), Some(Device::Mobile)));
    assert_eq!((out[2].browser.as_deref(), out[2].device), (Some("Googlebot"), Some(Device::Bot)));
    assert_ne!(out[3].device, Some(Device::Desktop), "curl is no desktop browser: {:?}", out[3]);
    assert_eq!((out[4].browser.as_deref(), out[4].os.as_deref(), out[4].device), (None, None, Some(Device::Unknown)));
    // No geoip database was given: every location is unset, not an error.
    assert!(out.iter().all(|c| c.country.is_none() && c.city.is_none()));
}

#[test]
fn outcomes_keep_input_order_and_structural_problems_are_rejected_with_the_field() {
    let mut runner = runner("enrich", PluginLimits::default());
    let mut batch: Vec<TransformEvent> = (1..=500).map(|i| click(&format!("u{i}"), i, CHROME_WINDOWS)).collect();
    batch[7].raw.user_id = String::new();
    batch[9].raw.timestamp_ms = -5;
    let (_, outcomes) = runner.transform(&batch).unwrap();
    assert_eq!(outcomes.len(), 500);
    for (i, (input, outcome)) in batch.iter().zip(&outcomes).enumerate() {
        match (i, outcome) {
            (7, Outcome::Reject(r)) => assert_eq!(r.field.as_deref(), Some("user_id")),
            (9, Outcome::Reject(r)) => assert_eq!(r.field.as_deref(), Some("timestamp")),
            (_, Outcome::Keep(out)) => assert_eq!(out.raw.event_id, input.raw.event_id, "outcome {i} out of order"),
            (_, other) => panic!("unexpected outcome {i}: {other:?}"),
        }
    }
}

/// A 0.1.0 build runs through the host's adapter: one `geoip.lookup` per
/// click, its results as keep, its errors as reject, its `unknown`s unset.
#[test]
fn a_contract_0_1_0_enricher_runs_as_a_transform_beside_0_2_0_ones() {
    let mut legacy = runner("legacy-enrich", PluginLimits::default());
    let (loaded, outcomes) = legacy
        .transform(&[click("a", 1, GOOGLEBOT), {
            let mut c = click("b", 2, CURL);
            c.raw.url = " ".into();
            c
        }])
        .unwrap();
    assert_eq!((loaded.info.name.as_str(), loaded.info.contract.as_str()), ("legacy-enrich", "0.1.0"));
    let a = kept(&outcomes[0]);
    assert_eq!(
        (a.enrichment.browser.as_deref(), a.enrichment.device, a.enrichment.os.as_deref()),
        (Some("Mozilla"), Some(Device::Bot), None)
    );
    assert!(matches!(&outcomes[1], Outcome::Reject(r) if r.field.as_deref() == Some("url")), "{:?}", outcomes[1]);
    // And a 0.2.0 transform takes what it kept.
    let mut filter = runner("bot-filter", PluginLimits::default());
    let (_, filtered) = filter.transform(std::slice::from_ref(a)).unwrap();
    assert!(matches!(&filtered[0], Outcome::Drop(reason) if reason == "bot"), "{:?}", filtered[0]);
}

#[test]
fn a_trapping_plugin_yields_a_typed_error_and_the_next_batch_is_served() {
    let mut runner = runner("misbehave", PluginLimits::default());
    let err = runner.transform(&[click("ok", 1, ""), click("trap", 2, "")]).unwrap_err();
    assert!(matches!(err, PluginError::Trap { ref plugin, .. } if plugin == "misbehave"), "{err}");
    assert!(err.to_string().contains("asked to trap"), "{err}");
    let (_, outcomes) = runner.transform(&[click("ok", 3, "")]).unwrap();
    assert_eq!(outcomes.len(), 1);
}

#[test]
fn a_plugin_that_loops_forever_hits_its_deadline_and_the_host_keeps_serving() {
    let limits = PluginLimits { deadline: Duration::from_millis(200), ..PluginLimits::default() };
    let mut runner = runner("misbehave", limits);
    let started = Instant::now();
    let err = runner.transform(&[click("loop", 1, "")]).unwrap_err();
    assert!(matches!(err, PluginError::Deadline { deadline_ms: 200, .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "deadline took {:?}", started.elapsed());
    assert!(runner.transform(&[click("ok", 2, "")]).is_ok());
}

#[test]
fn a_plugin_allocating_past_its_cap_yields_memory_exceeded_and_the_host_keeps_serving() {
    let limits = PluginLimits { memory_bytes: 64 << 20, ..PluginLimits::default() };
    let mut runner = runner("misbehave", limits);
    let err = runner.transform(&[click("alloc", 1, "")]).unwrap_err();
    match err {
        PluginError::MemoryExceeded { requested, cap, .. } => {
            assert_eq!(cap, 64 << 20);
            assert!(requested > cap);
        }
        other => panic!("expected MemoryExceeded, got {other}"),
    }
    assert!(runner.transform(&[click("ok", 2, "")]).is_ok());
    assert!(runner.memory_high_water <= 64 << 20);
}

#[test]
fn a_component_of_the_wrong_world_is_refused_at_load() {
    let err = LoadedTransform::load(spec("enrich", "aggregate", PluginLimits::default()), None).unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { world: "transformer", .. }), "{err}");
    assert!(err.to_string().contains("implements the aggregator world"), "{err}");
    let err = LoadedAggregate::load(spec("aggregate", "enrich", PluginLimits::default())).unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { world: "aggregator", .. }), "{err}");
    assert!(err.to_string().contains("implements the transformer world"), "{err}");
}

/// Read from the component's imports and exports before linking: a build
/// for another contract version is named as such, not as a link error.
#[test]
fn a_component_for_a_contract_version_this_host_does_not_serve_is_refused_with_both_versions() {
    let err = LoadedTransform::load(spec("enrich", "future-contract", PluginLimits::default()), None).unwrap_err();
    assert!(matches!(err, PluginError::WrongWorld { world: "transformer", .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("targets clickstream:pipeline@9.0.0; this host supports 0.1.0..0.2.0"), "{message}");
    let target_of = |file: &str| clickstream::plugin::instance::target_of(&spec(file, file, PluginLimits::default())).unwrap();
    use clickstream::plugin::wit::World;
    let seen: Vec<(World, String)> =
        ["enrich", "legacy-enrich", "aggregate"].iter().map(|f| target_of(f)).map(|t| (t.world, t.version.to_string())).collect();
    assert_eq!(seen, vec![(World::Transformer, "0.2.0".into()), (World::Enricher, "0.1.0".into()), (World::Aggregator, "0.1.0".into())]);
}

#[test]
fn a_file_that_is_not_a_component_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.wasm");
    std::fs::write(&path, b"\0asm not really").unwrap();
    let spec = PluginSpec { slot: "enrich".into(), path, settings: vec![], limits: PluginLimits::default() };
    let err = LoadedTransform::load(spec, None).unwrap_err();
    assert!(matches!(err, PluginError::NotAComponent { .. }), "{err}");
}

#[test]
fn settings_a_plugin_refuses_fail_the_load_with_its_reason() {
    for file in ["enrich", "bot-filter", "anonymize-ip", "legacy-enrich"] {
        let mut s = spec(file, file, PluginLimits::default());
        s.settings = vec![("no_such_setting".into(), "1".into())];
        let err = LoadedTransform::load(s, None).unwrap_err();
        assert!(matches!(err, PluginError::Configure { ref reason, .. } if reason.contains("no_such_setting")), "{file}: {err}");
    }
}

#[test]
fn swapping_the_slot_moves_the_next_batch_to_the_new_version() {
    let slot = Arc::new(Slot::new(LoadedTransform::load(spec("enrich", "enrich", PluginLimits::default()), None).unwrap()));
    let mut runner = TransformRunner::new(slot.clone());
    let (before, _) = runner.transform(&[click("a", 1, "")]).unwrap();
    assert_eq!(before.info.name, "enrich");
    slot.swap(LoadedTransform::load(spec("enrich", "misbehave", PluginLimits::default()), None).unwrap());
    let (after, outcomes) = runner.transform(&[click("b", 2, "")]).unwrap();
    assert_eq!((after.info.name.as_str(), after.info.version.as_str()), ("misbehave", "0.0.1-misbehave"));
    assert_eq!(kept(&outcomes[0]).raw.event_id, "b-2");
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
