//! `_bulk`: puts and deletes, chunked by size, each item's answer inspected,
//! busy items retried with backoff.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use elasticsearch::http::headers::{HeaderValue, CONTENT_TYPE};
use elasticsearch::BulkParts;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::client::{is_busy, reason_of_body, reason_of_error, response_text};
use super::{AggregateDoc, IndexError, Indexer};

/// First wait before re-sending items the server was too busy for; doubles
/// on every further attempt, up to [`MAX_BACKOFF`], each with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest single wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// A document the server refused for good (a 4xx other than 429 that
/// [`is_retryable`] does not call the server's state), e.g. because a value
/// does not fit the index's mapping.
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
    Busy {
        status: u16,
        reason: String,
    },
    /// The target index does not exist (auto-creation is disabled on the
    /// cluster); create it and retry.
    NoIndex,
    Refused {
        status: u16,
        reason: String,
    },
}

/// The `_source` actually written: the row plus its window start as a date.
#[derive(Serialize)]
struct Source<'a> {
    #[serde(flatten)]
    doc: &'a AggregateDoc,
    window_start: i64,
}

impl Indexer {
    /// Indexes `docs` with `_bulk` (an `index` operation under
    /// [`doc_id`](Self::doc_id), so repeats overwrite), in requests of at most
    /// `bulk_max_bytes` (a single larger document goes alone). Items the
    /// server cannot take now (429, 5xx, a blocked index: [`is_retryable`])
    /// are retried with exponential backoff for up to the retry budget, then
    /// given back as [`IndexError::Overloaded`] (nothing is marked, so the
    /// rows are sent again later); items it refuses for good are returned in
    /// [`IndexOutcome::rejected`] with the server's reason.
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

    fn op(&self, op: &IndexOp) -> Op {
        let (window_start_ms, id, version) = match op {
            IndexOp::Put { doc, version } => (doc.window_start_ms, Self::doc_id(doc), *version),
            IndexOp::Delete { window_start_ms, url, country, version } => {
                (*window_start_ms, Self::group_id(*window_start_ms, url, country), Some(*version))
            }
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
        let mut pauses = crate::backoff::pauses_jittered(FIRST_BACKOFF, MAX_BACKOFF);
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
                    ItemResult::Refused { status, reason } => {
                        outcome.rejected.push(Rejected { position: start + i, id: op.id.clone(), index: op.index.clone(), status, reason })
                    }
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
                let delay = pauses.next_pause();
                if began.elapsed() + delay > self.retry_budget {
                    let (status, reason) = last_busy;
                    return Err(IndexError::Overloaded { pending: busy.len() + missing.len(), status, reason, waited: began.elapsed() });
                }
                tracing::debug!(documents = busy.len(), status = last_busy.0, ?delay, "search server busy; retrying");
                tokio::time::sleep(delay).await;
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
                    status if is_retryable(status, kind) => ItemResult::Busy { status, reason },
                    status => ItemResult::Refused { status, reason },
                }
            })
            .collect())
    }
}

/// Whether a bulk item's error is about the server's state now rather than
/// about the document, so the same item may succeed later: "not now", not
/// "not this". By status, 429 and 5xx ([`is_busy`]); by error type, what
/// Elasticsearch answers with other statuses for passing conditions:
/// - `cluster_block_exception`: the index or cluster is blocked, e.g.
///   `read_only_allow_delete` once a node passes the flood-stage disk
///   watermark (403 `FORBIDDEN/12` in older versions, 429 since), lifted when
///   disk is freed; or read-only set by an operator, lifted by one.
/// - `index_create_block_exception`: the same block met while creating the
///   index the item goes to.
/// - `es_rejected_execution_exception`: a write thread pool's queue is full.
/// - `circuit_breaking_exception`: a memory circuit breaker tripped.
/// - `unavailable_shards_exception`, `no_shard_available_action_exception`,
///   `node_not_connected_exception`, `node_closed_exception`,
///   `process_cluster_event_timeout_exception`: a shard or node is moving or
///   restarting.
///
/// Anything else (a mapping or parsing error, an illegal argument, a
/// security refusal) is the document's or the configuration's and is
/// reported for good ([`Rejected`]).
fn is_retryable(status: u16, kind: Option<&str>) -> bool {
    is_busy(status)
        || matches!(
            kind,
            Some(
                "cluster_block_exception"
                    | "index_create_block_exception"
                    | "es_rejected_execution_exception"
                    | "circuit_breaking_exception"
                    | "unavailable_shards_exception"
                    | "no_shard_available_action_exception"
                    | "node_not_connected_exception"
                    | "node_closed_exception"
                    | "process_cluster_event_timeout_exception"
            )
        )
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

/// Half the delay plus a random part of the other half, so hosts that were
/// turned away together do not come back together.
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
