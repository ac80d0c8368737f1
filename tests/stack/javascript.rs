//! A transform written in JavaScript (plugins/utm, QuickJS built in by
//! componentize-qjs) in the chain after enrich, against the real services:
//! it attributes every event, and a new build of it swaps in under load
//! with every event stored once.

use clickstream_testkit as support;

use crate::reloading;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use clickstream::stats::ReloadOutcome;
use reloading::{install, produce_to, start_chain, stored, ONE_AT_A_TIME, WAIT};

/// What plugins/utm should say of an event the generator made: its
/// `utm_source` and referrer class (the generator's referrers are two search
/// engines and two other sites).
fn expected_attribution(url: &str, referrer: Option<&str>) -> (Option<&'static str>, &'static str) {
    let source = url.contains("utm_source=mail").then_some("mail");
    let class = match referrer {
        None => "direct",
        Some(r) if r.contains("google.") || r.contains("bing.") => "search",
        Some(_) => "referral",
    };
    (source, class)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_utm_transform_attributes_every_event_and_swaps_under_load_with_each_event_stored_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("js_utm").await;
    let utm = f.dir.path().join("utm.wasm");
    install(&support::plugin("utm"), &utm);
    let running = start_chain(&f, &[("enrich", &support::plugin("enrich")), ("utm", &utm)], 1).await;
    let old_version = running.slot.current().info.version.clone();
    assert_eq!(running.slot.current().info.name, "utm");

    let producing = tokio::spawn({
        let topic = f.topic.clone();
        async move { produce_to(&topic, 10_000, 41, Some(2_500)).await }
    });
    support::wait_until(WAIT, "events flowing", || async { stored(&f.pool).await > 1_000 }).await;
    let written = Instant::now();
    install(&support::plugin("utm-next"), &utm);
    while !running.slot.current().info.version.ends_with("-next") {
        assert!(written.elapsed() < WAIT, "the new build never went live");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("utm-next went live {:?} after the file write", written.elapsed());
    let mut expected = producing.await.unwrap();
    expected.extend(produce_to(&f.topic, 1_000, 42, None).await);
    support::wait_until(WAIT, "everything stored", || async { stored(&f.pool).await as usize >= expected.len() }).await;
    running.stop.send(true).unwrap();
    running.task.await.unwrap().unwrap();

    type Row = (String, i32, i64, String, Option<String>, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT event_id, \"partition\", \"offset\", url, referrer, attributes->>'utm_source', attributes->>'referrer_class', \
         substring(chain from 'utm@([^,]*)') FROM events ORDER BY \"partition\", \"offset\"",
    )
    .fetch_all(&f.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), expected.len(), "each event stored once");
    assert_eq!(rows.iter().map(|r| r.0.clone()).collect::<BTreeSet<_>>(), expected);
    let dead: i64 = support::count(&f.pool, "SELECT count(*) FROM dead_letters").await;
    let mut switched: BTreeMap<i32, bool> = BTreeMap::new();
    let (mut old, mut new, mut campaigns) = (0, 0, 0);
    for (id, partition, offset, url, referrer, source, class, version) in &rows {
        let (want_source, want_class) = expected_attribution(url, referrer.as_deref());
        assert_eq!((source.as_deref(), class.as_deref()), (want_source, Some(want_class)), "event {id}: {url} from {referrer:?}");
        campaigns += usize::from(source.is_some());
        let version = version.as_deref().unwrap_or_else(|| panic!("event {id} did not pass through utm"));
        let is_new = version.ends_with("-next");
        let seen_new = switched.entry(*partition).or_default();
        assert!(!*seen_new || is_new, "partition {partition} offset {offset} went back to the old build");
        *seen_new |= is_new;
        if is_new {
            new += 1;
        } else {
            assert_eq!(version, old_version);
            old += 1;
        }
    }
    assert!(old > 0 && new > 0, "events on both sides of the swap: {old} old, {new} new");
    assert!(campaigns > 100, "only {campaigns} events carried a campaign");
    eprintln!(
        "{} events: {old} by utm {old_version}, {new} by the next build, {campaigns} with a campaign; {dead} dead letters",
        rows.len()
    );
    assert_eq!(running.stats.reloads_of("utm", ReloadOutcome::Accepted), 1);
}

/// Events whose URLs and referrers take the parsing paths the generator
/// does not: bad percent-encoding, a `+` after `%`, empty and repeated
/// names, userinfo, upper case, long and astral values, odd referrers.
fn awkward_events() -> Vec<clickstream::stages::record::RawEvent> {
    let long = "é".repeat(200);
    let astral = "😀".repeat(150);
    let urls = [
        "/".to_string(),
        "/?utm_source=%zz&utm_medium=ok".into(),
        "/?utm_source=%+1&utm_campaign=%E2%82%AC".into(),
        "/?a=1&&utm_medium=EMAIL&utm_source=".into(),
        "/?utm_source&utm_term=a+b%20c".into(),
        "/?UTM_Source=First&utm_source=second".into(),
        "https://user@shop.example/p?utm_content=x#utm_term=no".into(),
        format!("/?utm_campaign={long}"),
        format!("/?utm_content={astral}"),
        "/?utm_source=%F0%9F%98%80&utm_medium=%C3%28".into(),
        "https://shop.example:8443/?utm_source=%20padded%20".into(),
    ];
    let referrers = [
        None,
        Some(""),
        Some("https://www.google.de/search"),
        Some("https://shop.example/x"),
        Some("http://user:pw@facebook.com/"),
        Some("https://sub.t.co/"),
        Some("notaurl"),
        Some("ftp://mail.google.com/x"),
        Some("HTTPS://WWW.BING.COM/"),
        Some("https://x@/"),
        Some("https://blog.example.com:80/a"),
        Some("android-app://com.google.android.gm/"),
    ];
    let mut events = Vec::new();
    for url in &urls {
        for referrer in referrers {
            events.push(clickstream::stages::record::RawEvent {
                event_id: format!("awkward-{}", events.len()),
                user_id: "u".into(),
                timestamp_ms: 1_795_856_400_000,
                url: url.clone(),
                ip: String::new(),
                user_agent: String::new(),
                referrer: referrer.map(String::from),
                session_id: None,
            });
        }
    }
    events
}

#[test]
fn the_javascript_utm_and_its_rust_twin_give_the_same_outcome_for_every_event() {
    use clickstream::plugin::transform::{LoadedTransform, TransformRunner};
    use clickstream::plugin::{PluginSpec, Slot};
    use clickstream::produce::{Generator, GeneratorConfig};
    use clickstream::stages::record::{attributes_json, Outcome, TransformEvent};

    let generated = Generator::new(GeneratorConfig { events: 20_000, seed: 43, ..GeneratorConfig::default() }).filter_map(|r| {
        clickstream::stages::decode::decode(&r.payload, &clickstream::stages::decode::DecodeLimits::UNBOUNDED, 0, || r.event_id.clone())
            .ok()
    });
    let events: Vec<TransformEvent> = awkward_events().into_iter().chain(generated).map(TransformEvent::from).collect();
    let settings_sets: [&[(&str, &str)]; 2] =
        [&[("internal_hosts", "example.com")], &[("max_length", "5"), ("lowercase", "false"), ("social_hosts", "google.de")]];
    for settings in settings_sets {
        let run = |name: &str| {
            let settings = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            let spec = PluginSpec { slot: "utm".into(), path: support::plugin(name), settings, limits: Default::default() };
            let mut runner = TransformRunner::new(std::sync::Arc::new(Slot::new(LoadedTransform::load(spec, None).unwrap())));
            let mut out = Vec::new();
            for chunk in events.chunks(500) {
                let (_, outcomes) = runner.transform(chunk).unwrap();
                out.extend(outcomes.iter().map(|o| match o {
                    Outcome::Keep(e) => attributes_json(&e.attributes).into_owned(),
                    other => panic!("{name} did not keep an event: {other:?}"),
                }));
            }
            out
        };
        let (js, rust) = (run("utm"), run("utm-rust"));
        assert_eq!(js.len(), events.len());
        for (i, (j, r)) in js.iter().zip(&rust).enumerate() {
            let e = &events[i].raw;
            assert_eq!(j, r, "with {settings:?}, JavaScript and Rust differ on {} from {:?}", e.url, e.referrer);
        }
        let campaigns = js.iter().filter(|a| a.contains("utm_")).count();
        assert!(campaigns > 1_000, "only {campaigns} events carried a campaign");
    }
}

#[test]
fn the_utm_plugin_passes_its_own_fixtures_through_plugin_test() {
    support::plugin("utm"); // builds plugins/utm/dist/utm.wasm
    let binary = support::host_binary().unwrap_or_else(|e| panic!("{e}"));
    let dir = support::root().join("plugins/utm");
    let out = std::process::Command::new(binary).args(["plugin", "test"]).arg(&dir).output().expect("run clickstream");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("ok: all 11 outcomes"), "{stdout}");
}
