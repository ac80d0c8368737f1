//! The indexer against the real search server at `ELASTICSEARCH_URL`
//! (osmem locally: `scripts/services up search`), plus a scripted fake server
//! for the answers a healthy server will not give on demand (429s, 503s).
//! Each test works in its own indices, removed when it ends.
//!
//! Long because it is one component's whole contract with the server —
//! mapping, bulk sizing and retries, refusals, time suffixes, search — each
//! scenario a short test sharing the helpers at the top.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clickstream::stages::index::config::{IndexConfig, TimeSuffix};
use clickstream::stages::index::{AggregateDoc, DocQuery, IndexError, Indexer};
use elasticsearch::indices::{IndicesCreateParts, IndicesDeleteIndexTemplateParts, IndicesDeleteParts, IndicesGetMappingParts};
use elasticsearch::{BulkParts, SearchParts};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const DEFAULT_BULK_MAX_BYTES: usize = 5 << 20;
/// 2024-02-29T00:00:00Z: a leap day, so daily names are checked at a month edge.
const LEAP_DAY_MS: i64 = 1_709_164_800_000;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

fn search_url() -> String {
    std::env::var("ELASTICSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

fn config(url: &str, index: &str, time_suffix: TimeSuffix, bulk_max_bytes: usize) -> IndexConfig {
    IndexConfig { url: url.into(), index: index.into(), time_suffix, bulk_max_bytes }
}

fn doc(window_start_ms: i64, url: &str, country: &str, clicks: u64) -> AggregateDoc {
    AggregateDoc {
        window_start_ms,
        window_end_ms: window_start_ms + MINUTE_MS,
        url: url.into(),
        country: country.into(),
        clicks,
        unique_users: clicks.div_ceil(2),
        time_spent_total_ms: clicks * 1500,
        time_spent_samples: clicks,
        avg_time_spent_s: AggregateDoc::average_time_spent_s(clicks * 1500, clicks),
        is_final: false,
        plugin_name: "aggregate".into(),
        plugin_version: "0.1.0".into(),
        aggregated_at_ms: window_start_ms + 2 * MINUTE_MS,
    }
}

fn sort_key(d: &AggregateDoc) -> (i64, String, String) {
    (d.window_start_ms, d.url.clone(), d.country.clone())
}

/// A test's own index name (and its time-suffixed siblings and template),
/// deleted when the value is dropped, also when the test panics.
struct TestIndex {
    name: String,
    indexer: Indexer,
}

impl TestIndex {
    async fn new(test: &str, time_suffix: TimeSuffix, bulk_max_bytes: usize) -> TestIndex {
        let name = format!("test-index-{test}-{}", std::process::id());
        let indexer = Indexer::new(&config(&search_url(), &name, time_suffix, bulk_max_bytes)).unwrap();
        if let Err(e) = indexer.ping().await {
            panic!("the search server at {} does not answer ({e}); start it with `scripts/services up search`", search_url());
        }
        // Leftovers of an earlier run whose process had the same id.
        delete_indices(&name).await;
        TestIndex { name, indexer }
    }
}

impl Drop for TestIndex {
    fn drop(&mut self) {
        // The test's runtime is blocked here, and the indexer's connections
        // belong to it; a fresh client on a fresh runtime cannot deadlock.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(delete_indices(&name))
        })
        .join();
    }
}

/// Deletes `name`, `name-*` and the template by their exact names, since a
/// real cluster refuses wildcard deletes (`action.destructive_requires_name`).
async fn delete_indices(name: &str) {
    let indexer = Indexer::new(&config(&search_url(), name, TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap();
    let client = indexer.client();
    let targets = indexer.search_indices();
    let Ok(response) =
        client.indices().get_mapping(IndicesGetMappingParts::Index(&targets)).ignore_unavailable(true).allow_no_indices(true).send().await
    else {
        return;
    };
    let existing: Value = response.json().await.unwrap_or_default();
    let names: Vec<&str> = existing.as_object().into_iter().flatten().map(|(n, _)| n.as_str()).collect();
    if !names.is_empty() {
        let _ = client.indices().delete(IndicesDeleteParts::Index(&names)).send().await;
    }
    let template = format!("{name}-template");
    let _ = client.indices().delete_index_template(IndicesDeleteIndexTemplateParts::Name(&template)).send().await;
}

/// Runs a raw search against `index` and returns the JSON answer, failing
/// the test on an error status.
async fn raw_search(indexer: &Indexer, index: &str, body: Value) -> Value {
    let response = indexer.client().search(SearchParts::Index(&[index])).body(body).send().await.unwrap();
    let status = response.status_code();
    let answer: Value = response.json().await.unwrap();
    assert!(status.is_success(), "search on {index} failed with {status}: {answer}");
    answer
}

fn all(limit: usize) -> DocQuery {
    DocQuery { limit, ..DocQuery::default() }
}

#[tokio::test]
async fn reindexing_the_same_group_overwrites_instead_of_duplicating() {
    let t = TestIndex::new("overwrite", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES).await;
    t.indexer.ensure_mapping().await.unwrap();
    let first = vec![
        doc(LEAP_DAY_MS, "https://shop.example/", "DE", 3),
        doc(LEAP_DAY_MS, "https://shop.example/", "FR", 1),
        doc(LEAP_DAY_MS + MINUTE_MS, "https://shop.example/cart", "DE", 2),
    ];
    let outcome = t.indexer.index(&first).await.unwrap();
    assert_eq!((outcome.indexed, outcome.rejected.len()), (3, 0), "{outcome:?}");

    // Late clicks arrived: the same groups, re-aggregated with new numbers.
    let second: Vec<AggregateDoc> = first
        .iter()
        .map(|d| AggregateDoc { clicks: d.clicks + 10, is_final: true, aggregated_at_ms: d.aggregated_at_ms + 1, ..d.clone() })
        .collect();
    let outcome = t.indexer.index(&second).await.unwrap();
    assert_eq!((outcome.indexed, outcome.rejected.len()), (3, 0), "{outcome:?}");
    t.indexer.refresh().await.unwrap();

    let found = t.indexer.search(&all(100)).await.unwrap();
    let mut expected = second.clone();
    expected.sort_by_key(sort_key);
    assert_eq!(found, expected, "each group once, with the re-aggregated numbers");
}

#[tokio::test]
async fn document_ids_are_stable_per_group_and_distinct_between_groups() {
    let a = doc(LEAP_DAY_MS, "https://x.example/a|b", "c", 1);
    let id = Indexer::doc_id(&a);
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    // Only the group decides the id, not the numbers or who computed them.
    let recounted = AggregateDoc { clicks: 99, plugin_version: "0.2.0".into(), is_final: true, ..a.clone() };
    assert_eq!(Indexer::doc_id(&recounted), id);
    let others = [
        doc(LEAP_DAY_MS + MINUTE_MS, &a.url, &a.country, 1),
        doc(LEAP_DAY_MS, "https://x.example/a", "b|c", 1),
        doc(LEAP_DAY_MS, &a.url, "C", 1),
    ];
    for other in &others {
        assert_ne!(Indexer::doc_id(other), id, "{other:?}");
    }
    // Ids are limited to 512 bytes; URLs are not.
    let long = doc(LEAP_DAY_MS, &format!("https://x.example/{}", "p".repeat(10_000)), "DE", 1);
    assert_eq!(Indexer::doc_id(&long).len(), 64);
}

#[tokio::test]
async fn mapping_makes_url_and_country_aggregatable() {
    let t = TestIndex::new("mapping", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES).await;
    t.indexer.ensure_mapping().await.unwrap();
    // A second host starting at the same time does the same; that is fine.
    let (a, b) = tokio::join!(t.indexer.ensure_mapping(), t.indexer.ensure_mapping());
    a.unwrap();
    b.unwrap();
    let docs = vec![
        doc(LEAP_DAY_MS, "https://shop.example/a b?q=1", "DE", 3),
        doc(LEAP_DAY_MS, "https://shop.example/a b?q=1", "FR", 4),
        doc(LEAP_DAY_MS + MINUTE_MS, "https://shop.example/a b?q=1", "DE", 5),
        doc(LEAP_DAY_MS + DAY_MS, "https://shop.example/other", "DE", 6),
    ];
    assert_eq!(t.indexer.index(&docs).await.unwrap().indexed, 4);
    t.indexer.refresh().await.unwrap();

    let answer = raw_search(
        &t.indexer,
        &t.name,
        json!({
            "size": 0,
            "aggs": {
                "by_url": { "terms": { "field": "url" }, "aggs": { "clicks": { "sum": { "field": "clicks" } } } },
                "by_country": { "terms": { "field": "country" } },
            }
        }),
    )
    .await;
    let buckets = |agg: &str| -> Vec<(String, u64)> {
        answer["aggregations"][agg]["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| (b["key"].as_str().unwrap().to_string(), b["doc_count"].as_u64().unwrap()))
            .collect()
    };
    // Whole URLs, not analysed words: a `text` field would split "a b?q=1".
    assert_eq!(buckets("by_url"), [("https://shop.example/a b?q=1".to_string(), 3), ("https://shop.example/other".to_string(), 1)]);
    assert_eq!(buckets("by_country"), [("DE".to_string(), 3), ("FR".to_string(), 1)]);
    assert_eq!(answer["aggregations"]["by_url"]["buckets"][0]["clicks"]["value"].as_f64(), Some(12.0));

    // `window_start` is a date: a Kibana-style range with ISO strings works.
    let answer = raw_search(
        &t.indexer,
        &t.name,
        json!({ "query": { "range": { "window_start": { "gte": "2024-02-29T00:00:00Z", "lt": "2024-03-01T00:00:00Z" } } } }),
    )
    .await;
    assert_eq!(answer["hits"]["hits"].as_array().unwrap().len(), 3, "{answer}");
    let first = &answer["hits"]["hits"][0]["_source"];
    assert!(first.get("final").is_some() && first.get("is_final").is_none(), "{first}");

    // The same aggregation on a dynamically mapped index is refused, so the
    // assertions above really depend on the mapping.
    let control = format!("{}x", t.name);
    let control_indexer = Indexer::new(&config(&search_url(), &control, TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap();
    control_indexer.index(&docs).await.unwrap();
    let refused = control_indexer
        .client()
        .search(SearchParts::Index(&[&control]))
        .body(json!({ "size": 0, "aggs": { "by_url": { "terms": { "field": "url" } } } }))
        .send()
        .await
        .unwrap()
        .status_code();
    delete_indices(&control).await;
    assert_eq!(refused.as_u16(), 400, "a terms aggregation on a text field should be refused");
}

#[tokio::test]
async fn documents_split_across_bulk_requests_all_arrive() {
    // 16 KiB per request: ~60 requests for these 2000 documents.
    let t = TestIndex::new("split", TimeSuffix::None, 16 << 10).await;
    t.indexer.ensure_mapping().await.unwrap();
    let countries = ["DE", "FR", "US", "unknown"];
    let docs: Vec<AggregateDoc> = (0..2000)
        .map(|i| {
            doc(LEAP_DAY_MS + (i % 7) * MINUTE_MS, &format!("https://shop.example/product/{i:05}"), countries[i as usize % 4], i as u64)
        })
        .collect();
    let outcome = t.indexer.index(&docs).await.unwrap();
    assert_eq!((outcome.indexed, outcome.rejected.len()), (2000, 0));
    t.indexer.refresh().await.unwrap();

    // More than one search page, so paging is exercised too.
    let found = t.indexer.search(&all(5000)).await.unwrap();
    let mut expected = docs.clone();
    expected.sort_by_key(sort_key);
    assert_eq!(found.len(), 2000);
    assert!(found == expected, "documents differ from what was indexed, or are out of order");

    let limited = t.indexer.search(&all(1500)).await.unwrap();
    assert_eq!(limited[..], expected[..1500]);
    let filtered = t
        .indexer
        .search(&DocQuery {
            from_ms: Some(LEAP_DAY_MS + MINUTE_MS),
            to_ms: Some(LEAP_DAY_MS + 3 * MINUTE_MS),
            country: Some("FR".into()),
            limit: 5000,
            ..DocQuery::default()
        })
        .await
        .unwrap();
    let wanted: Vec<AggregateDoc> = expected
        .iter()
        .filter(|d| (LEAP_DAY_MS + MINUTE_MS..LEAP_DAY_MS + 3 * MINUTE_MS).contains(&d.window_start_ms) && d.country == "FR")
        .cloned()
        .collect();
    assert!(!wanted.is_empty());
    assert_eq!(filtered, wanted);
    let one = t
        .indexer
        .search(&DocQuery { url: Some("https://shop.example/product/00042".into()), limit: 10, ..DocQuery::default() })
        .await
        .unwrap();
    assert_eq!(one, [docs[42].clone()]);
}

#[tokio::test]
async fn a_document_the_server_rejects_is_reported_with_its_reason() {
    let t = TestIndex::new("rejected", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES).await;
    // An index someone made by hand, with `clicks` too narrow for big counts.
    let created = t
        .indexer
        .client()
        .indices()
        .create(IndicesCreateParts::Index(&t.name))
        .body(json!({ "mappings": { "properties": { "clicks": { "type": "integer" }, "url": { "type": "keyword" }, "country": { "type": "keyword" } } } }))
        .send()
        .await
        .unwrap();
    assert!(created.status_code().is_success(), "{:?}", created.text().await);

    let mut docs: Vec<AggregateDoc> = (0..5).map(|i| doc(LEAP_DAY_MS, &format!("https://x.example/{i}"), "DE", 1)).collect();
    docs[2].clicks = 3_000_000_000;
    let outcome = t.indexer.index(&docs).await.unwrap();
    assert_eq!(outcome.indexed, 4, "{outcome:?}");
    let [rejected] = &outcome.rejected[..] else { panic!("one document should be rejected: {outcome:?}") };
    assert_eq!((rejected.position, rejected.status), (2, 400), "{rejected:?}");
    assert_eq!(rejected.id, Indexer::doc_id(&docs[2]));
    assert_eq!(rejected.index, t.name);
    assert!(rejected.reason.contains("clicks") && rejected.reason.contains("mapper_parsing_exception"), "{}", rejected.reason);

    t.indexer.refresh().await.unwrap();
    let found = t.indexer.search(&all(100)).await.unwrap();
    assert_eq!(
        found.iter().map(|d| d.url.as_str()).collect::<Vec<_>>(),
        ["https://x.example/0", "https://x.example/1", "https://x.example/3", "https://x.example/4"]
    );
}

#[tokio::test]
async fn an_existing_index_with_a_conflicting_mapping_is_named_by_ensure_mapping() {
    let t = TestIndex::new("conflict", TimeSuffix::Daily, DEFAULT_BULK_MAX_BYTES).await;
    // Written before any template existed: dynamic mapping makes `url` text.
    let day = t.indexer.index_for(LEAP_DAY_MS);
    let body = vec![json!({ "index": { "_index": &day } }).to_string(), json!({ "url": "https://x.example/" }).to_string()];
    let response = t.indexer.client().bulk(BulkParts::None).body(body).send().await.unwrap();
    assert!(response.status_code().is_success());

    match t.indexer.ensure_mapping().await {
        Err(IndexError::MappingConflict { indices, reason }) => {
            assert_eq!(indices, day);
            assert!(reason.contains("url"), "{reason}");
        }
        other => panic!("expected a mapping conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn time_suffixed_indices_are_named_by_window_date_and_searched_together() {
    let monthly = Indexer::new(&config(&search_url(), "cs", TimeSuffix::Monthly, DEFAULT_BULK_MAX_BYTES)).unwrap();
    assert_eq!(monthly.index_for(LEAP_DAY_MS), "cs-2024.02");
    assert_eq!(monthly.index_for(LEAP_DAY_MS - 1), "cs-2024.02");
    assert_eq!(monthly.index_for(LEAP_DAY_MS + DAY_MS), "cs-2024.03");
    let plain = Indexer::new(&config(&search_url(), "cs", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap();
    assert_eq!(plain.index_for(LEAP_DAY_MS), "cs");

    let t = TestIndex::new("daily", TimeSuffix::Daily, DEFAULT_BULK_MAX_BYTES).await;
    t.indexer.ensure_mapping().await.unwrap();
    let docs = vec![
        doc(LEAP_DAY_MS - MINUTE_MS, "https://x.example/", "DE", 1), // 2024-02-28T23:59Z
        doc(LEAP_DAY_MS, "https://x.example/", "DE", 2),
        doc(LEAP_DAY_MS + DAY_MS - MINUTE_MS, "https://x.example/", "DE", 3),
        doc(LEAP_DAY_MS + DAY_MS + 12 * 60 * MINUTE_MS, "https://x.example/", "DE", 4),
    ];
    let names: Vec<String> = docs.iter().map(|d| t.indexer.index_for(d.window_start_ms)).collect();
    let expected = ["2024.02.28", "2024.02.29", "2024.02.29", "2024.03.01"].map(|day| format!("{}-{day}", t.name));
    assert_eq!(names, expected);

    assert_eq!(t.indexer.index(&docs).await.unwrap().indexed, 4);
    t.indexer.refresh().await.unwrap();

    // Created on first write, each with the template's mapping.
    let targets = t.indexer.search_indices();
    let mappings: Value = t
        .indexer
        .client()
        .indices()
        .get_mapping(IndicesGetMappingParts::Index(&targets))
        .ignore_unavailable(true)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut created: Vec<&String> = mappings.as_object().unwrap().keys().collect();
    created.sort();
    assert_eq!(created, [&expected[0], &expected[1], &expected[3]]);
    for (index, mapping) in mappings.as_object().unwrap() {
        assert_eq!(mapping["mappings"]["properties"]["url"]["type"], "keyword", "{index}: {mapping}");
        assert_eq!(mapping["mappings"]["properties"]["window_start"]["type"], "date", "{index}: {mapping}");
    }

    assert_eq!(t.indexer.search(&all(100)).await.unwrap(), docs, "all days, in window order");
    let leap_day = t
        .indexer
        .search(&DocQuery { from_ms: Some(LEAP_DAY_MS), to_ms: Some(LEAP_DAY_MS + DAY_MS), limit: 100, ..DocQuery::default() })
        .await
        .unwrap();
    assert_eq!(leap_day, docs[1..3]);
}

#[tokio::test]
async fn an_unreachable_server_is_reported_quickly() {
    let indexer = Indexer::new(&config("http://127.0.0.1:1", "nowhere", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap();
    let started = Instant::now();
    let err = indexer.index(&[doc(LEAP_DAY_MS, "https://x.example/", "DE", 1)]).await.unwrap_err();
    assert!(matches!(&err, IndexError::Unavailable { .. }) && err.is_transient(), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1") && message.to_lowercase().contains("refused"), "{message}");
    assert!(matches!(indexer.ping().await, Err(IndexError::Unavailable { .. })));
    assert!(matches!(indexer.ensure_mapping().await, Err(IndexError::Unavailable { .. })));
    assert!(matches!(indexer.search(&all(10)).await, Err(IndexError::Unavailable { .. })));
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_url_that_is_no_http_address_is_refused_before_connecting() {
    for url in ["127.0.0.1:9200", "ftp://x:21", "http://"] {
        let err = Indexer::new(&config(url, "x", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap_err();
        assert!(matches!(&err, IndexError::Url { .. }) && err.to_string().contains("index.url"), "{url}: {err}");
    }
}

/// A request the fake server received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// An HTTP/1.1 server on a free port answering every request with
/// `answer(requests so far, request)` → (status, JSON body), and recording it.
async fn fake_server(answer: impl Fn(usize, &Received) -> (u16, String) + Send + Sync + 'static) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (answer, log) = (answer.clone(), log.clone());
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut words = line.split_whitespace();
                    let method = words.next().unwrap_or("").to_string();
                    let path = words.next().unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        stream.read_line(&mut header).await.unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    let request = Received { method, path, body };
                    let n = {
                        let mut log = log.lock().unwrap();
                        log.push(request.clone());
                        log.len() - 1
                    };
                    let (status, reply) = answer(n, &request);
                    let head = format!("HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", reply.len());
                    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
                    stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
                }
            });
        }
    });
    (url, seen)
}

/// The `_id`s of a `_bulk` body's operations, in order.
fn bulk_ids(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .step_by(2)
        .map(|action| serde_json::from_str::<Value>(action).unwrap()["index"]["_id"].as_str().unwrap().to_string())
        .collect()
}

fn bulk_answer(statuses: impl Iterator<Item = u16>) -> String {
    let items: Vec<Value> = statuses
        .map(|status| match status {
            201 => json!({ "index": { "status": 201 } }),
            _ => json!({ "index": { "status": status, "error": { "type": "es_rejected_execution_exception", "reason": "rejected execution of coordinating operation" } } }),
        })
        .collect();
    json!({ "items": items }).to_string()
}

#[tokio::test]
async fn items_the_server_is_too_busy_for_are_retried_until_they_land() {
    // The first request: the first item lands, the others get 429. Then all land.
    let (url, seen) = fake_server(|n, request| {
        let count = bulk_ids(&request.body).len();
        (200, bulk_answer((0..count).map(|i| if n == 0 && i > 0 { 429 } else { 201 })))
    })
    .await;
    let indexer = Indexer::new(&config(&url, "busy", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap();
    let docs: Vec<AggregateDoc> = (0..5).map(|i| doc(LEAP_DAY_MS, &format!("https://x.example/{i}"), "DE", 1)).collect();
    let started = Instant::now();
    let outcome = indexer.index(&docs).await.unwrap();
    assert_eq!((outcome.indexed, outcome.rejected.len()), (5, 0), "{outcome:?}");
    assert!(started.elapsed() >= Duration::from_millis(100), "retried without a pause");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].path.starts_with("/_bulk"), "{}", seen[0].path);
    let ids: Vec<String> = docs.iter().map(Indexer::doc_id).collect();
    assert_eq!(bulk_ids(&seen[0].body), ids);
    assert_eq!(bulk_ids(&seen[1].body), ids[1..], "only the refused items are sent again");
}

#[tokio::test]
async fn a_missing_index_is_created_when_the_cluster_does_not_create_it_on_write() {
    // Clusters with `action.auto_create_index: false` answer 404 per item.
    let (url, seen) = fake_server(|n, request| match (n, request.method.as_str()) {
        (0, "POST") => {
            let error = json!({ "type": "index_not_found_exception", "reason": "no such index [strict-2024.02.29]" });
            (200, json!({ "items": [{ "index": { "status": 404, "error": error } }] }).to_string())
        }
        (_, "PUT") => (200, json!({ "acknowledged": true, "shards_acknowledged": true, "index": "strict-2024.02.29" }).to_string()),
        _ => (200, bulk_answer([201].into_iter())),
    })
    .await;
    let indexer = Indexer::new(&config(&url, "strict", TimeSuffix::Daily, DEFAULT_BULK_MAX_BYTES)).unwrap();
    let outcome = indexer.index(&[doc(LEAP_DAY_MS, "https://x.example/", "DE", 1)]).await.unwrap();
    assert_eq!((outcome.indexed, outcome.rejected.len()), (1, 0), "{outcome:?}");

    let seen = seen.lock().unwrap();
    let calls: Vec<(&str, &str)> = seen.iter().map(|r| (r.method.as_str(), r.path.split('?').next().unwrap())).collect();
    assert_eq!(calls, [("POST", "/_bulk"), ("PUT", "/strict-2024.02.29"), ("POST", "/_bulk")]);
    let created: Value = serde_json::from_slice(&seen[1].body).unwrap();
    assert_eq!(created["mappings"]["properties"]["url"]["type"], "keyword", "created with the mapping: {created}");
}

#[tokio::test]
async fn a_server_that_stays_overloaded_is_reported_after_the_retry_budget() {
    let (url, seen) = fake_server(|_, _| {
        (503, json!({ "error": { "type": "cluster_block_exception", "reason": "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered]" }, "status": 503 }).to_string())
    })
    .await;
    // The pauses are 200 ms doubling, each jittered to up to twice its
    // nominal length: the first two take at most 400 + 800 ms, so a budget
    // of 2 s guarantees a third attempt whatever the jitter draws (with 1 s,
    // one run in three saw only two). No attempt starts past the budget.
    let budget = Duration::from_secs(2);
    let indexer = Indexer::new(&config(&url, "down", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap().with_retry_budget(budget);
    let docs: Vec<AggregateDoc> = (0..3).map(|i| doc(LEAP_DAY_MS, &format!("https://x.example/{i}"), "DE", 1)).collect();
    let started = Instant::now();
    let err = indexer.index(&docs).await.unwrap_err();
    assert!(started.elapsed() < budget + Duration::from_secs(1), "took {:?}", started.elapsed());
    match &err {
        IndexError::Overloaded { pending: 3, status: 503, reason, .. } => assert!(reason.contains("state not recovered"), "{reason}"),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(err.is_transient());
    assert!(seen.lock().unwrap().len() >= 3, "retried with backoff: {:?}", seen.lock().unwrap().len());
}

/// A bulk item's error body as Elasticsearch gives it.
fn item_error(status: u16, kind: &str, reason: &str) -> Value {
    json!({ "index": { "status": status, "error": { "type": kind, "reason": reason } } })
}

/// The per-item answers Elasticsearch gives for passing conditions — an
/// index set read-only once a node passed the flood-stage disk watermark
/// (403 in older versions, 429 since), index creation blocked, a full write
/// queue — are about the server's state, not the document: retried within
/// the budget, never reported as rejected. A mapping error beside them is.
#[tokio::test]
async fn items_refused_for_a_passing_block_are_retried_and_only_the_documents_own_faults_are_rejected() {
    let transient = [
        (403, "cluster_block_exception", "index [blocked] blocked by: [FORBIDDEN/12/index read-only / allow delete (api)];"),
        (429, "cluster_block_exception", "index [blocked] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];"),
        (403, "index_create_block_exception", "blocked by: [FORBIDDEN/10/cluster create-index blocked (api)];"),
        (429, "es_rejected_execution_exception", "rejected execution of coordinating operation"),
    ];
    let (url, seen) = fake_server(move |n, request| {
        let ids = bulk_ids(&request.body);
        let items: Vec<Value> = ids
            .iter()
            .enumerate()
            .map(|(i, _)| match (n, i) {
                // The last document does not fit the mapping, whenever it is sent.
                (_, i) if i == ids.len() - 1 && n == 0 => item_error(400, "mapper_parsing_exception", "failed to parse field [clicks]"),
                (0, i) => {
                    let (status, kind, reason) = transient[i % transient.len()];
                    item_error(status, kind, reason)
                }
                _ => json!({ "index": { "status": 201 } }),
            })
            .collect();
        (200, json!({ "items": items }).to_string())
    })
    .await;
    let indexer = Indexer::new(&config(&url, "blocked", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES)).unwrap();
    let docs: Vec<AggregateDoc> = (0..5).map(|i| doc(LEAP_DAY_MS, &format!("https://x.example/{i}"), "DE", 1)).collect();
    let outcome = indexer.index(&docs).await.unwrap();
    assert_eq!(outcome.indexed, 4, "{outcome:?}");
    let rejected: Vec<(usize, u16)> = outcome.rejected.iter().map(|r| (r.position, r.status)).collect();
    assert_eq!(rejected, [(4, 400)], "only the mapping error is the document's own");
    let seen = seen.lock().unwrap();
    let ids: Vec<String> = docs.iter().map(Indexer::doc_id).collect();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(bulk_ids(&seen[1].body), ids[..4], "the blocked items are sent again, the refused one is not");
}

/// A block that outlasts the retry budget is given back as transient, so the
/// publisher leaves the rows pending for its next round instead of marking
/// them `index_error` for good.
#[tokio::test]
async fn items_blocked_past_the_retry_budget_are_given_back_as_transient_not_rejected() {
    let reason = "index [blocked] blocked by: [FORBIDDEN/12/index read-only / allow delete (api)];";
    let (url, _) = fake_server(move |_, request| {
        let items: Vec<Value> = bulk_ids(&request.body).iter().map(|_| item_error(403, "cluster_block_exception", reason)).collect();
        (200, json!({ "items": items }).to_string())
    })
    .await;
    let indexer = Indexer::new(&config(&url, "blocked", TimeSuffix::None, DEFAULT_BULK_MAX_BYTES))
        .unwrap()
        .with_retry_budget(Duration::from_millis(500));
    let docs: Vec<AggregateDoc> = (0..2).map(|i| doc(LEAP_DAY_MS, &format!("https://x.example/{i}"), "DE", 1)).collect();
    let err = indexer.index(&docs).await.unwrap_err();
    match &err {
        IndexError::Overloaded { pending: 2, status: 403, reason, .. } => assert!(reason.contains("read-only / allow delete"), "{reason}"),
        other => panic!("expected Overloaded, got {other:?}"),
    }
    assert!(err.is_transient());
}

#[tokio::test]
async fn bulk_requests_stay_within_bulk_max_bytes_and_keep_order() {
    let (url, seen) = fake_server(|_, request| (200, bulk_answer(bulk_ids(&request.body).iter().map(|_| 201)))).await;
    let max = 4096;
    let indexer = Indexer::new(&config(&url, "sizes", TimeSuffix::None, max)).unwrap();
    let mut docs: Vec<AggregateDoc> = (0..300).map(|i| doc(LEAP_DAY_MS, &format!("https://x.example/{i}"), "DE", 1)).collect();
    // Larger than a whole request on its own: it goes alone rather than not at all.
    docs[150].url = format!("https://x.example/{}", "p".repeat(2 * max));
    assert_eq!(indexer.index(&docs).await.unwrap().indexed, 300);

    let seen = seen.lock().unwrap();
    assert!(seen.len() > 10, "{} requests", seen.len());
    let oversized: Vec<usize> = seen.iter().map(|r| r.body.len()).filter(|&len| len > max).collect();
    assert_eq!(oversized.len(), 1, "only the oversized document's request exceeds the limit: {oversized:?}");
    assert_eq!(bulk_ids(&seen.iter().find(|r| r.body.len() > max).unwrap().body).len(), 1);
    let sent: Vec<String> = seen.iter().flat_map(|r| bulk_ids(&r.body)).collect();
    assert_eq!(sent, docs.iter().map(Indexer::doc_id).collect::<Vec<_>>());
}
