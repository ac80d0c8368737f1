//! The HTTP API against hostile clients (issue #18), on real PostgreSQL: a
//! request flood is shed with 503 and never takes the store's connections
//! (ingest goes on), the API's queries are cut by their statement timeout,
//! dead letters page by keyset (every row once while rows are added and
//! replayed; the plan walks indexes), payload previews are off unless
//! configured, and a foreign `Host` header is refused (DNS rebinding).
//!
//! Slowness is made with a lock, not with time: a test connection holds a
//! dead-letter day partition in ACCESS EXCLUSIVE mode, so every API query
//! over `dead_letters` waits on it until the test lets go, while ingest
//! (which writes only `events` here) goes on.

use clickstream_testkit as support;

use std::sync::Arc;
use std::time::Duration;

use clickstream::produce::{self, Generator, GeneratorConfig};
use clickstream::runtime::api::Api;
use clickstream::stats::Stats;
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};

const WAIT: Duration = Duration::from_secs(120);

/// An API serving an in-process pipeline on a fresh database.
struct Served {
    base: String,
    http: reqwest::Client,
    pipeline: support::InProcess,
    stop: tokio::sync::watch::Sender<bool>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Runs `pipeline` (on `topic`) and serves its API on a free loopback
    /// port; returns once the dead letters endpoint answers.
    async fn start(pipeline: &std::path::Path, topic: &str) -> Served {
        let config = support::load_config(pipeline);
        clickstream::kafka::ensure_topic(&support::brokers(), topic, 2)
            .await
            .unwrap_or_else(|e| panic!("broker at {} refused ({e}): run `scripts/services up`", support::brokers()));
        let served = Api::new(Arc::new(Stats::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(served.clone().serve(listener, stopped));
        let pipeline = support::InProcess::start_with(config, move |p| served.serve_pipeline(p));
        // No timeout: requests the tests hold up are let go by the tests.
        let http = reqwest::Client::new();
        let served = Served { base, http, pipeline, stop, serving };
        support::wait_until(Duration::from_secs(60), "/api/dead-letters to answer 200", || async {
            served.http.get(served.url("/api/dead-letters")).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        served
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_else(|e| panic!("GET {path}: body is not JSON: {e}")))
    }

    async fn ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn stop(self) {
        self.pipeline.stop().await;
        self.stop.send(true).unwrap();
        self.serving.await.unwrap().unwrap();
    }
}

/// Inserts `n` pending dead letters dead now, each payload naming a person.
async fn add_dead_letters(pool: &PgPool, n: i64) -> Vec<i64> {
    sqlx::query_scalar(
        "INSERT INTO dead_letters (topic, \"partition\", \"offset\", payload, stage, kind, reason, received_at)
         SELECT 'limits', 0, g, convert_to('{\"user_id\":\"alice@example.com\",\"n\":' || g || ',', 'UTF8'),
                'decode', 'not_json', 'not JSON: EOF while parsing', now()
         FROM generate_series(1, $1) g
         RETURNING id",
    )
    .bind(n)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn ids(page: &Value) -> Vec<i64> {
    page["items"].as_array().unwrap().iter().map(|i| i["id"].as_i64().unwrap()).collect()
}

/// Holds the newest dead-letter day partition in ACCESS EXCLUSIVE mode
/// until the transaction ends: every query over `dead_letters` (which
/// opens all its partitions) waits; ingest, writing `events`, does not.
async fn lock_dead_letters(db: &str) -> PgConnection {
    let mut conn = PgConnection::connect(db).await.unwrap();
    let newest: String = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'dead_letters'::regclass ORDER BY c.relname DESC LIMIT 1",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query(&format!("LOCK TABLE {newest} IN ACCESS EXCLUSIVE MODE")).execute(&mut conn).await.unwrap();
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_flood_is_shed_without_touching_the_ingest_pool() {
    // Long enough that held requests stay held until the lock is let go.
    let api = "max_concurrent_requests = 4\ndb_connections = 2\nstatement_timeout_ms = 300000\n";
    let f = support::Fixture::with("api_flood", api).await;
    let served = Arc::new(Served::start(&f.pipeline, &f.topic).await);
    let lock = lock_dead_letters(&f.db).await;

    // Twelve requests at once: four are let in and wait on the lock (two
    // on the API's two connections, two for one of them); eight are refused.
    let flood: Vec<_> = (0..12)
        .map(|_| {
            let served = served.clone();
            tokio::spawn(async move { served.get("/api/dead-letters").await })
        })
        .collect();
    support::wait_until(WAIT, "eight of twelve requests answered", || async { flood.iter().filter(|f| f.is_finished()).count() >= 8 })
        .await;
    let (mut answered, mut held) = (Vec::new(), Vec::new());
    for request in flood {
        if request.is_finished() {
            answered.push(request.await.unwrap());
        } else {
            held.push(request);
        }
    }
    assert_eq!(held.len(), 4, "api.max_concurrent_requests requests are let in; answered: {answered:?}");
    for (status, body) in &answered {
        assert_eq!(*status, 503, "{body}");
        assert!(body["error"].as_str().unwrap().contains("api.max_concurrent_requests"), "{body}");
    }
    assert_eq!(served.get("/health").await.0, 200, "liveness is not shed");
    let (status, _) = served.get("/api/windows/failing").await;
    assert_eq!(status, 503, "still saturated");

    // The API waits on its own connections, at most api.db_connections.
    let api_waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
         AND application_name = '{}'",
        clickstream::runtime::api::DB_APPLICATION_NAME
    );
    support::wait_until(WAIT, "the API's two connections waiting on the lock", || async {
        support::count(&f.pool, &api_waiting).await == 2
    })
    .await;
    let api_connections = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '{}'",
        clickstream::runtime::api::DB_APPLICATION_NAME
    );
    assert_eq!(support::count(&f.pool, &api_connections).await, 2);

    // Ingest goes on meanwhile: every event produced is stored.
    let now = chrono::Utc::now().timestamp_millis();
    let events = 2_000;
    let generator = Generator::new(GeneratorConfig {
        events,
        users: 100,
        urls: 20,
        seed: 18,
        start_ms: now - 10 * 60_000,
        span_secs: 10 * 60,
        bad_fraction: 0.0,
        ..GeneratorConfig::default()
    });
    produce::to_kafka(generator, &support::brokers(), &f.topic, None, &Default::default(), &indicatif::ProgressBar::hidden())
        .await
        .unwrap();
    support::wait_until(WAIT, "every event stored while the API is saturated", || async {
        support::count(&f.pool, "SELECT count(*) FROM events").await == events as i64
    })
    .await;
    let others_waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'
         AND application_name <> '{}'",
        clickstream::runtime::api::DB_APPLICATION_NAME
    );
    assert_eq!(support::count(&f.pool, &others_waiting).await, 0, "only the API's connections wait");
    assert_eq!(support::count(&f.pool, &api_connections).await, 2, "the API never took more connections");

    // Let go: the held requests are answered.
    lock.close().await.unwrap();
    for request in held {
        let (status, body) = request.await.unwrap();
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(served.get("/api/dead-letters").await.0, 200, "permits are given back");
    Arc::into_inner(served).expect("no request holds the API").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_api_query_is_cancelled_by_its_statement_timeout() {
    let f = support::Fixture::with("api_timeout", "statement_timeout_ms = 1000\n").await;
    let served = Served::start(&f.pipeline, &f.topic).await;
    let lock = lock_dead_letters(&f.db).await;
    for path in ["/api/dead-letters", "/api/dead-letters?all=true&after=5"] {
        // Bounded, so a query left waiting fails the test instead of hanging it.
        let response = served.http.get(served.url(path)).timeout(Duration::from_secs(30)).send().await;
        let response = response.unwrap_or_else(|e| panic!("GET {path} was not answered: {e}"));
        let (status, body): (u16, Value) = (response.status().as_u16(), response.json().await.unwrap());
        assert_eq!(status, 503, "{path}: {body}");
        assert!(body["error"].as_str().unwrap().contains("api.statement_timeout_ms (1000 ms)"), "{path}: {body}");
    }
    lock.close().await.unwrap();
    served.ok("/api/dead-letters").await;
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_pages_return_every_row_once_while_rows_are_added_and_replayed() {
    let f = support::Fixture::new("api_paging").await;
    let served = Served::start(&f.pipeline, &f.topic).await;
    let mut expected = add_dead_letters(&f.pool, 25).await;

    // Pending ones, seven a page. After each page, three new dead letters
    // arrive and the page's rows are replayed: an OFFSET would now skip
    // seven rows; the cursor skips none.
    let (mut seen, mut after, mut pages) = (Vec::<i64>::new(), 0i64, 0);
    loop {
        let page = served.ok(&format!("/api/dead-letters?limit=7&after={after}")).await;
        pages += 1;
        assert!(page.get("total").is_none() && page.get("offset").is_none(), "no full count, no offset: {page}");
        let got = ids(&page);
        seen.extend(&got);
        sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = ANY($1)").bind(&got).execute(&f.pool).await.unwrap();
        let Some(next) = page["next"].as_i64() else { break };
        assert_eq!(Some(&next), got.last(), "the cursor is the page's last id");
        if pages <= 4 {
            expected.extend(add_dead_letters(&f.pool, 3).await);
        }
        after = next;
        assert!(pages < 50, "paging ends");
    }
    expected.sort_unstable();
    assert_eq!(seen, expected, "every row once, oldest first");
    assert_eq!(ids(&served.ok("/api/dead-letters").await), Vec::<i64>::new());
    // The count is taken at most once a second.
    support::wait_until(WAIT, "no pending dead letter counted", || async {
        let page = served.ok("/api/dead-letters").await;
        (page["pending"].as_i64(), page["pending_capped"].as_bool()) == (Some(0), Some(false))
    })
    .await;

    // Replayed ones too with all=true.
    let (mut all, mut after) = (Vec::new(), 0i64);
    loop {
        let page = served.ok(&format!("/api/dead-letters?all=true&limit=10&after={after}")).await;
        all.extend(ids(&page));
        match page["next"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(all, expected);

    for (bad, mention) in
        [("/api/dead-letters?offset=10", "after"), ("/api/dead-letters?limit=0", "limit"), ("/api/dead-letters?after=-1", "after")]
    {
        let (status, body) = served.get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].as_str().unwrap().contains(mention), "{bad}: {body}");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_previews_are_absent_by_default_and_present_when_configured() {
    let f = support::Fixture::new("api_previews").await;
    let served = Served::start(&f.pipeline, &f.topic).await;
    add_dead_letters(&f.pool, 3).await;

    let response = served.http.get(served.url("/api/dead-letters")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains("alice@example.com"), "no payload text by default: {text}");
    let page: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["previews"], false);
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    for item in page["items"].as_array().unwrap() {
        assert!(item.get("payload_preview").is_none(), "{item}");
        assert!(item["payload_bytes"].as_i64().unwrap() > 0, "the size is still given: {item}");
    }
    served.stop().await;

    // A second pipeline on the same database and topic, under a group of its own.
    let dir = tempfile::tempdir().unwrap();
    let pipeline = support::write_pipeline(dir.path(), &f.topic, &support::unique("limits"), &f.db, "dead_letter_previews = true\n");
    let served = Served::start(&pipeline, &f.topic).await;
    let page = served.ok("/api/dead-letters").await;
    assert_eq!(page["previews"], true);
    for item in page["items"].as_array().unwrap() {
        assert!(item["payload_preview"].as_str().unwrap().contains("alice@example.com"), "{item}");
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_header_is_refused_and_localhost_is_served() {
    let api = Api::new(Arc::new(Stats::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(api.clone().serve(listener, stopped));
    let http = reqwest::Client::new();
    let status = |host: String, path: &'static str| {
        let request = http.get(format!("http://{address}{path}")).header("host", host);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    let port = address.port();

    // A page on evil.example whose name now resolves to 127.0.0.1.
    for host in [format!("evil.example:{port}"), "evil.example".into(), format!("localhost.evil.example:{port}")] {
        assert_eq!(status(host.clone(), "/health").await, 421, "{host}");
        assert_eq!(status(host.clone(), "/metrics").await, 421, "{host}");
    }
    let refused = http.get(format!("http://{address}/health")).header("host", "evil.example").send().await.unwrap();
    let body: Value = refused.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("api.allowed_hosts"), "{body}");
    // Addresses name nothing a page could rebind: the listen address, or
    // the one a probe uses when the API listens on all interfaces.
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "localhost".into(),
        "LOCALHOST:1".into(),
        "192.0.2.7:8080".into(),
    ] {
        assert_eq!(status(host.clone(), "/health").await, 200, "{host}");
    }

    // A listed name is served, on any port.
    api.configure(&clickstream::runtime::api::config::ApiConfig { allowed_hosts: vec!["dash.example".into()], ..Default::default() });
    assert_eq!(status("dash.example:443".into(), "/health").await, 200);
    assert_eq!(status("evil.example".into(), "/health").await, 421);

    // Bodies are bounded: one announced larger is refused before it is
    // read; a request naming no host is refused.
    let announced = format!("POST /api/plugins/enrich/reload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n", 1 << 20);
    let answer = raw(address, &announced).await;
    assert!(answer.split_whitespace().nth(1) == Some("413"), "{answer}");
    let answer = raw(address, "GET /health HTTP/1.0\r\n\r\n").await;
    assert!(answer.split_whitespace().nth(1) == Some("421"), "{answer}");
    stop.send(true).unwrap();
    serving.await.unwrap().unwrap();
}

/// Sends `request` as is and returns the status line and headers of the answer.
async fn raw(address: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// EXPLAIN of the API's page and count queries on a table with rows in
/// five day partitions: index scans merged in id order, no sequential scan
/// and no sort, in the plans for the first executions and in the generic
/// plan a prepared statement settles on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_page_query_walks_indexes_not_the_table() {
    let db = support::fresh_database("api_plan").await;
    let store = clickstream::stages::store::Store::connect(
        &db,
        clickstream::stages::record::WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 },
    )
    .await
    .unwrap();
    let pool = store.pool();
    // Yesterday to three days ahead have partitions; 20,000 rows each, one
    // in three replayed.
    sqlx::query(
        "INSERT INTO dead_letters (topic, \"partition\", \"offset\", payload, stage, kind, reason, received_at, dead_at, replayed_at)
         SELECT 'plan', 0, g, convert_to(repeat('x', 200), 'UTF8'), 'decode', 'not_json', 'r', now(),
                (date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC') + make_interval(days => d - 1, secs => g % 80000),
                CASE WHEN g % 3 = 0 THEN now() END
         FROM generate_series(0, 4) d, generate_series(1, 20000) g",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE dead_letters").execute(pool).await.unwrap();
    let middle: i64 = sqlx::query_scalar("SELECT (min(id) + max(id)) / 2 FROM dead_letters").fetch_one(pool).await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    for (pending_only, previews) in [(true, false), (false, false), (true, true)] {
        let sql = clickstream::runtime::dead_letters::page_sql(pending_only, previews);
        for mode in ["force_custom_plan", "force_generic_plan"] {
            sqlx::query(&format!("SET plan_cache_mode = {mode}")).execute(&mut *conn).await.unwrap();
            let _ = sqlx::query("DEALLOCATE page").execute(&mut *conn).await;
            sqlx::query(&format!("PREPARE page(bigint, bigint) AS {sql}")).execute(&mut *conn).await.unwrap();
            let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN EXECUTE page({middle}, 50)")).fetch_all(&mut *conn).await.unwrap();
            let plan = plan.join("\n");
            // A sort node (not the merge's `Sort Key`) would read every row past the cursor.
            assert!(!plan.contains("Seq Scan") && !plan.contains("Sort  ("), "pending_only={pending_only} {mode}:\n{plan}");
            assert!(plan.contains("Merge Append") && plan.contains("Index"), "pending_only={pending_only} {mode}:\n{plan}");
        }
    }
    sqlx::query("SET plan_cache_mode = auto").execute(&mut *conn).await.unwrap();
    let plan: Vec<String> =
        sqlx::query_scalar("EXPLAIN SELECT count(*) FROM (SELECT 1 FROM dead_letters WHERE replayed_at IS NULL LIMIT 10001) pending")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    assert!(plan.join("\n").contains("Limit"), "the count stops at its cap:\n{}", plan.join("\n"));
}
