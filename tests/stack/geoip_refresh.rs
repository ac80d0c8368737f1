//! GeoIP databases refreshed while the pipeline runs, against the real
//! services: a database renamed over under load answers with the new file
//! from the swap on, and no event is lost or doubled; broken files are
//! refused, visibly (log, reload history, `/api/enrichment-data`), and the
//! loaded database keeps answering; and the check that decides, on its own.
//! The MMDB files are tiny ones written by `tests/geoip/write_mmdb.py`.

use clickstream_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickstream::plugin::geoip::{check, GeoIp, GeoIpError};
use clickstream::runtime::pipeline::{run_until_stopped, Pipeline, PipelineError};
use clickstream::stats::ReloadOutcome;
use clickstream::stats::Stats;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sqlx::PgPool;

/// Where every test click comes from: TEST-NET-2, which no real database
/// places anywhere, so only the test's files answer for it.
const CLIENT_IP: &str = "198.51.100.7";

/// The country and build date of the first file, and of its replacement.
const FIRST: (&str, u64) = ("NL", 1_700_000_000);
const SECOND: (&str, u64) = ("SE", 1_800_000_000);

const WAIT: Duration = Duration::from_secs(120);

/// The pipeline tests produce under load; one at a time keeps them from
/// slowing each other down on a small machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tiny IPv6 database (IPv4 under `::/96`, as the `@ip-location-db`
/// files hold it) placing [`CLIENT_IP`] in `country`, built at
/// `build_epoch`; `extra` adds keys to its spec (see write_mmdb.py).
fn database(path: &Path, (country, build_epoch): (&str, u64), extra: Value) -> Value {
    let mut spec = json!({
        "path": path,
        "ip_version": 6,
        "layout": "flat",
        "networks": [["198.51.100.0/24", country, "Testville"]],
        "metadata": {"build_epoch": build_epoch},
    });
    for (key, value) in extra.as_object().expect("an object") {
        match (spec.get_mut(key), value) {
            (Some(Value::Object(base)), Value::Object(more)) => base.extend(more.clone()),
            (Some(Value::Array(base)), Value::Array(more)) => base.extend(more.iter().cloned()),
            _ => spec[key] = value.clone(),
        }
    }
    spec
}

fn write(specs: Value) {
    support::mmdb::write_mmdb(&specs.to_string());
}

/// What the pipeline under test exposes: its GeoIP databases, its
/// counters, and its HTTP API.
struct Running {
    geoip: Arc<GeoIp>,
    stats: Arc<Stats>,
    api: String,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<Pipeline, PipelineError>>,
}

impl Running {
    async fn get(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.api)).await.unwrap();
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.unwrap()
    }

    fn country_of_the_client(&self) -> Option<String> {
        self.geoip.lookup(CLIENT_IP).and_then(|found| found.country)
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Runs `f`'s pipeline in this process with `geoip` as its only database,
/// the enrich transform, and the API on a free loopback port.
async fn start(f: &support::Fixture, geoip: &Path) -> Running {
    clickstream::kafka::ensure_topic(&support::brokers(), &f.topic, 2).await.unwrap();
    let text = std::fs::read_to_string(&f.pipeline).unwrap();
    let listed = text.lines().find(|l| l.starts_with("databases = ")).expect("write_pipeline lists [geoip] databases").to_string();
    std::fs::write(&f.pipeline, text.replace(&listed, &format!("databases = [{:?}]", geoip.display().to_string()))).unwrap();
    let config = support::load_config(&f.pipeline);

    let stats = Arc::new(Stats::default());
    let api = clickstream::runtime::api::Api::new(stats.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(api.clone().serve(listener, stopped.clone()));
    let started: Arc<Mutex<Option<Arc<GeoIp>>>> = Default::default();
    let task = tokio::spawn(run_until_stopped(config, stopped, Default::default(), stats.clone(), {
        let started = started.clone();
        move |p: &Pipeline| {
            api.serve_pipeline(p);
            *started.lock().unwrap() = Some(p.geoip.clone());
        }
    }));
    let deadline = Instant::now() + WAIT;
    let geoip = loop {
        if let Some(geoip) = started.lock().unwrap().clone() {
            break geoip;
        }
        assert!(Instant::now() < deadline, "the pipeline did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    Running { geoip, stats, api: base, stop, task }
}

/// Clicks from [`CLIENT_IP`], about 500 a second, until `stop`; each event
/// id with the instant it was handed to the producer (it cannot be looked
/// up before then). Returns once every one is delivered.
async fn produce_until(topic: String, stop: Arc<AtomicBool>) -> Vec<(String, Instant)> {
    let producer: FutureProducer = clickstream::kafka::client_config(&support::brokers(), &Default::default()).create().unwrap();
    let (mut sent, mut deliveries) = (Vec::new(), Vec::new());
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for _ in 0..5 {
            let n = sent.len();
            let (id, user) = (format!("geo-{n:06}"), format!("user-{}", n % 40));
            let click = json!({
                "event_id": id,
                "user_id": user,
                "timestamp": chrono::Utc::now().timestamp_millis(),
                "url": format!("https://shop.example/p/{}", n % 7),
                "ip": CLIENT_IP,
            })
            .to_string();
            let delivery = producer.send_result(FutureRecord::to(&topic).key(&user).payload(&click)).map_err(|(e, _)| e).unwrap();
            deliveries.push(delivery);
            sent.push((id, Instant::now()));
        }
    }
    for delivery in deliveries {
        delivery.await.expect("the producer is alive").map_err(|(e, _)| e).expect("delivered");
    }
    sent
}

async fn stored(pool: &PgPool) -> usize {
    support::count(pool, "SELECT count(*) FROM events").await as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_renamed_over_under_load_answers_with_the_new_file_from_the_swap_on_and_loses_or_doubles_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("geoip_swap").await;
    let (geo, next) = (f.dir.path().join("geo.mmdb"), f.dir.path().join("geo.mmdb.next"));
    write(json!([database(&geo, FIRST, json!({})), database(&next, SECOND, json!({}))]));
    let running = start(&f, &geo).await;
    assert_eq!(running.country_of_the_client().as_deref(), Some(FIRST.0));

    let stop = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn(produce_until(f.topic.clone(), stop.clone()));
    support::wait_until(WAIT, "events flowing", || async { stored(&f.pool).await >= 300 }).await;
    let stored_before: BTreeSet<String> =
        sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&f.pool).await.unwrap().into_iter().collect();
    // As `scripts/services geoip-update` does: a complete file renamed over the old one.
    std::fs::rename(&next, &geo).unwrap();
    let renamed = Instant::now();
    while running.geoip.databases()[0].build_epoch != SECOND.1 {
        assert!(renamed.elapsed() < WAIT, "the new file never served");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let produced = producing.await.unwrap();
    support::wait_until(WAIT, "every event stored", || async { stored(&f.pool).await >= produced.len() }).await;
    let rows: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT event_id, \"partition\", country FROM events ORDER BY \"partition\", \"offset\"")
            .fetch_all(&f.pool)
            .await
            .unwrap();
    let stats = running.stats.clone();
    running.stop().await;

    assert_eq!(rows.len(), produced.len(), "each event stored once");
    let country: BTreeMap<&str, &str> = rows.iter().map(|(id, _, country)| (id.as_str(), country.as_str())).collect();
    assert_eq!(country.keys().copied().collect::<BTreeSet<_>>(), produced.iter().map(|(id, _)| id.as_str()).collect(), "nothing lost");
    assert!(stored_before.len() >= 300);
    for id in &stored_before {
        assert_eq!(country[id.as_str()], FIRST.0, "{id} was stored before the file was replaced");
    }
    let after: Vec<&str> = produced.iter().filter(|(_, at)| *at > seen).map(|(id, _)| id.as_str()).collect();
    assert!(after.len() >= 200, "{} events produced after the swap", after.len());
    for id in &after {
        assert_eq!(country[id], SECOND.0, "{id} was produced after the new file served");
    }
    // Per partition, in offset order: the first country, then the second, never back.
    let mut switched: BTreeMap<i32, bool> = BTreeMap::new();
    for (id, partition, country) in &rows {
        let second = country == SECOND.0;
        assert!(second || country == FIRST.0, "{id}: {country}");
        let seen_second = switched.entry(*partition).or_default();
        assert!(!*seen_second || second, "{id} (partition {partition}) went back to the first file");
        *seen_second |= second;
    }
    assert_eq!(
        (stats.reloads_of("geoip:geo.mmdb", ReloadOutcome::Accepted), stats.reloads_of("geoip:geo.mmdb", ReloadOutcome::Rejected)),
        (1, 0)
    );
    let between = produced.len() - stored_before.len() - after.len();
    eprintln!(
        "the new file served {:?} after the rename; events: {} stored before it, {between} in flight, {} produced after it served",
        seen - renamed,
        stored_before.len(),
        after.len()
    );
}

/// Places 8.8.8.8 (one of the check's known addresses) in `country`.
fn with_probe(country: &str) -> Value {
    json!({"networks": [["8.8.8.0/24", country, "Mountain View"]]})
}

/// How often the reload history says `outcome` for the test's database.
fn outcomes(running: &Running, outcome: ReloadOutcome) -> u64 {
    running.stats.reloads_of("geoip:geo.mmdb", outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_are_refused_visibly_and_the_loaded_database_keeps_answering() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let f = support::Fixture::new("geoip_broken").await;
    let geo = f.dir.path().join("geo.mmdb");
    let staged = |name: &str| f.dir.path().join(format!("{name}.mmdb.new"));
    let (valid, layout, undecodable, partial) = (staged("valid"), staged("layout"), staged("undecodable"), staged("partial"));
    write(json!([
        database(&geo, FIRST, with_probe("US")),
        database(&valid, SECOND, with_probe("US")),
        database(&layout, SECOND, json!({"ip_version": 4, "metadata": {"node_count": 1_000_000}})),
        database(&undecodable, SECOND, json!({"records": [["8.8.8.0/24", {"country_code": 42}]]})),
        // Without 8.8.8.8, which the serving file places in a country.
        database(&partial, SECOND, json!({})),
    ]));
    let whole = std::fs::read(&valid).unwrap();
    let (truncated, garbage) = (staged("truncated"), staged("garbage"));
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    std::fs::write(&garbage, b"not a database ".repeat(500)).unwrap();
    let running = start(&f, &geo).await;

    let refusals = [
        (truncated, "cannot open GeoIP database"),
        (garbage, "cannot open GeoIP database"),
        (layout, "does not fit in the file"),
        (undecodable, "the record of 8.8.8.8 does not decode"),
        (partial, "has no country for 8.8.8.8, which the serving file places in US"),
    ];
    for (n, (broken, reason)) in refusals.iter().enumerate() {
        std::fs::rename(broken, &geo).unwrap();
        support::wait_until(WAIT, &format!("{} refused", broken.display()), || async {
            outcomes(&running, ReloadOutcome::Rejected) > n as u64
        })
        .await;
        assert_eq!(running.country_of_the_client().as_deref(), Some(FIRST.0), "the loaded file answers after {}", broken.display());
        let served = &running.get("/api/enrichment-data").await["geoip"][0];
        assert_eq!((served["name"].as_str(), served["build_epoch"].as_u64()), (Some("geo.mmdb"), Some(FIRST.1)));
        let said = served["last_refusal"]["reason"].as_str().unwrap_or_default();
        assert!(said.contains(reason) && said.contains("the loaded file keeps serving"), "{}: the API says {served}", broken.display());
    }
    // Written in place (over the last refused file, which nothing maps).
    std::fs::write(&geo, &whole[..whole.len() / 2]).unwrap();
    support::wait_until(WAIT, "the file written in place refused", || async { outcomes(&running, ReloadOutcome::Rejected) == 6 }).await;
    // Gone: the loaded file keeps serving, and a removal is no refusal.
    std::fs::remove_file(&geo).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!((outcomes(&running, ReloadOutcome::Rejected), outcomes(&running, ReloadOutcome::Accepted)), (6, 0));
    assert_eq!(running.country_of_the_client().as_deref(), Some(FIRST.0));
    // The enrich transform still gets the loaded file's answers.
    let stop = Arc::new(AtomicBool::new(false));
    let producing = tokio::spawn(produce_until(f.topic.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let produced = producing.await.unwrap().len();
    support::wait_until(WAIT, "the clicks stored", || async { stored(&f.pool).await >= produced }).await;
    let countries: Vec<String> = sqlx::query_scalar("SELECT DISTINCT country FROM events").fetch_all(&f.pool).await.unwrap();
    assert_eq!(countries, vec![FIRST.0.to_string()]);

    // A whole file written in place is taken.
    std::fs::write(&geo, &whole).unwrap();
    support::wait_until(WAIT, "the whole file taken", || async { outcomes(&running, ReloadOutcome::Accepted) == 1 }).await;
    assert_eq!(running.country_of_the_client().as_deref(), Some(SECOND.0));
    let served = running.get("/api/enrichment-data").await["geoip"][0].clone();
    assert_eq!(served["built_at"], "2027-01-15T08:00:00Z");
    assert_eq!((served["database_type"].as_str(), served["ip_version"].as_u64()), (Some("test-city"), Some(6)));
    let history: Vec<String> = running.get("/api/plugins").await["reload_history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["what"] == "geoip:geo.mmdb")
        .map(|r| r["outcome"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(history, [vec!["rejected"; 6], vec!["accepted"]].concat(), "the reload history of /api/plugins");
    running.stop().await;
}

#[test]
fn the_check_accepts_a_sane_file_and_says_what_it_holds_and_what_the_known_addresses_answer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sane.mmdb");
    write(json!([database(&path, FIRST, with_probe("US"))]));
    let checked = check(&path, None).unwrap();
    let metadata = checked.metadata();
    assert_eq!((metadata.database_type.as_str(), metadata.ip_version, metadata.build_epoch), ("test-city", 6, FIRST.1));
    let answers: BTreeMap<String, Option<&str>> = checked.probe_countries().iter().map(|(ip, c)| (ip.to_string(), c.as_deref())).collect();
    assert_eq!(answers.len(), clickstream::plugin::geoip::PROBES.len(), "an IPv6 database is asked every known address");
    assert_eq!((answers["8.8.8.8"], answers["1.1.1.1"]), (Some("US"), None));
}

#[test]
fn the_check_refuses_each_kind_of_broken_file_for_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(format!("{name}.mmdb"));
    let broken = |name: &str, extra: Value| database(&path(name), FIRST, extra);
    write(json!([
        broken("sane", json!({})),
        broken("ip-version-5", json!({"metadata": {"ip_version": 5}})),
        broken("build-epoch-0", json!({"metadata": {"build_epoch": 0}})),
        broken("no-build-epoch", json!({"metadata": {"build_epoch": null}})),
        broken("no-type", json!({"metadata": {"database_type": ""}})),
        broken("record-size-20", json!({"ip_version": 4, "metadata": {"record_size": 20}})),
        broken("tree-too-long", json!({"ip_version": 4, "metadata": {"node_count": 1_000_000}})),
        broken("undecodable", json!({"records": [["8.8.8.0/24", {"country_code": 42}]]})),
    ]));
    let whole = std::fs::read(path("sane")).unwrap();
    std::fs::write(path("truncated"), &whole[..whole.len() / 2]).unwrap();
    std::fs::write(path("cut-in-the-metadata"), &whole[..whole.len() - 40]).unwrap();
    std::fs::write(path("garbage"), b"not a database ".repeat(100)).unwrap();

    let refused = |name: &str| match check(&path(name), None) {
        Ok(_) => panic!("{name} passed the check"),
        Err(e) => {
            assert!(e.to_string().contains(&path(name).display().to_string()), "{name}: the reason names the file: {e}");
            e
        }
    };
    assert!(check(&path("sane"), None).is_ok());
    assert!(matches!(refused("ip-version-5"), GeoIpError::IpVersion { ip_version: 5, .. }));
    assert!(matches!(refused("build-epoch-0"), GeoIpError::NoBuildEpoch { .. }));
    assert!(matches!(refused("no-build-epoch"), GeoIpError::Open { .. }));
    assert!(matches!(refused("no-type"), GeoIpError::NoDatabaseType { .. }));
    assert!(matches!(refused("record-size-20"), GeoIpError::RecordSize { record_size: 20, .. }));
    assert!(matches!(refused("tree-too-long"), GeoIpError::Layout { node_count: 1_000_000, .. }));
    assert!(matches!(refused("undecodable"), GeoIpError::Lookup { ip, .. } if ip.to_string() == "8.8.8.8"));
    assert!(matches!(refused("truncated"), GeoIpError::Open { .. }));
    assert!(matches!(refused("cut-in-the-metadata"), GeoIpError::Open { .. } | GeoIpError::Unreadable { .. }));
    assert!(matches!(refused("garbage"), GeoIpError::Open { .. }));
}

#[test]
fn the_check_refuses_a_file_that_loses_a_country_the_serving_file_had_but_not_one_that_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(format!("{name}.mmdb"));
    write(json!([
        database(&path("serving"), FIRST, with_probe("US")),
        database(&path("partial"), SECOND, json!({})),
        database(&path("moved"), SECOND, with_probe("DE")),
    ]));
    let serving = check(&path("serving"), None).unwrap();
    let lost = check(&path("partial"), Some(&serving)).err();
    assert!(
        matches!(&lost, Some(GeoIpError::LostCountry { ip, country, .. }) if ip.to_string() == "8.8.8.8" && country == "US"),
        "{lost:?}"
    );
    assert!(check(&path("partial"), None).is_ok(), "alone, a database may hold no known address");
    let moved = check(&path("moved"), Some(&serving)).unwrap();
    assert!(moved.probe_countries().iter().any(|(ip, country)| ip.to_string() == "8.8.8.8" && country.as_deref() == Some("DE")));
}
