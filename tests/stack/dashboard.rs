//! The dashboard in headless Chromium against a real pipeline in this
//! process (Kafka, PostgreSQL, the search server): every chart draws data
//! points with axis labels, hovering a chart shows its values, each
//! transform has a panel whose numbers are `/api/plugins`' and whose
//! history is its own (a canary started and aborted, a reload), and the
//! throughput chart opens on the past the API kept (`/api/history`).
//!
//! The browser is driven over the DevTools protocol (testkit's `browser`): the hover
//! is the browser's own mouse input, not a hook in the page. Screenshot:
//! target/test-artifacts/dashboard-panels.png.

use clickstream_testkit as support;

use std::sync::Arc;
use std::time::Duration;

use clickstream::produce::{self, Generator, GeneratorConfig};
use clickstream::runtime::api::Api;
use clickstream::stats::Stats;
use serde_json::{json, Value};
use support::browser::Browser;

const WAIT: Duration = Duration::from_secs(180);
const TOKEN: &str = "dashboard-token-0123456789";
const TRANSFORMS: [&str; 3] = ["enrich", "bot-filter", "anonymize-ip"];
/// The charts the page draws, by canvas id.
const CHARTS: [&str; 4] = ["throughput", "lag", "urls", "countries"];
const PARTITIONS: i32 = 4;

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    async fn post(&self, path: &str) -> Value {
        let response = self.http.post(format!("{}{path}", self.base)).bearer_auth(TOKEN).send().await.unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 200, "POST {path}: {body}");
        body
    }

    /// Waits until `check` holds on the answer of `path`.
    async fn wait_for(&self, what: &str, path: &str, check: impl Fn(&Value) -> bool) {
        support::wait_until(WAIT, what, || {
            let request = self.http.get(format!("{}{path}", self.base));
            let check = &check;
            async move {
                let Ok(response) = request.send().await else { return false };
                response.status() == 200 && response.json::<Value>().await.is_ok_and(|body| check(&body))
            }
        })
        .await;
    }
}

/// The transform named `slot` in an `/api/plugins` answer.
fn transform<'a>(plugins: &'a Value, slot: &str) -> &'a Value {
    plugins["plugins"].as_array().unwrap().iter().find(|p| p["slot"] == slot).unwrap_or_else(|| panic!("no {slot} in {plugins}"))
}

/// What the page drew: per canvas, its id, points, axis labels and readout.
const CHARTS_JS: &str = r#"[...document.querySelectorAll("canvas")].map(c => ({
    id: c.id, points: Number(c.dataset.points), axes: JSON.parse(c.dataset.axisLabels || "null"), hover: c.dataset.hover || null }))"#;

/// The panels: slot, the numbers (raw, from data-value), the rollout state
/// and the outcomes of the panel's history, newest first.
const PANELS_JS: &str = r#"[...document.querySelectorAll("article.transform")].map(a => ({
    slot: a.dataset.slot,
    fields: Object.fromEntries([...a.querySelectorAll("[data-field]")].map(e => [e.dataset.field, e.dataset.value])),
    rollout: a.querySelector("[data-rollout]")?.dataset.rollout ?? null,
    history: [...a.querySelectorAll("tr[data-outcome]")].map(r => r.dataset.outcome) }))"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_every_chart_with_points_and_axis_labels_and_a_panel_per_transform() {
    let extra = format!("reload_token = \"{TOKEN}\"\n\n[aggregate]\ninterval_ms = 500\nallowed_lateness_secs = 0\n");
    let f = support::Fixture::with("dashboard", &extra).await;
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, &f.topic, PARTITIONS)
        .await
        .unwrap_or_else(|e| panic!("broker at {brokers} refused ({e}): run `scripts/services up`"));

    // The chain of three bundled transforms; enrich is a copy the test
    // replaces, with a canary rollout that only the API decides.
    let enrich = f.dir.path().join("enrich.wasm");
    std::fs::copy(support::plugin("enrich"), &enrich).unwrap();
    let (bot_filter, anonymize) = (support::plugin("bot-filter"), support::plugin("anonymize-ip"));
    support::set_chain(&f.pipeline, &[("enrich", &enrich), ("bot-filter", &bot_filter), ("anonymize-ip", &anonymize)]);
    let text = std::fs::read_to_string(&f.pipeline).unwrap();
    let rollout = "enrich.wasm\"\nrollout = \"canary\"\ncanary_fraction = 0.5\ncanary_batches = 1000000\n";
    std::fs::write(&f.pipeline, text.replacen("enrich.wasm\"\n", rollout, 1)).unwrap();
    let config = support::load_config(&f.pipeline);

    // The API on its own thread, as `clickstream run` serves it, sharing
    // the pipeline's counters.
    let stats = Arc::new(Stats::default());
    let api = Api::new(stats.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client { base: format!("http://{}", listener.local_addr().unwrap()), http: reqwest::Client::new() };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = api.clone().serve_on_own_thread(listener.into_std().unwrap(), stopped.clone()).unwrap();
    let running = tokio::spawn(clickstream::runtime::pipeline::run_until_stopped(config, stopped, Default::default(), stats.clone(), {
        let api = api.clone();
        move |p| api.serve_pipeline(p)
    }));
    client.wait_for("the plugins to load", "/api/plugins", |_| true).await;

    // History for the panels: a canary of enrich replaced by a newer build
    // before its verdict (the first is recorded as aborted), a reload of
    // bot-filter.
    let install = |bytes: Vec<u8>| {
        let tmp = enrich.with_extension("tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &enrich).unwrap();
    };
    install(std::fs::read(support::plugin("enrich-canary")).unwrap());
    client.wait_for("enrich's canary", "/api/plugins", |p| !transform(p, "enrich")["canary"].is_null()).await;
    install(support::unseen_build("enrich-canary", "dashboard"));
    let replaced = |p: &Value| p["reload_history"].as_array().unwrap().iter().filter(|r| r["what"] == "enrich").count() == 3;
    client.wait_for("the canary replaced", "/api/plugins", replaced).await;
    client.post("/api/plugins/bot-filter/reload").await;

    let now = chrono::Utc::now().timestamp_millis();
    let generator = GeneratorConfig {
        events: 3000,
        users: 200,
        urls: 30,
        seed: 19,
        start_ms: now - 20 * 60_000,
        span_secs: 20 * 60,
        bad_fraction: 0.05,
        ..GeneratorConfig::default()
    };
    // Paced over about ten seconds, so the throughput chart has a shape.
    let summary =
        produce::to_kafka(Generator::new(generator), &brokers, &f.topic, Some(300), &Default::default(), &indicatif::ProgressBar::hidden())
            .await
            .unwrap();
    let records = summary.records;
    let settled = || stats.consumed.get() == records && stats.stored.get() + stats.dropped.get() + stats.dead_lettered.get() == records;
    support::wait_until(WAIT, "every record stored, dropped or dead-lettered", || std::future::ready(settled())).await;
    for by in ["url", "country"] {
        let path = format!("/api/aggregates?by={by}&limit=5&series=true");
        client.wait_for(&format!("aggregates by {by}"), &path, |a| a["groups"].as_array().is_some_and(|g| !g.is_empty())).await;
    }

    // /api/history: evenly sampled counters, oldest first, ending now.
    let history = client.get("/api/history").await;
    assert_eq!((history["interval_ms"].as_u64(), history["window_ms"].as_u64()), (Some(5000), Some(1_800_000)), "{history}");
    let samples = history["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "sampled since the API started: {history}");
    for key in ["at_ms", "consumed", "stored", "dropped", "dead_lettered"] {
        assert!(samples.windows(2).all(|w| w[0][key].as_i64() <= w[1][key].as_i64()), "{key} never goes back: {history}");
    }
    let last = samples.last().unwrap();
    assert_eq!(last["consumed"], records, "the last sample is now");
    assert_eq!(last["stored"].as_u64().unwrap() + last["dropped"].as_u64().unwrap() + last["dead_lettered"].as_u64().unwrap(), records);

    // The broker's high watermarks arrive every 2 s: lag is known, and 0.
    client
        .wait_for("lag 0 on every partition", "/api/stats", |s| {
            s["partitions"].as_array().is_some_and(|p| p.len() == PARTITIONS as usize && p.iter().all(|p| p["lag"] == 0))
        })
        .await;

    let plugins = client.get("/api/plugins").await;
    let mut page = Browser::open(&format!("{}/", client.base), 1400, 1100);
    page.wait_for("two refreshes of the page", "Number(document.body.dataset.refreshed) >= 2", Duration::from_secs(30));
    let status = page.eval("document.getElementById('status').textContent");
    assert!(status.as_str().unwrap().starts_with("live"), "the page reports an error: {status}");

    // Every chart: data points and labels on both axes.
    let charts = page.eval(CHARTS_JS);
    let ids: Vec<&str> = charts.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, CHARTS, "the charts the page draws");
    for chart in charts.as_array().unwrap() {
        let id = &chart["id"];
        assert!(chart["points"].as_u64() > Some(0), "chart {id} drew no points: {chart}");
        for axis in ["x", "y"] {
            let labels = chart["axes"][axis].as_array().unwrap_or_else(|| panic!("chart {id} has no {axis} axis labels: {chart}"));
            assert!(
                !labels.is_empty() && labels.iter().all(|l| l.as_str().is_some_and(|l| !l.is_empty())),
                "chart {id}, {axis} axis: {chart}"
            );
        }
    }
    let lag = charts.as_array().unwrap().iter().find(|c| c["id"] == "lag").unwrap();
    assert_eq!(lag["points"], PARTITIONS, "a bar per partition: {lag}");
    let throughput = charts.as_array().unwrap().iter().find(|c| c["id"] == "throughput").unwrap();
    assert!(throughput["points"].as_u64() >= Some(4 * 2), "the recent past, at once (four series): {throughput}");

    // A panel per transform, in chain order, with /api/plugins' numbers and
    // its own history.
    let panels = page.eval(PANELS_JS);
    let slots: Vec<&str> = panels.as_array().unwrap().iter().map(|p| p["slot"].as_str().unwrap()).collect();
    assert_eq!(slots, TRANSFORMS, "a panel per transform, in chain order");
    for panel in panels.as_array().unwrap() {
        let slot = panel["slot"].as_str().unwrap();
        let api = transform(&plugins, slot);
        for field in ["records_in", "kept", "dropped", "rejected", "errors", "memory_high_water_bytes", "version"] {
            let want = api[field].as_str().map_or_else(|| api[field].to_string(), str::to_string);
            assert_eq!(panel["fields"][field].as_str(), Some(want.as_str()), "{slot}'s {field}: panel {panel}, /api/plugins {api}");
        }
        let own: Vec<Value> = plugins["reload_history"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .filter(|r| r["what"] == slot)
            .map(|r| r["outcome"].clone())
            .collect();
        assert_eq!(panel["history"].as_array().unwrap(), &own[..own.len().min(8)], "{slot}'s history, newest first");
    }
    assert!(transform(&plugins, "enrich")["records_in"].as_u64() > Some(0));
    let [enrich_panel, bot_panel, anonymize_panel] = [0, 1, 2].map(|i| &panels[i]);
    assert_eq!(enrich_panel["rollout"], "canary", "{enrich_panel}");
    assert_eq!(enrich_panel["history"], json!(["canary", "aborted", "canary"]), "{enrich_panel}; {}", plugins["reload_history"]);
    let aborted = plugins["reload_history"].as_array().unwrap().iter().find(|r| r["outcome"] == "aborted").unwrap();
    assert!(aborted["detail"].as_str().unwrap().contains("in canary: replaced by enrich"), "{aborted}");
    assert_eq!(bot_panel["history"], json!(["accepted"]), "{bot_panel}");
    assert_eq!((anonymize_panel["rollout"].as_str(), anonymize_panel["history"].clone()), (Some("none"), json!([])), "{anonymize_panel}");

    // Hover: the browser's mouse over each chart shows the values there.
    let stats_now = client.get("/api/stats").await;
    for id in CHARTS {
        let rect = page.eval(&format!(
            "(() => {{ const c = document.getElementById('{id}'); c.scrollIntoView({{ block: 'center' }}); const r = c.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; }})()"
        ));
        let [x, y, w, h] = [0, 1, 2, 3].map(|i| rect[i].as_f64().unwrap());
        page.move_mouse(x + w / 2.0, y + h * 0.1);
        let readout = page.wait_for(
            &format!("the readout of {id}"),
            &format!("(() => {{ const t = document.getElementById('tooltip'); return t.dataset.chart === '{id}' && t.style.display === 'block' && t.textContent; }})()"),
            Duration::from_secs(5),
        );
        let readout = readout.as_str().unwrap();
        let drawn = page.eval(&format!("document.getElementById('{id}').dataset.hover"));
        assert_eq!(drawn.as_str(), Some(readout), "the canvas says what its tooltip shows");
        let expected: &[&str] = match id {
            "throughput" => &["consumed: ", "stored: ", "dead-lettered: ", "records/s"],
            "lag" => &["partition ", "records behind"],
            _ => &["clicks"],
        };
        assert!(expected.iter().all(|e| readout.contains(e)) && readout.chars().any(|c| c.is_ascii_digit()), "{id}'s readout: {readout:?}");
        if id == "lag" {
            // The top bar: the first partition's lag, as /api/stats says.
            let first = &stats_now["partitions"][0];
            assert_eq!(readout, format!("partition {}: {} records behind", first["partition"], first["lag"]), "{stats_now}");
        }
    }
    page.move_mouse(5.0, 5.0);
    page.wait_for(
        "the tooltip to go when the mouse leaves",
        "document.getElementById('tooltip').style.display === 'none'",
        Duration::from_secs(5),
    );

    // The screenshot: the whole page, the throughput chart's readout showing.
    page.fit_to_content();
    let rect = page.eval("(() => { scrollTo(0, 0); const r = document.getElementById('throughput').getBoundingClientRect(); return [r.left, r.top, r.width]; })()");
    page.move_mouse(rect[0].as_f64().unwrap() + rect[2].as_f64().unwrap() * 0.6, rect[1].as_f64().unwrap() + 60.0);
    let showing = "document.getElementById('tooltip').dataset.chart === 'throughput'";
    page.wait_for("the throughput readout", showing, Duration::from_secs(5));
    let artifacts = support::root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard-panels.png");
    page.screenshot(&shot);
    assert_eq!(page.eval(showing), true, "the readout was up while the screenshot was taken");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 50_000, "screenshot of {} bytes", png.len());

    // The canary aborted through the API: the panel shows the decision.
    client.post("/api/plugins/enrich/abort").await;
    let enrich_js = r#"(() => { const a = document.querySelector('article.transform[data-slot="enrich"]');
        return a.querySelector("[data-rollout]").dataset.rollout === "none" && a.querySelector("tr[data-outcome]").dataset.outcome; })()"#;
    let latest = page.wait_for("enrich's panel to show the abort", enrich_js, Duration::from_secs(15));
    assert_eq!(latest, "rolled_back");
    drop(page);

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    serving.join().unwrap().unwrap();
}
