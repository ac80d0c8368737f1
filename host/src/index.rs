//! Aggregates → the search server (Elasticsearch API).
//!
//! Every aggregate row becomes one document whose `_id` is derived from its
//! group (window, URL, country), so re-aggregating a window overwrites the
//! earlier document instead of adding a second one, and re-sending a batch
//! after a failure is harmless. Writes and deletes from the pipeline carry
//! the aggregation's version (`version_type=external_gte`), so of two
//! indexers the older aggregation never lands over the newer one. Documents go out in `_bulk` requests no larger
//! than `index.bulk_max_bytes`; each item's result is inspected: overloaded
//! items are retried with backoff, refused ones are returned with the
//! server's reason, and an unreachable server is an error right away, because
//! the rows stay in PostgreSQL and the caller simply tries again later.
//!
//! Only APIs that Elasticsearch 8 and 9 (and OpenSearch) share are used:
//! composable index templates, index creation with mappings, `_bulk`,
//! `_search` with `search_after`, `_refresh`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::DateTime;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::{HeaderValue, CONTENT_TYPE};
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::indices::{
    IndicesCreateParts, IndicesGetMappingParts, IndicesPutIndexTemplateParts, IndicesPutMappingParts,
    IndicesRefreshParts,
};
use elasticsearch::{BulkParts, Elasticsearch, SearchParts};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::{IndexConfig, TimeSuffix};

/// Longest any request may take, from connecting to the last byte of the
/// answer. Without it a server that accepts connections but never answers
/// would stall the aggregator forever; 30 s leaves room for a full 100 MiB
/// bulk request on a busy cluster.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `/ready` must answer promptly, so a ping gives up much sooner.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// First wait before re-sending items the server was too busy for; doubles
/// on every further attempt, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest single wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// How long one bulk request's items are retried before giving the problem
/// back to the caller, whose rows wait safely in PostgreSQL. Long enough to
/// ride out a rolling restart's blip, short enough not to hold up newer windows.
const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);
/// Documents fetched per `_search` page. Well below `index.max_result_window`
/// (10 000 by default), which no single request may exceed.
const SEARCH_PAGE: usize = 1000;
/// Above Elastic's built-in templates (100) so our mapping wins for our
/// names, without claiming the top so an operator can still override it.
const TEMPLATE_PRIORITY: u32 = 200;
/// Bumped whenever [`mappings`] changes; stored in the template so an
/// operator can tell which host version wrote it.
const MAPPING_VERSION: u32 = 1;

/// One aggregate row as indexed. Field names in the JSON document are exactly
/// these snake_case names, except `is_final`, which is `final`; the document
/// also carries `window_start`, the same instant as a `date` for range queries
/// and dashboards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregateDoc {
    /// Start of the window, Unix milliseconds, inclusive.
    pub window_start_ms: i64,
    /// End of the window, Unix milliseconds, exclusive.
    pub window_end_ms: i64,
    /// The normalised URL.
    pub url: String,
    /// ISO country code, or `unknown`.
    pub country: String,
    /// Clicks in the window.
    pub clicks: u64,
    /// Distinct users in the window.
    pub unique_users: u64,
    /// Sum of the measured times on page, in milliseconds.
    pub time_spent_total_ms: u64,
    /// How many times on page were measured.
    pub time_spent_samples: u64,
    /// Mean time on page in seconds; `None` (JSON `null`) without samples.
    pub avg_time_spent_s: Option<f64>,
    /// Whether the window is past its allowed lateness and will not change.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Name of the aggregate plugin that computed the row.
    pub plugin_name: String,
    /// Its version.
    pub plugin_version: String,
    /// When the row was computed, Unix milliseconds.
    pub aggregated_at_ms: i64,
}

impl AggregateDoc {
    /// The mean time on page in seconds, as stored in
    /// [`avg_time_spent_s`](Self::avg_time_spent_s): `None` without samples.
    pub fn average_time_spent_s(time_spent_total_ms: u64, time_spent_samples: u64) -> Option<f64> {
        (time_spent_samples > 0).then(|| time_spent_total_ms as f64 / time_spent_samples as f64 / 1000.0)
    }
}

/// The `_source` actually written: the row plus its window start as a date.
#[derive(Serialize)]
struct Source<'a> {
    #[serde(flatten)]
    doc: &'a AggregateDoc,
    window_start: i64,
}

/// A document the server refused for good (a 4xx other than 429), e.g.
/// because a value does not fit the index's mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Position of the document in the slice given to [`Indexer::index`].
    pub position: usize,
    /// Its `_id` ([`Indexer::doc_id`]).
    pub id: String,
    /// The index it was sent to.
    pub index: String,
    /// The item's HTTP status.
    pub status: u16,
    /// The server's error type and reason.
    pub reason: String,
}

/// What [`Indexer::index`] or [`Indexer::apply`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndexOutcome {
    /// Operations the server carried out: documents created or overwritten,
    /// documents deleted (or already absent).
    pub indexed: usize,
    /// Positions of operations the server skipped because it holds the
    /// document of a newer aggregation (a version conflict): nothing to do.
    pub superseded: Vec<usize>,
    /// Operations it refused; every input operation is counted in `indexed`,
    /// listed in `superseded`, or listed here.
    pub rejected: Vec<Rejected>,
}

/// One change to a group's document.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexOp {
    /// Write the document. With a `version`, only when the index does not
    /// hold one of a newer version (`version_type=external_gte`): two hosts,
    /// or a backfill beside a pass, never put an older aggregation over a
    /// newer one.
    Put {
        /// The document.
        doc: AggregateDoc,
        /// The aggregation's version (the window's), if versioned.
        version: Option<i64>,
    },
    /// Delete the document of a group that no longer exists in its window,
    /// unless the index holds one of a newer version.
    Delete {
        /// The group's window start, Unix milliseconds.
        window_start_ms: i64,
        /// The group's URL.
        url: String,
        /// The group's country.
        country: String,
        /// The version of the aggregation that dropped the group.
        version: i64,
    },
}

/// Which documents [`Indexer::search`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocQuery {
    /// Only windows starting at or after this, Unix milliseconds.
    pub from_ms: Option<i64>,
    /// Only windows starting before this, Unix milliseconds.
    pub to_ms: Option<i64>,
    /// Only this exact URL.
    pub url: Option<String>,
    /// Only this exact country.
    pub country: Option<String>,
    /// At most this many documents.
    pub limit: usize,
}

/// Problems talking to the search server.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// `index.url` cannot be used as a server address.
    #[error("index.url {url:?} is not a usable URL: {reason}; use e.g. http://127.0.0.1:9200")]
    Url {
        /// The configured URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The server could not be reached, did not answer in time, or answered
    /// that it cannot serve requests now (429, 5xx). Transient: try again later.
    #[error("search server {url} is unavailable: {reason}")]
    Unavailable {
        /// The server.
        url: String,
        /// What happened.
        reason: String,
    },
    /// The server kept answering "too busy" (429 or 5xx) for some documents
    /// until the retry budget ran out. Transient: send them again later.
    #[error("search server kept refusing {pending} documents with HTTP {status} for {waited:?}: {reason}")]
    Overloaded {
        /// Documents still not indexed.
        pending: usize,
        /// The last status the server gave.
        status: u16,
        /// The last reason it gave.
        reason: String,
        /// How long they were retried.
        waited: Duration,
    },
    /// The server refused a whole request for a reason retrying won't fix:
    /// authentication, permissions, a request too large, a malformed query.
    #[error("search server refused {operation} with HTTP {status}: {reason}")]
    Refused {
        /// What was attempted, e.g. `_bulk`.
        operation: String,
        /// The HTTP status.
        status: u16,
        /// The server's error type and reason.
        reason: String,
    },
    /// Existing indices map a field differently from what this module writes
    /// (typically created by dynamic mapping before the template existed).
    #[error("index {indices} has a conflicting mapping: {reason}; delete or reindex those indices so they get the clickstream mapping")]
    MappingConflict {
        /// The indices with the conflicting field, comma-separated.
        indices: String,
        /// The server's explanation, e.g. `mapper [url] cannot be changed from type [text] to [keyword]`.
        reason: String,
    },
    /// The server answered with something the Elasticsearch API does not
    /// promise (not JSON, missing fields, a document that is not an aggregate).
    #[error("search server answered {operation} unexpectedly: {reason}")]
    Protocol {
        /// What was attempted.
        operation: String,
        /// What was wrong with the answer.
        reason: String,
    },
}

impl IndexError {
    /// Whether the same call may succeed later without any change (the
    /// server was down or overloaded), as opposed to needing a fix.
    pub fn is_transient(&self) -> bool {
        matches!(self, IndexError::Unavailable { .. } | IndexError::Overloaded { .. })
    }
}

/// Writes aggregate documents to, and reads them from, the search server.
#[derive(Debug, Clone)]
pub struct Indexer {
    client: Elasticsearch,
    /// The configured URL without credentials, for messages.
    url: String,
    index: String,
    /// `index-*`: what time-suffixed names look like.
    suffixed: String,
    time_suffix: TimeSuffix,
    bulk_max_bytes: usize,
    retry_budget: Duration,
}

/// One bulk operation: the action line and the source line, ready to send.
struct Op {
    id: String,
    index: String,
    /// A delete: a missing document or index means done.
    delete: bool,
    lines: Vec<u8>,
}

/// How the server answered one bulk item.
enum ItemResult {
    Indexed,
    /// A version conflict: the index holds a newer version of the document.
    Superseded,
    /// A delete of a document that is not there.
    NotFound,
    /// Worth retrying after a pause.
    Busy { status: u16, reason: String },
    /// The target index does not exist (auto-creation is disabled on the
    /// cluster); create it and retry.
    NoIndex,
    Refused { status: u16, reason: String },
}

impl Indexer {
    /// A client for `config.url`; credentials in the URL
    /// (`https://user:password@host:9200`) are sent as basic auth. Connects
    /// to nothing yet.
    pub fn new(config: &IndexConfig) -> Result<Indexer, IndexError> {
        let bad_url = |reason: String| IndexError::Url { url: config.url.clone(), reason };
        let mut url = Url::parse(&config.url).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_url(format!("scheme {:?} is not http or https", url.scheme())));
        }
        // The client sends credentials embedded in the URL *and* as a header
        // unless they are moved out, as `Transport::single_node` also does.
        let credentials = (!url.username().is_empty()).then(|| {
            Credentials::Basic(
                percent_decode(url.username()),
                url.password().map(percent_decode).unwrap_or_default(),
            )
        });
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let shown = url.to_string();
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url)).timeout(REQUEST_TIMEOUT);
        if let Some(credentials) = credentials {
            builder = builder.auth(credentials);
        }
        let transport = builder.build().map_err(|e| bad_url(e.to_string()))?;
        Ok(Indexer {
            client: Elasticsearch::new(transport),
            url: shown.trim_end_matches('/').to_string(),
            index: config.index.clone(),
            suffixed: format!("{}-*", config.index),
            time_suffix: config.time_suffix,
            bulk_max_bytes: config.bulk_max_bytes,
            retry_budget: DEFAULT_RETRY_BUDGET,
        })
    }

    /// Sets how long [`index`](Self::index) keeps retrying items the server
    /// is too busy for before returning [`IndexError::Overloaded`]
    /// (default 30 s). Shutdown paths and tests want less.
    pub fn with_retry_budget(mut self, budget: Duration) -> Indexer {
        self.retry_budget = budget;
        self
    }

    /// The underlying client, for queries this module does not wrap (e.g.
    /// aggregations for the API).
    pub fn client(&self) -> &Elasticsearch {
        &self.client
    }

    /// What searches cover: the plain index name and every time-suffixed one.
    /// Listed separately rather than as `index*` so `clicks` does not also
    /// match `clicks2`.
    pub fn search_indices(&self) -> [&str; 2] {
        [&self.index, &self.suffixed]
    }

    /// Creates or updates the index template (our names get the mapping when
    /// created), creates the un-suffixed index, and adds the mapping to
    /// existing indices. The mapping: keyword for `url`, `country`,
    /// `plugin_*`; date for `window_start`; long for counts and times; double
    /// for `avg_time_spent_s`; boolean for `final`. Idempotent, and safe for
    /// two hosts at once (both write the same template; "already exists" is
    /// success). Fails with [`IndexError::MappingConflict`] when an existing
    /// index maps one of these fields differently, which would make terms
    /// aggregations or range queries on it fail later.
    pub async fn ensure_mapping(&self) -> Result<(), IndexError> {
        let name = format!("{}-template", self.index);
        let template = json!({
            "index_patterns": [&self.index, &self.suffixed],
            "priority": TEMPLATE_PRIORITY,
            "version": MAPPING_VERSION,
            "_meta": { "managed_by": "clickstream" },
            "template": { "mappings": mappings() },
        });
        let response = self
            .client
            .indices()
            .put_index_template(IndicesPutIndexTemplateParts::Name(&name))
            .body(template)
            .send()
            .await;
        self.json(response, "PUT _index_template").await?;

        if self.time_suffix == TimeSuffix::None {
            self.create_index(&self.index).await?;
        }

        // Indices created before the template (by dynamic mapping, or by an
        // older version) keep their mapping; adding ours either fills in
        // missing fields or fails on a conflicting type, which is what we
        // want to know now rather than at the first dashboard query.
        let existing = self.mappings_in_use().await?;
        if existing.is_empty() {
            return Ok(());
        }
        let targets = self.search_indices();
        let response = self
            .client
            .indices()
            .put_mapping(IndicesPutMappingParts::Index(&targets))
            .ignore_unavailable(true)
            .allow_no_indices(true)
            .body(mappings())
            .send()
            .await;
        match self.json(response, "PUT _mapping").await {
            Err(IndexError::Refused { status: 400, reason, .. }) => {
                // Types are what usually differ; for anything subtler (a date
                // format, say) the server's reason names the field and the
                // pattern has to do for the indices.
                let mut indices = conflicting_indices(&existing);
                if indices.is_empty() {
                    indices = targets.iter().map(|t| t.to_string()).collect();
                }
                Err(IndexError::MappingConflict { indices: indices.join(","), reason })
            }
            other => other.map(drop),
        }
    }

    /// The document `_id` for `doc`'s group (window start, URL, country):
    /// the hex SHA-256 of the three as a JSON array. Stable across hosts and
    /// versions, so a re-aggregated group overwrites its document; the JSON
    /// encoding keeps `("a|b", "c")` and `("a", "b|c")` apart; 64 characters
    /// whatever the URL's length (ids are limited to 512 bytes).
    pub fn doc_id(doc: &AggregateDoc) -> String {
        Self::group_id(doc.window_start_ms, &doc.url, &doc.country)
    }

    /// [`doc_id`](Self::doc_id) of a group given by its parts.
    pub fn group_id(window_start_ms: i64, url: &str, country: &str) -> String {
        let key = json!([window_start_ms, url, country]).to_string();
        Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The index a document whose window starts at `window_start_ms` goes
    /// to: the configured name, or with `-YYYY.MM.DD` / `-YYYY.MM` of that
    /// instant in UTC.
    pub fn index_for(&self, window_start_ms: i64) -> String {
        let format = match self.time_suffix {
            TimeSuffix::None => return self.index.clone(),
            TimeSuffix::Daily => "%Y.%m.%d",
            TimeSuffix::Monthly => "%Y.%m",
        };
        match DateTime::from_timestamp_millis(window_start_ms) {
            Some(at) => format!("{}-{}", self.index, at.format(format)),
            // Beyond chrono's ±262 000 years: no real window, but the
            // document must still land somewhere searches look.
            None => self.index.clone(),
        }
    }

    /// Indexes `docs` with `_bulk` (an `index` operation under
    /// [`doc_id`](Self::doc_id), so repeats overwrite), in requests of at most
    /// `bulk_max_bytes` (a single larger document goes alone). Items the
    /// server is too busy for (429, 5xx) are retried with exponential
    /// backoff for up to the retry budget; items it refuses for good are
    /// returned in [`IndexOutcome::rejected`] with the server's reason.
    ///
    /// Errors are all-or-nothing from the caller's point of view: some
    /// documents may have been indexed, and sending the whole batch again is
    /// the remedy (the ids make that harmless). A connection failure or
    /// timeout is [`IndexError::Unavailable`] at once, without retrying.
    pub async fn index(&self, docs: &[AggregateDoc]) -> Result<IndexOutcome, IndexError> {
        let ops: Vec<IndexOp> = docs.iter().map(|doc| IndexOp::Put { doc: doc.clone(), version: None }).collect();
        self.apply(&ops).await
    }

    /// Sends puts and deletes as [`index`](Self::index) sends documents.
    /// A versioned operation the index already has a newer version of is
    /// listed in [`IndexOutcome::superseded`]; deleting a document (or an
    /// index) that does not exist counts as done.
    pub async fn apply(&self, ops: &[IndexOp]) -> Result<IndexOutcome, IndexError> {
        let ops: Vec<Op> = ops.iter().map(|op| self.op(op)).collect();
        let mut outcome = IndexOutcome::default();
        let mut start = 0;
        for chunk in chunks(&ops, self.bulk_max_bytes) {
            self.bulk_with_retries(chunk, start, &mut outcome).await?;
            start += chunk.len();
        }
        Ok(outcome)
    }

    /// Makes everything indexed so far visible to searches (the server
    /// otherwise does so about once a second).
    pub async fn refresh(&self) -> Result<(), IndexError> {
        let targets = self.search_indices();
        let response = self
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&targets))
            .ignore_unavailable(true)
            .allow_no_indices(true)
            .send()
            .await;
        self.json(response, "_refresh").await.map(drop)
    }

    /// Whether the server answers, within a few seconds (for `/ready`).
    pub async fn ping(&self) -> Result<(), IndexError> {
        let response = self.client.ping().request_timeout(PING_TIMEOUT).send().await;
        let response = response.map_err(|e| self.unavailable(&e))?;
        let status = response.status_code().as_u16();
        if response.status_code().is_success() {
            Ok(())
        } else if is_busy(status) {
            Err(IndexError::Unavailable { url: self.url.clone(), reason: format!("HTTP {status}") })
        } else {
            Err(IndexError::Refused { operation: "HEAD /".into(), status, reason: format!("HTTP {status}") })
        }
    }

    /// Documents whose window starts in `[from_ms, to_ms)`, optionally with
    /// exactly `url` and `country`, sorted by window start, URL, country, at
    /// most `limit`. Covers the plain and all time-suffixed indices.
    pub async fn search(&self, query: &DocQuery) -> Result<Vec<AggregateDoc>, IndexError> {
        let mut filter = Vec::new();
        if query.from_ms.is_some() || query.to_ms.is_some() {
            let mut range = serde_json::Map::new();
            if let Some(from) = query.from_ms {
                range.insert("gte".into(), from.into());
            }
            if let Some(to) = query.to_ms {
                range.insert("lt".into(), to.into());
            }
            filter.push(json!({ "range": { "window_start_ms": range } }));
        }
        if let Some(url) = &query.url {
            filter.push(json!({ "term": { "url": url } }));
        }
        if let Some(country) = &query.country {
            filter.push(json!({ "term": { "country": country } }));
        }
        // (window, url, country) is unique per document (it is the id), so it
        // is also an exact `search_after` cursor. `unmapped_type` keeps an
        // index that has no documents yet from failing the sort.
        let sort = json!([
            { "window_start_ms": { "order": "asc", "unmapped_type": "long" } },
            { "url": { "order": "asc", "unmapped_type": "keyword" } },
            { "country": { "order": "asc", "unmapped_type": "keyword" } },
        ]);
        let targets = self.search_indices();
        let mut docs = Vec::new();
        let mut after: Option<Value> = None;
        while docs.len() < query.limit {
            let size = (query.limit - docs.len()).min(SEARCH_PAGE);
            let mut body = json!({
                "size": size,
                "query": { "bool": { "filter": filter } },
                "sort": sort,
                "track_total_hits": false,
            });
            if let Some(after) = &after {
                body["search_after"] = after.clone();
            }
            let response = self
                .client
                .search(SearchParts::Index(&targets))
                .ignore_unavailable(true)
                .allow_no_indices(true)
                .body(body)
                .send()
                .await;
            let page: SearchResponse = self.parse(self.json(response, "_search").await?, "_search")?;
            let got = page.hits.hits.len();
            for hit in page.hits.hits {
                let doc = serde_json::from_value(hit.source).map_err(|e| IndexError::Protocol {
                    operation: "_search".into(),
                    reason: format!("document {} in {} is not an aggregate: {e}", hit.id, hit.index),
                })?;
                docs.push(doc);
                if !hit.sort.is_empty() {
                    after = Some(Value::Array(hit.sort));
                }
            }
            // A short page is the last; a server that gives no sort values
            // cannot be paged, so one page is all it gets.
            if got < size || after.is_none() {
                break;
            }
        }
        Ok(docs)
    }

    fn op(&self, op: &IndexOp) -> Op {
        let (window_start_ms, id, version) = match op {
            IndexOp::Put { doc, version } => (doc.window_start_ms, Self::doc_id(doc), *version),
            IndexOp::Delete { window_start_ms, url, country, version } => (*window_start_ms, Self::group_id(*window_start_ms, url, country), Some(*version)),
        };
        let index = self.index_for(window_start_ms);
        let mut meta = json!({ "_index": &index, "_id": &id });
        if let Some(version) = version {
            // external_gte, not external: re-sending the same aggregation
            // (after a timeout, by a second host) is a success, not a conflict.
            meta["version"] = version.into();
            meta["version_type"] = "external_gte".into();
        }
        let action = match op {
            IndexOp::Put { .. } => json!({ "index": meta }),
            IndexOp::Delete { .. } => json!({ "delete": meta }),
        };
        let mut lines = action.to_string().into_bytes();
        lines.push(b'\n');
        if let IndexOp::Put { doc, .. } = op {
            let source = Source { doc, window_start: doc.window_start_ms };
            // Strings, integers, floats (NaN becomes null) and bools: serde_json
            // has no failure case for this type.
            serde_json::to_writer(&mut lines, &source).expect("an aggregate serialises to JSON");
            lines.push(b'\n');
        }
        Op { id, index, delete: matches!(op, IndexOp::Delete { .. }), lines }
    }

    /// Sends one chunk, then re-sends what the server was too busy for until
    /// all is settled or the retry budget is spent. `start` is the chunk's
    /// position in the caller's slice.
    async fn bulk_with_retries(&self, chunk: &[Op], start: usize, outcome: &mut IndexOutcome) -> Result<(), IndexError> {
        let began = Instant::now();
        let mut delay = FIRST_BACKOFF;
        let mut pending: Vec<usize> = (0..chunk.len()).collect();
        let mut created = BTreeSet::new();
        loop {
            let results = self.bulk(chunk, &pending).await?;
            let mut busy = Vec::new();
            let mut missing = Vec::new();
            let mut last_busy = (0, String::new());
            for (i, result) in pending.iter().copied().zip(results) {
                let op = &chunk[i];
                match result {
                    ItemResult::Indexed => outcome.indexed += 1,
                    ItemResult::Superseded => outcome.superseded.push(start + i),
                    ItemResult::NotFound | ItemResult::NoIndex if op.delete => outcome.indexed += 1,
                    ItemResult::NotFound => outcome.rejected.push(Rejected {
                        position: start + i,
                        id: op.id.clone(),
                        index: op.index.clone(),
                        status: 404,
                        reason: "not_found".into(),
                    }),
                    ItemResult::Busy { status, reason } => {
                        busy.push(i);
                        last_busy = (status, reason);
                    }
                    ItemResult::NoIndex if !created.contains(&op.index) => missing.push(i),
                    ItemResult::NoIndex => outcome.rejected.push(Rejected {
                        position: start + i,
                        id: op.id.clone(),
                        index: op.index.clone(),
                        status: 404,
                        reason: "index_not_found_exception: the index is still missing after creating it".into(),
                    }),
                    ItemResult::Refused { status, reason } => outcome.rejected.push(Rejected {
                        position: start + i,
                        id: op.id.clone(),
                        index: op.index.clone(),
                        status,
                        reason,
                    }),
                }
            }
            for &i in &missing {
                if created.insert(chunk[i].index.clone()) {
                    self.create_index(&chunk[i].index).await?;
                }
            }
            if busy.is_empty() && missing.is_empty() {
                return Ok(());
            }
            if !busy.is_empty() {
                if began.elapsed() + delay > self.retry_budget {
                    let (status, reason) = last_busy;
                    return Err(IndexError::Overloaded {
                        pending: busy.len() + missing.len(),
                        status,
                        reason,
                        waited: began.elapsed(),
                    });
                }
                tracing::debug!(documents = busy.len(), status = last_busy.0, ?delay, "search server busy; retrying");
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
            // Back in input order, so that when both of two operations on one
            // id are retried the later still wins. (If only the earlier one is,
            // it lands last; callers send one row per group per call.)
            pending = busy;
            pending.extend(missing);
            pending.sort_unstable();
        }
    }

    /// One `_bulk` request for `chunk[pending]`; one result per item, in order.
    async fn bulk(&self, chunk: &[Op], pending: &[usize]) -> Result<Vec<ItemResult>, IndexError> {
        let mut body = Vec::with_capacity(pending.iter().map(|&i| chunk[i].lines.len()).sum());
        for &i in pending {
            body.extend_from_slice(&chunk[i].lines);
        }
        let response = self
            .client
            .bulk(BulkParts::None)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/x-ndjson"))
            // Only what is inspected: a 10 000-item answer is otherwise
            // several megabytes of shard bookkeeping. `error` keeps the
            // reason when the whole request is refused.
            .filter_path(&["items.*.status", "items.*.error", "error", "status"])
            .body(vec![body])
            .send()
            .await
            .map_err(|e| self.unavailable(&e))?;
        let status = response.status_code().as_u16();
        if is_busy(status) {
            // The whole request was turned away (e.g. a coordinating node's
            // queue is full); every item is worth retrying.
            let reason = reason_of_body(&response_text(response).await);
            return Ok(pending.iter().map(|_| ItemResult::Busy { status, reason: reason.clone() }).collect());
        }
        let answer: BulkResponse = self.parse(self.json(Ok(response), "_bulk").await?, "_bulk")?;
        if answer.items.len() != pending.len() {
            return Err(IndexError::Protocol {
                operation: "_bulk".into(),
                reason: format!("{} items answered for {} sent", answer.items.len(), pending.len()),
            });
        }
        Ok(answer
            .items
            .into_iter()
            .map(|item| {
                // One key per item, named for the operation (`index`).
                let Some(item) = item.into_values().next() else {
                    return ItemResult::Refused { status: 0, reason: "empty bulk item".into() };
                };
                let reason = item.error.as_ref().map(reason_of_error).unwrap_or_default();
                let kind = item.error.as_ref().and_then(|e| e.get("type")).and_then(Value::as_str);
                match item.status {
                    200..=299 => ItemResult::Indexed,
                    404 if kind == Some("index_not_found_exception") => ItemResult::NoIndex,
                    404 if item.error.is_none() => ItemResult::NotFound,
                    409 if kind == Some("version_conflict_engine_exception") => ItemResult::Superseded,
                    status if is_busy(status) => ItemResult::Busy { status, reason },
                    status => ItemResult::Refused { status, reason },
                }
            })
            .collect())
    }

    /// Creates `index` with the mapping; one that exists already (made by
    /// another host, or by the template on first write) is fine.
    async fn create_index(&self, index: &str) -> Result<(), IndexError> {
        let response = self
            .client
            .indices()
            .create(IndicesCreateParts::Index(index))
            .body(json!({ "mappings": mappings() }))
            .send()
            .await;
        match self.json(response, "PUT index").await {
            Err(IndexError::Refused { status: 400, reason, .. })
                if reason.starts_with("resource_already_exists_exception") =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// The mapping of every index searches cover, by index name.
    async fn mappings_in_use(&self) -> Result<HashMap<String, Value>, IndexError> {
        let targets = self.search_indices();
        let response = self
            .client
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&targets))
            .ignore_unavailable(true)
            .allow_no_indices(true)
            .send()
            .await;
        self.parse(self.json(response, "GET _mapping").await?, "GET _mapping")
    }

    /// The JSON body of a successful answer; the error otherwise.
    /// The JSON body of a response, or the error it stands for.
    pub(crate) async fn json(&self, response: Result<Response, elasticsearch::Error>, operation: &str) -> Result<Value, IndexError> {
        let response = response.map_err(|e| self.unavailable(&e))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| self.unavailable(&e))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).map_err(|e| IndexError::Protocol {
                operation: operation.into(),
                reason: format!("not JSON ({e}): {}", truncate(&text)),
            });
        }
        let reason = reason_of_body(&text);
        if is_busy(status) {
            Err(IndexError::Unavailable { url: self.url.clone(), reason: format!("{operation}: HTTP {status}: {reason}") })
        } else {
            Err(IndexError::Refused { operation: operation.into(), status, reason })
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, value: Value, operation: &str) -> Result<T, IndexError> {
        serde_json::from_value(value).map_err(|e| IndexError::Protocol { operation: operation.into(), reason: e.to_string() })
    }

    fn unavailable(&self, error: &elasticsearch::Error) -> IndexError {
        // The client's own message is only "error sending request"; the
        // cause (refused, timed out, DNS) is further down the chain.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !reason.contains(&text) {
                reason = format!("{reason}: {text}");
            }
            source = cause.source();
        }
        if error.is_timeout() {
            reason = format!("no answer within {REQUEST_TIMEOUT:?}: {reason}");
        }
        IndexError::Unavailable { url: self.url.clone(), reason }
    }
}

/// The mapping every clickstream index gets. `dynamic: false` keeps fields a
/// newer host adds in `_source` without letting a guess at their type lock
/// the mapping before the template says otherwise.
fn mappings() -> Value {
    json!({
        "dynamic": false,
        "properties": {
            // ISO strings in queries (as Kibana sends them) and the epoch
            // milliseconds we write are both understood.
            "window_start": { "type": "date", "format": "strict_date_optional_time||epoch_millis" },
            "window_start_ms": { "type": "long" },
            "window_end_ms": { "type": "long" },
            "url": { "type": "keyword" },
            "country": { "type": "keyword" },
            "clicks": { "type": "long" },
            "unique_users": { "type": "long" },
            "time_spent_total_ms": { "type": "long" },
            "time_spent_samples": { "type": "long" },
            "avg_time_spent_s": { "type": "double" },
            "final": { "type": "boolean" },
            "plugin_name": { "type": "keyword" },
            "plugin_version": { "type": "keyword" },
            "aggregated_at_ms": { "type": "long" },
        }
    })
}

/// Indices (from a `GET _mapping` answer) where a field of ours has another type.
fn conflicting_indices(existing: &HashMap<String, Value>) -> Vec<String> {
    let ours = mappings();
    let mut names: Vec<String> = existing
        .iter()
        .filter(|(_, mapping)| {
            let theirs = &mapping["mappings"]["properties"];
            ours["properties"].as_object().into_iter().flatten().any(|(field, spec)| {
                theirs[field]["type"].as_str().is_some_and(|t| Some(t) != spec["type"].as_str())
            })
        })
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}

/// Consecutive runs of `ops` whose lines add up to at most `max` bytes; an
/// operation larger than `max` on its own forms a run of one, since it cannot
/// be split and the server may well accept it.
fn chunks(ops: &[Op], max: usize) -> Vec<&[Op]> {
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, op) in ops.iter().enumerate() {
        if i > start && bytes + op.lines.len() > max {
            runs.push(&ops[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += op.lines.len();
    }
    if start < ops.len() {
        runs.push(&ops[start..]);
    }
    runs
}

/// Statuses that mean "not now" rather than "not this": too many requests,
/// and server-side failures (a shard relocating, a node restarting).
fn is_busy(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// Half the delay plus a random part of the other half, so hosts that were
/// turned away together do not come back together.
fn jitter(delay: Duration) -> Duration {
    let half = delay / 2;
    half + half.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
}

/// `type: reason (caused by type: reason)` from an Elasticsearch error object.
fn reason_of_error(error: &Value) -> String {
    let describe = |e: &Value| match (e.get("type").and_then(Value::as_str), e.get("reason").and_then(Value::as_str)) {
        (Some(t), Some(r)) => format!("{t}: {r}"),
        (Some(t), None) => t.to_string(),
        (None, Some(r)) => r.to_string(),
        (None, None) => e.to_string(),
    };
    let mut text = describe(error);
    if let Some(cause) = error.get("caused_by") {
        let cause = describe(cause);
        if !text.contains(&cause) {
            text = format!("{text} (caused by {cause})");
        }
    }
    text
}

/// The reason in an error answer's body, or the body itself when it is not
/// the usual `{"error": ...}`.
fn reason_of_body(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(body) => match body.get("error") {
            Some(Value::String(reason)) => reason.clone(),
            Some(error) => reason_of_error(error),
            None => truncate(text),
        },
        Err(_) if text.trim().is_empty() => "(empty body)".into(),
        Err(_) => truncate(text),
    }
}

async fn response_text(response: Response) -> String {
    response.text().await.unwrap_or_else(|e| format!("(body unreadable: {e})"))
}

/// Error bodies can be whole HTML pages from a proxy; a message needs the start.
fn truncate(text: &str) -> String {
    const MAX: usize = 300;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// `%40` → `@` in URL user names and passwords.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    items: Vec<HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    status: u16,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct SearchResponse {
    hits: Hits,
}

#[derive(Deserialize)]
struct Hits {
    hits: Vec<Hit>,
}

#[derive(Deserialize)]
struct Hit {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_index")]
    index: String,
    #[serde(rename = "_source")]
    source: Value,
    #[serde(default)]
    sort: Vec<Value>,
}
