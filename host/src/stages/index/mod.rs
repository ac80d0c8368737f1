//! Aggregates → the search server (Elasticsearch API).
//!
//! Every aggregate row becomes one document whose `_id` is derived from its
//! group (window, URL, country), so re-aggregating a window overwrites the
//! earlier document instead of adding a second one, and re-sending a batch
//! after a failure is harmless. Writes and deletes from the pipeline carry
//! the aggregation's version (`version_type=external_gte`), so of two
//! indexers the older aggregation never lands over the newer one.
//!
//! - [`client`]: the connection, credentials, and what an answer means;
//! - [`mapping`]: the index template and mappings;
//! - [`bulk`]: `_bulk` requests no larger than `index.bulk_max_bytes`, each
//!   item's result inspected: overloaded items retried with backoff, refused
//!   ones returned with the server's reason, an unreachable server an error
//!   right away (the rows stay in PostgreSQL; the caller tries again later);
//! - [`search`]: the documents of a range, for the API and the tests;
//! - [`publish`]: the stage's task, sending what `aggregates` holds that the
//!   index lacks.
//!
//! Only APIs that Elasticsearch 8 and 9 (and OpenSearch) share are used:
//! composable index templates, index creation with mappings, `_bulk`,
//! `_search` with `search_after`, `_refresh`.

pub mod bulk;
pub mod client;
pub mod config;
pub mod mapping;
pub mod publish;
pub mod search;

use std::time::Duration;

use elasticsearch::Elasticsearch;
use serde::{Deserialize, Serialize};

use config::TimeSuffix;

pub use bulk::{IndexOp, IndexOutcome, Rejected};
pub use publish::Publisher;
pub use search::DocQuery;

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

/// Problems talking to the search server.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum IndexError {
    /// `index.url` cannot be used as a server address.
    #[error("index.url {url:?} is not a usable URL: {reason}; use e.g. http://127.0.0.1:9200")]
    Url {
        /// The configured URL, its secrets hidden ([`crate::redact::url`]).
        url: String,
        reason: String,
    },
    /// The server could not be reached, did not answer in time, or answered
    /// that it cannot serve requests now (429, 5xx). Transient: try again later.
    #[error("search server {url} is unavailable: {reason}")]
    Unavailable { url: String, reason: String },
    /// The server kept answering "not now" (429, 5xx, or a block such as a
    /// read-only index after the disk watermark) for some documents until the
    /// retry budget ran out. Transient: send them again later.
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
