//! The connection to the search server, and what its answers mean.

use std::time::Duration;

use chrono::DateTime;
use elasticsearch::auth::Credentials;
use elasticsearch::http::response::Response;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::Url;
use elasticsearch::indices::IndicesRefreshParts;
use elasticsearch::Elasticsearch;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::config::{IndexConfig, TimeSuffix};
use super::{AggregateDoc, IndexError, Indexer};

/// Longest any request may take, from connecting to the last byte of the
/// answer. Without it a server that accepts connections but never answers
/// would stall the aggregator forever; 30 s leaves room for a full 100 MiB
/// bulk request on a busy cluster.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `/ready` must answer promptly, so a ping gives up much sooner.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one bulk request's items are retried before giving the problem
/// back to the caller, whose rows wait safely in PostgreSQL. Long enough to
/// ride out a rolling restart's blip, short enough not to hold up newer windows.
const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(30);

impl Indexer {
    /// A client for `config.url`; credentials in the URL
    /// (`https://user:password@host:9200`) are sent as basic auth. Connects
    /// to nothing yet.
    pub fn new(config: &IndexConfig) -> Result<Indexer, IndexError> {
        let bad_url = |reason: String| IndexError::Url { url: crate::redact::url(&config.url).into_owned(), reason };
        let mut url = Url::parse(&config.url).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_url(format!("scheme {:?} is not http or https", url.scheme())));
        }
        // The client sends credentials embedded in the URL *and* as a header
        // unless they are moved out, as `Transport::single_node` also does.
        let credentials = (!url.username().is_empty())
            .then(|| Credentials::Basic(percent_decode(url.username()), url.password().map(percent_decode).unwrap_or_default()));
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

    /// The JSON body of a response, or the error it stands for.
    pub(crate) async fn json(&self, response: Result<Response, elasticsearch::Error>, operation: &str) -> Result<Value, IndexError> {
        let response = response.map_err(|e| self.unavailable(&e))?;
        let status = response.status_code().as_u16();
        let text = response.text().await.map_err(|e| self.unavailable(&e))?;
        if (200..300).contains(&status) {
            return serde_json::from_str(&text)
                .map_err(|e| IndexError::Protocol { operation: operation.into(), reason: format!("not JSON ({e}): {}", truncate(&text)) });
        }
        let reason = reason_of_body(&text);
        if is_busy(status) {
            Err(IndexError::Unavailable { url: self.url.clone(), reason: format!("{operation}: HTTP {status}: {reason}") })
        } else {
            Err(IndexError::Refused { operation: operation.into(), status, reason })
        }
    }

    pub(super) fn parse<T: serde::de::DeserializeOwned>(&self, value: Value, operation: &str) -> Result<T, IndexError> {
        serde_json::from_value(value).map_err(|e| IndexError::Protocol { operation: operation.into(), reason: e.to_string() })
    }

    pub(super) fn unavailable(&self, error: &elasticsearch::Error) -> IndexError {
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

/// Statuses that mean "not now" rather than "not this": too many requests,
/// and server-side failures (a shard relocating, a node restarting).
pub(super) fn is_busy(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// `type: reason (caused by type: reason)` from an Elasticsearch error object.
pub(super) fn reason_of_error(error: &Value) -> String {
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
pub(super) fn reason_of_body(text: &str) -> String {
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

pub(super) async fn response_text(response: Response) -> String {
    response.text().await.unwrap_or_else(|e| format!("(body unreadable: {e})"))
}

/// Error bodies can be whole HTML pages from a proxy; a message needs the start.
pub(super) fn truncate(text: &str) -> String {
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
