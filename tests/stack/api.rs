//! The HTTP API against a running `clickstream run` on the real services:
//! every endpoint's numbers agree with what was produced and with
//! PostgreSQL, bad parameters get 400 with a reason, the reload endpoint
//! needs its token, and the dashboard renders its charts in headless
//! Chromium (screenshot saved under target/test-artifacts/).

use clickstream_testkit as support;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clickstream::produce::{self, Generator, GeneratorConfig};
use clickstream::stats::ReloadOutcome;
use serde_json::Value;
use sqlx::PgPool;
use support::reference::{reference, WINDOW_MS};

const WAIT: Duration = Duration::from_secs(180);
const TOKEN: &str = "test-token-0123456789abcdef";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or_else(|e| panic!("GET {path}: body is not JSON: {e}"));
        (status, body)
    }

    /// Waits up to a minute for `path` to answer 200.
    async fn wait_for_ok(&self, path: &str) {
        support::wait_until(Duration::from_secs(60), &format!("{path} to answer 200"), || {
            let request = self.http.get(format!("{}{path}", self.base));
            async move { request.send().await.is_ok_and(|r| r.status() == 200) }
        })
        .await;
    }

    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn text(&self, path: &str) -> (u16, String, String) {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = response.status().as_u16();
        let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, kind, response.text().await.unwrap())
    }

    async fn post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

/// Samples of a Prometheus exposition: `name{labels}` → value. Fails on any
/// line that is not a comment or a well-formed sample.
/// An API in this process on a free loopback port, serving until `stop`
/// turns true; no pipeline yet.
struct Served {
    stats: Arc<clickstream::stats::Stats>,
    api: clickstream::runtime::api::Api,
    client: Client,
    stop: tokio::sync::watch::Sender<bool>,
    stopped: tokio::sync::watch::Receiver<bool>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve_api() -> Served {
    let stats = Arc::new(clickstream::stats::Stats::default());
    let api = clickstream::runtime::api::Api::new(stats.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = Client { base: format!("http://{}", listener.local_addr().unwrap()), http: reqwest::Client::new() };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(api.clone().serve(listener, stopped.clone()));
    Served { stats, api, client, stop, stopped, serving }
}

fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("malformed metrics line {l:?}"));
            (key.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("malformed value in {l:?}")))
        })
        .collect()
}

fn metric(metrics: &BTreeMap<String, f64>, key: &str) -> f64 {
    *metrics.get(key).unwrap_or_else(|| panic!("/metrics has no {key}"))
}

fn sum_of(metrics: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    metrics.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}

async fn produce_to(topic: &str, config: GeneratorConfig) -> produce::Summary {
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, topic, 4)
        .await
        .unwrap_or_else(|e| panic!("broker at {brokers} refused ({e}): run `scripts/services up`"));
    produce::to_kafka(Generator::new(config), &brokers, topic, None, &Default::default(), &indicatif::ProgressBar::hidden()).await.unwrap()
}

async fn settled(pool: &PgPool, records: i64) -> bool {
    support::count(pool, "SELECT count(*) FROM events").await + support::count(pool, "SELECT count(*) FROM dead_letters").await >= records
        && support::aggregation_caught_up(pool).await
        && support::count(pool, "SELECT count(*) FROM aggregates WHERE indexed_at IS NULL").await == 0
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reports_what_the_pipeline_did() {
    let f = support::Fixture::new("api").await;
    let port = free_port();
    let extra = format!(
        "[aggregate]\ninterval_ms = 500\nallowed_lateness_secs = 0\n\n[api]\nlisten = \"127.0.0.1:{port}\"\nreload_token = \"{TOKEN}\"\n"
    );
    let text = std::fs::read_to_string(&f.pipeline).unwrap().replace("[api]\nlisten = \"127.0.0.1:0\"\n", "");
    std::fs::write(&f.pipeline, text + &extra).unwrap();

    let now = chrono::Utc::now().timestamp_millis();
    let summary = produce_to(
        &f.topic,
        GeneratorConfig {
            events: 3000,
            users: 200,
            urls: 30,
            seed: 7,
            start_ms: now - 20 * 60_000,
            span_secs: 20 * 60,
            bad_fraction: 0.05,
            ..GeneratorConfig::default()
        },
    )
    .await;
    let records = summary.records as i64;
    let expected_dead = summary.dead_letters() as i64;
    assert!(expected_dead > 0, "the generator made bad records");

    let mut host = support::Host::start(&f.pipeline, &f.dir.path().join("host.log"));
    let client = Client { base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new() };
    let log = host.log.clone();
    client.wait_for_ok("/health").await;
    client.wait_for_ok("/ready").await;
    let ready = client.ok("/ready").await;
    for check in ["postgres", "kafka", "search", "plugins"] {
        assert_eq!(ready["checks"][check]["ok"], true, "{check}: {ready}");
    }
    assert_eq!(ready["checks"]["kafka"]["detail"]["partitions"], 4);

    support::wait_until(WAIT, "every record stored or dead-lettered, aggregated and indexed", || settled(&f.pool, records)).await;
    let stored = support::count(&f.pool, "SELECT count(*) FROM events").await;
    let dead = support::count(&f.pool, "SELECT count(*) FROM dead_letters").await;
    assert_eq!(stored + dead, records);
    assert_eq!(dead, expected_dead, "dead letters in PostgreSQL");

    // /metrics: the counters reconcile with what was produced and stored.
    let (status, kind, text) = client.text("/metrics").await;
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let m = parse_metrics(&text);
    assert_eq!(metric(&m, "clickstream_records_consumed_total"), records as f64);
    assert_eq!(metric(&m, "clickstream_events_stored_total"), stored as f64);
    assert_eq!(metric(&m, "clickstream_records_dead_lettered_total"), dead as f64);
    assert_eq!(
        metric(&m, "clickstream_events_stored_total") + metric(&m, "clickstream_records_dead_lettered_total"),
        metric(&m, "clickstream_records_consumed_total"),
        "stored + dead-lettered = consumed"
    );
    assert_eq!(metric(&m, "clickstream_consumed_bytes_total"), summary.bytes as f64);
    let by_kind: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT stage, kind, count(*) FROM dead_letters GROUP BY 1, 2").fetch_all(&f.pool).await.unwrap();
    for (stage, kind, n) in &by_kind {
        assert_eq!(
            metric(&m, &format!("clickstream_dead_letters_total{{stage=\"{stage}\",kind=\"{kind}\"}}")),
            *n as f64,
            "{stage}/{kind}"
        );
    }
    assert_eq!(sum_of(&m, "clickstream_dead_letters_total{"), dead as f64);
    let batches = metric(&m, "clickstream_store_batches_total");
    assert!(batches >= 1.0);
    assert_eq!(metric(&m, "clickstream_batch_duration_seconds_count{stage=\"store\"}"), batches);
    assert_eq!(metric(&m, "clickstream_batch_records_sum{stage=\"store\"}"), records as f64);
    assert_eq!(metric(&m, "clickstream_batch_records_sum{stage=\"source\"}"), records as f64);
    assert_eq!(metric(&m, "clickstream_batch_duration_seconds_bucket{stage=\"store\",le=\"+Inf\"}"), batches);
    assert!(metric(&m, "clickstream_batch_duration_seconds_count{stage=\"aggregate\"}") >= 1.0);
    assert!(metric(&m, "clickstream_batch_duration_seconds_count{stage=\"index\"}") >= 1.0);
    assert!(metric(&m, "clickstream_plugin_calls_total{plugin=\"enrich\"}") >= 1.0);
    assert!(metric(&m, "clickstream_plugin_calls_total{plugin=\"aggregate\"}") >= 1.0);
    assert_eq!(sum_of(&m, "clickstream_plugin_errors_total{plugin=\"enrich\""), 0.0);
    assert!(metric(&m, "clickstream_plugin_memory_high_water_bytes{plugin=\"enrich\"}") > 0.0);
    let windows_in_db = support::count(&f.pool, "SELECT count(*) FROM aggregate_windows").await as f64;
    assert!(metric(&m, "clickstream_windows_aggregated_total") >= windows_in_db);
    let docs_in_db = support::count(&f.pool, "SELECT count(*) FROM aggregates").await as f64;
    assert!(metric(&m, "clickstream_documents_indexed_total") >= docs_in_db, "every aggregate row indexed at least once");
    assert_eq!(metric(&m, "clickstream_documents_rejected_total"), 0.0);
    assert_eq!(metric(&m, "clickstream_windows_failing"), 0.0);
    assert!(metric(&m, "clickstream_event_to_index_seconds_count") >= docs_in_db);
    assert_eq!(metric(&m, "clickstream_up"), 1.0);
    // A real Prometheus text parser reads the same scrape: the store stage's
    // histogram has every batch in its +Inf bucket.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("/metrics parses");
    let store = scrape
        .samples
        .iter()
        .find(|s| s.metric == "clickstream_batch_duration_seconds" && s.labels.get("stage") == Some("store"))
        .expect("the store stage's histogram");
    let prometheus_parse::Value::Histogram(buckets) = &store.value else { panic!("not a histogram: {:?}", store.value) };
    assert_eq!(buckets.last().map(|b| (b.less_than, b.count)), Some((f64::INFINITY, batches)));

    // Lag: known for every partition, and zero once everything is stored
    // (the client reports high watermarks every 2 s).
    support::wait_until(Duration::from_secs(30), "lag of 0 on all 4 partitions", || {
        let http = client.http.clone();
        let url = format!("{}/metrics", client.base);
        let topic = f.topic.clone();
        async move {
            let m = parse_metrics(&http.get(url).send().await.unwrap().text().await.unwrap());
            (0..4).all(|p| m.get(&format!("clickstream_consumer_lag{{topic=\"{topic}\",partition=\"{p}\"}}")) == Some(&0.0))
        }
    })
    .await;
    let stats = client.ok("/api/stats").await;
    assert_eq!(stats["stored"], stored);
    assert_eq!(stats["lag_total"], 0);
    assert_eq!(stats["partitions"].as_array().unwrap().len(), 4);
    let high: i64 = stats["partitions"].as_array().unwrap().iter().map(|p| p["high_watermark"].as_i64().unwrap()).sum();
    assert_eq!(high, records, "high watermarks add up to the records produced");

    // /api/aggregates: merged across windows, equal to a reference computed
    // here from the stored events.
    let expected = reference(&f.pool).await;
    let (from, to) = (now - 30 * 60_000, now + 60_000);
    let mut by_url: HashMap<String, (u64, u64, u64)> = HashMap::new();
    let mut by_country: HashMap<String, u64> = HashMap::new();
    for ((window, url, country), e) in &expected {
        if (from..to).contains(window) {
            let g = by_url.entry(url.clone()).or_default();
            g.0 += e.clicks;
            g.1 += e.total_ms;
            g.2 += e.samples;
            *by_country.entry(country.clone()).or_default() += e.clicks;
        }
    }
    let answer = client.ok(&format!("/api/aggregates?from={from}&to={to}&by=url&limit=1000")).await;
    let groups = answer["groups"].as_array().unwrap();
    assert_eq!(groups.len(), by_url.len(), "one group per URL");
    assert_eq!(answer["total_groups"], by_url.len());
    for g in groups {
        let url = g["url"].as_str().unwrap();
        let (clicks, total, samples) = by_url[url];
        assert_eq!(
            (g["clicks"].as_u64(), g["time_spent_total_ms"].as_u64(), g["time_spent_samples"].as_u64()),
            (Some(clicks), Some(total), Some(samples)),
            "{url}"
        );
        match g["avg_time_spent_s"].as_f64() {
            Some(avg) => assert!((avg - total as f64 / samples as f64 / 1000.0).abs() < 1e-9, "{url}: average is total/samples"),
            None => assert_eq!(samples, 0),
        }
    }
    let clicks: Vec<u64> = groups.iter().map(|g| g["clicks"].as_u64().unwrap()).collect();
    assert!(clicks.windows(2).all(|w| w[0] >= w[1]), "sorted by clicks: {clicks:?}");

    let top = client.ok(&format!("/api/aggregates?from={from}&to={to}&by=country&limit=3")).await;
    let mut ranked: Vec<(&String, &u64)> = by_country.iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let got: Vec<(String, u64)> = top["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["country"].as_str().unwrap().to_string(), g["clicks"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64)> = ranked.iter().take(3).map(|(c, n)| ((*c).clone(), **n)).collect();
    assert_eq!(got, want, "top 3 countries");

    let (url, country) = {
        let ((_, url, country), _) = expected.iter().max_by_key(|(_, e)| e.clicks).unwrap();
        (url.clone(), country.clone())
    };
    let query = format!("/api/aggregates?from={from}&to={to}&url={}&country={country}&series=true", urlencode(&url));
    let one = client.ok(&query).await;
    let group = &one["groups"][0];
    assert_eq!(one["groups"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!((group["url"].as_str().unwrap(), group["country"].as_str().unwrap()), (url.as_str(), country.as_str()));
    let series: Vec<(i64, u64)> = group["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["window_start_ms"].as_i64().unwrap(), p["clicks"].as_u64().unwrap()))
        .collect();
    let want: Vec<(i64, u64)> = expected
        .iter()
        .filter(|((w, u, c), _)| *u == url && *c == country && (from..to).contains(w))
        .map(|((w, _, _), e)| (*w, e.clicks))
        .collect();
    assert_eq!(series, want, "per-window series of {url} {country}");
    assert!(series.iter().all(|(w, _)| w % WINDOW_MS == 0));

    for (bad, mention) in [
        ("/api/aggregates?limit=0", "limit"),
        ("/api/aggregates?from=yesterday", "from"),
        ("/api/aggregates?by=city", "by"),
        ("/api/aggregates?from=2000&to=1000", "before"),
        ("/api/aggregates?colour=red", "colour"),
        ("/api/dead-letters?limit=lots", "limit"),
        ("/api/dead-letters?page=2", "page"),
        ("/api/windows/failing?limit=many", "limit"),
    ] {
        let (status, body) = client.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains(mention), "{bad}: {body}");
    }
    let (status, body) = client.get("/api/nothing").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
    let (status, body) = client.get("/api/plugins/enrich/reload").await;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].is_string());

    // /api/dead-letters: the pending count and paging by cursor; no
    // payload text unless api.dead_letter_previews (tests/api_limits.rs).
    let first = client.ok("/api/dead-letters?limit=10").await;
    assert_eq!(first["pending"], dead);
    assert_eq!(first["pending_capped"], false);
    let items = first["items"].as_array().unwrap();
    assert_eq!(items.len(), 10.min(dead as usize));
    assert!(items.iter().all(|i| i["reason"].as_str().is_some_and(|r| !r.is_empty())));
    assert!(items.iter().all(|i| i.get("payload_preview").is_none()), "no previews by default");
    let ids = |v: &Value| v["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect::<Vec<_>>();
    let a = ids(&first);
    if dead > 10 {
        assert_eq!(first["next"].as_i64(), a.last().copied());
        let second = client.ok(&format!("/api/dead-letters?limit=10&after={}", first["next"])).await;
        let b = ids(&second);
        assert!(b.iter().all(|id| !a.contains(id)), "pages do not overlap");
        assert!(b.first() > a.last(), "oldest first");
    }

    // /api/windows/failing: nothing is set aside on a healthy pipeline (the
    // failing case is proven in tests/aggregate.rs).
    let failing = client.ok("/api/windows/failing").await;
    assert_eq!((failing["failing"].as_u64(), failing["items"].as_array().map(Vec::len)), (Some(0), Some(0)), "{failing}");

    // /api/plugins and the reload endpoint.
    let plugins = client.ok("/api/plugins").await;
    let enrich = plugins["plugins"].as_array().unwrap().iter().find(|p| p["slot"] == "enrich").unwrap().clone();
    assert_eq!(enrich["content_hash"], sha256_hex(&support::plugin("enrich")));
    assert!(enrich["calls"].as_u64().unwrap() >= 1);
    assert_eq!(enrich["errors"], 0);
    assert!(enrich["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert_eq!(client.post("/api/plugins/enrich/reload", None).await.0, 401);
    assert_eq!(client.post("/api/plugins/enrich/reload", Some("wrong-token-0123456789")).await.0, 401);
    let (status, body) = client.post("/api/plugins/geo/reload", Some(TOKEN)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = client.post("/api/plugins/enrich/reload", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["plugin"]["content_hash"], enrich["content_hash"]);
    let plugins = client.ok("/api/plugins").await;
    let history = plugins["reload_history"].as_array().unwrap();
    assert!(history.iter().any(|r| r["what"] == "enrich" && r["outcome"] == "accepted"), "{plugins}");
    let m = parse_metrics(&client.text("/metrics").await.2);
    assert_eq!(metric(&m, "clickstream_reloads_total{what=\"enrich\",outcome=\"accepted\"}"), 1.0);

    // The dashboard, in a real browser, served by the `clickstream run`
    // process: the charts draw data from the API (tests/dashboard.rs checks
    // the page in detail, in process).
    let mut page = support::browser::Browser::open(&format!("{}/", client.base), 1400, 1100);
    page.wait_for("two refreshes of the page", "Number(document.body.dataset.refreshed) >= 2", Duration::from_secs(30));
    let points = |page: &mut support::browser::Browser, id: &str| {
        page.eval(&format!("Number(document.getElementById('{id}').dataset.points)")).as_u64().unwrap_or(0)
    };
    assert!(points(&mut page, "urls") > 0, "top-URL chart drew no points");
    assert!(points(&mut page, "countries") > 0, "country chart drew no points");
    assert_eq!(points(&mut page, "lag"), 4, "lag chart has one bar per partition");
    assert!(points(&mut page, "throughput") > 0, "throughput chart drew no points");
    let text = page.eval("document.body.innerText").as_str().unwrap_or_default().to_string();
    assert!(text.contains("live · updated"), "status line reports no error");
    assert!(text.contains(enrich["version"].as_str().unwrap()), "the enrich panel shows the version");
    assert!(text.contains("accepted"), "reload history shows the reload");
    let artifacts = support::root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("dashboard.png");
    page.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000, "screenshot is blank");

    host.signal("TERM");
    assert_eq!(host.wait(), Some(0), "clean exit; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// In-process: `/ready` says why it is not ready (starting; search server
/// unreachable), and the reload endpoint is refused without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_what_is_missing_and_reload_needs_a_configured_token() {
    let f = support::Fixture::new("api_ready").await;
    let search = support::PrivateSearch::start();
    let text = std::fs::read_to_string(&f.pipeline).unwrap().replace(&support::search_url(), &search.url);
    std::fs::write(&f.pipeline, text).unwrap();
    let config = support::load_config(&f.pipeline);
    clickstream::kafka::ensure_topic(&support::brokers(), &config.source.topics[0], 1).await.unwrap();

    let Served { stats, api, client, stop, stopped, serving } = serve_api().await;

    let (status, body) = client.get("/ready").await;
    assert_eq!(status, 503);
    assert!(body["reason"].as_str().unwrap().contains("starting"), "{body}");
    assert_eq!(client.get("/health").await.0, 200);
    let (status, _) = client.get("/api/plugins").await;
    assert_eq!(status, 503, "no pipeline yet");

    let running = tokio::spawn({
        let api = api.clone();
        clickstream::runtime::pipeline::run_until_stopped(config, stopped, Default::default(), stats, move |p| api.serve_pipeline(p))
    });
    client.wait_for_ok("/ready").await;

    let (status, body) = client.post("/api/plugins/enrich/reload", Some(TOKEN)).await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("api.reload_token"), "{body}");

    search.freeze(true);
    let (status, body) = client.get("/ready").await;
    search.freeze(false);
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["search"]["ok"], false, "{body}");
    assert_eq!(body["checks"]["postgres"]["ok"], true, "{body}");
    assert!(body["checks"]["search"]["error"].as_str().unwrap().contains(&search.url), "{body}");
    assert_eq!(client.get("/ready").await.0, 200, "ready again once the search server answers");

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    serving.await.unwrap().unwrap();
}

/// In-process: the database and search URLs carry passwords (in the
/// userinfo and as `?password=`); `/ready` shows both URLs without them, and
/// a pipeline.toml edit refused for a URL quotes it without its password in
/// the reload history `/api/plugins` serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_url_password_never_reaches_ready() {
    support::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let mut db = reqwest::Url::parse(&support::fresh_database("api_redact").await).unwrap();
    if db.username().is_empty() {
        db.set_username("postgres").unwrap();
    }
    db.set_password(Some("db-s3cret-in-userinfo")).unwrap();
    db.query_pairs_mut().append_pair("password", "db-s3cret-in-query");
    let search = support::search_url().replacen("://", "://elastic:search-s3cret@", 1);
    let pipeline = support::write_pipeline(dir.path(), &support::unique("redact_clicks"), &support::unique("redact"), db.as_str(), "");
    let text = std::fs::read_to_string(&pipeline)
        .unwrap()
        .replace(&format!("url = \"{}\"", support::search_url()), &format!("url = \"{search}\""));
    std::fs::write(&pipeline, &text).unwrap();
    let config = support::load_config(&pipeline);
    assert_eq!(config.index.url, search, "the search URL with its credentials is what runs");
    clickstream::kafka::ensure_topic(&support::brokers(), &config.source.topics[0], 1).await.unwrap();

    let Served { stats, api, client, stop, stopped, serving } = serve_api().await;
    let running = tokio::spawn({
        let api = api.clone();
        clickstream::runtime::pipeline::run_until_stopped(config, stopped, Default::default(), stats.clone(), move |p| {
            api.serve_pipeline(p)
        })
    });
    client.wait_for_ok("/ready").await;

    let (status, _, ready) = client.text("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert!(!ready.contains("s3cret"), "a password in /ready: {ready}");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    let shown = ready["checks"]["postgres"]["detail"].as_str().unwrap();
    assert!(shown.starts_with("postgres://postgres:***@") && shown.ends_with("?password=***"), "{shown}");
    let shown = ready["checks"]["search"]["detail"].as_str().unwrap();
    assert!(shown.starts_with("http://elastic:***@"), "{shown}");

    // A refused edit quoting the URL: the error names the key, not the password.
    std::fs::write(&pipeline, text.replace(&search, "ftp://elastic:search-s3cret@search.example")).unwrap();
    support::wait_until(Duration::from_secs(60), "the edit refused", || {
        let stats = stats.clone();
        async move { stats.reloads_of("pipeline.toml", ReloadOutcome::Rejected) > 0 }
    })
    .await;
    let (status, _, plugins) = client.text("/api/plugins").await;
    assert_eq!(status, 200, "{plugins}");
    assert!(plugins.contains("index.url") && plugins.contains("ftp://elastic:***@search.example"), "{plugins}");
    assert!(!plugins.contains("s3cret"), "a password in the reload history: {plugins}");

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    serving.await.unwrap().unwrap();
}

/// Replaces `file` with `text` as an editor does (beside it, then renamed
/// over): a watcher never reads half a file.
fn rewrite(file: &Path, text: &str) {
    let tmp = file.with_extension("toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// As reproduced for #28: a pipeline.toml edit that breaks the
/// `reload_token` line (an unclosed quote) is refused, and the refusal —
/// in the reload history anyone can read, and in the log — names the line
/// and column, never the line itself with the token. The running token
/// still authorises, and a guess does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_reload_token_line_reaches_neither_the_api_nor_the_log() {
    const SECRET: &str = "leak-me-not-0123456789abcdef";
    let token_line = format!("reload_token = \"{SECRET}\"\n");
    let f = support::Fixture::with("api_token_line", &token_line).await;
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 1).await.unwrap();
    let mut host = support::Host::start(&f.pipeline, &f.dir.path().join("host.log"));

    // The API binds port 0 and says where in its first lines.
    const AT: &str = "HTTP API and dashboard at http://";
    support::wait_until(Duration::from_secs(60), "the API's address in the log", || {
        let found = host.log().contains(AT);
        async move { found }
    })
    .await;
    let log = host.log();
    let address = log[log.find(AT).unwrap() + AT.len()..].split('/').next().unwrap().to_string();
    let client = Client { base: format!("http://{address}"), http: reqwest::Client::new() };
    client.wait_for_ok("/ready").await;

    let text = std::fs::read_to_string(&f.pipeline).unwrap();
    let broken = text.replace(&token_line, &format!("reload_token = \"{SECRET}\n"));
    assert_ne!(broken, text);
    rewrite(&f.pipeline, &broken);
    let rejected = || async {
        let plugins = client.ok("/api/plugins").await;
        plugins["reload_history"].as_array().unwrap().iter().any(|r| r["what"] == "pipeline.toml" && r["outcome"] == "rejected")
    };
    support::wait_until(Duration::from_secs(60), "the broken edit refused", rejected).await;

    let (status, _, plugins) = client.text("/api/plugins").await;
    assert_eq!(status, 200, "{plugins}");
    assert!(!plugins.contains(SECRET), "the token in /api/plugins: {plugins}");
    let line = broken.lines().position(|l| l.starts_with("reload_token")).unwrap() + 1;
    assert!(plugins.contains(&format!("line {line}, column")) && plugins.contains("invalid basic string"), "{plugins}");
    let logged = host.log();
    assert!(logged.contains("pipeline.toml rejected") && !logged.contains(SECRET), "the token in the log:\n{logged}");

    let (status, body) = client.post("/api/plugins/enrich/reload", Some("leak-me-not-0123456789abcdeg")).await;
    assert_eq!(status, 401, "a guess: {body}");
    let (status, body) = client.post("/api/plugins/enrich/reload", Some(SECRET)).await;
    assert_eq!(status, 200, "the running token still authorises: {body}");

    host.check_alive().unwrap();
    let logged = host.stop().unwrap();
    assert!(!logged.contains(SECRET), "the token in the log:\n{logged}");
}

/// A shadow run's sampled differences are client data (IPs, URLs, user
/// agents): `/api/plugins` shows their values only to a request bearing
/// the reload token; the counts by field are shown to anyone, and a wrong
/// token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_sample_values_are_shown_only_to_a_request_bearing_the_reload_token() {
    let f = support::Fixture::with("api_shadow", &format!("reload_token = \"{TOKEN}\"\n")).await;
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 1).await.unwrap();
    let enrich = f.dir.path().join("enrich.wasm");
    std::fs::copy(support::plugin("enrich"), &enrich).unwrap();
    support::set_chain(&f.pipeline, &[("enrich", &enrich)]);
    let text = std::fs::read_to_string(&f.pipeline).unwrap();
    rewrite(&f.pipeline, &text.replace("enrich.wasm\"\n", "enrich.wasm\"\nrollout = \"shadow\"\n"));
    let config = support::load_config(&f.pipeline);

    let Served { stats, api, client, stop, stopped, serving } = serve_api().await;
    let running = tokio::spawn({
        let api = api.clone();
        clickstream::runtime::pipeline::run_until_stopped(config, stopped, Default::default(), stats, move |p| api.serve_pipeline(p))
    });
    client.wait_for_ok("/api/plugins").await;
    // The canary build appends "+canary" to every browser name.
    let tmp = enrich.with_extension("tmp");
    std::fs::copy(support::plugin("enrich-canary"), &tmp).unwrap();
    std::fs::rename(&tmp, &enrich).unwrap();
    let shadow = |plugins: &Value| plugins["plugins"].as_array().unwrap().iter().find(|p| p["slot"] == "enrich").unwrap()["shadow"].clone();
    support::wait_until(WAIT, "the candidate in shadow", || async { !shadow(&client.ok("/api/plugins").await).is_null() }).await;
    produce_to(&f.topic, GeneratorConfig { events: 300, seed: 28, ..GeneratorConfig::default() }).await;
    support::wait_until(WAIT, "sampled differences", || async {
        shadow(&client.ok("/api/plugins").await)["report"]["sample"]
            .as_array()
            .is_some_and(|s| s.len() == clickstream::plugin::shadow::SAMPLE)
    })
    .await;

    let (status, _, public) = client.text("/api/plugins").await;
    assert_eq!(status, 200, "{public}");
    assert!(!public.contains("+canary"), "a candidate's value without the token: {public}");
    let public = shadow(&serde_json::from_str(&public).unwrap());
    assert_eq!(public["samples"], false, "{public}");
    assert!(public["report"]["by_field"]["browser"].as_u64().is_some_and(|n| n > 0), "the counts are public: {public}");
    for d in public["report"]["sample"].as_array().unwrap() {
        assert_eq!(d["field"], "browser", "{d}");
        assert!(d["event_id"].is_string() && d.get("serving").is_none() && d.get("candidate").is_none(), "{d}");
    }

    let authorised = client.http.get(format!("{}/api/plugins", client.base)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(authorised.status(), 200);
    let authorised = shadow(&authorised.json().await.unwrap());
    assert_eq!(authorised["samples"], true, "{authorised}");
    for d in authorised["report"]["sample"].as_array().unwrap() {
        // "Chrome" → "Chrome+canary"; no browser → "unknown+canary".
        assert!(d["serving"].is_string() && d["candidate"].as_str().unwrap().ends_with("+canary"), "{d}");
    }
    let guessed = client.http.get(format!("{}/api/plugins", client.base)).bearer_auth("wrong-token-0123456789").send().await.unwrap();
    assert_eq!(guessed.status(), 401);

    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    serving.await.unwrap().unwrap();
}
