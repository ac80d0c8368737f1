//! `_search`: the documents of a range, paged with `search_after`.

use elasticsearch::SearchParts;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AggregateDoc, IndexError, Indexer};

/// Documents fetched per `_search` page. Well below `index.max_result_window`
/// (10 000 by default), which no single request may exceed.
const SEARCH_PAGE: usize = 1000;

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

impl Indexer {
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
            let response =
                self.client.search(SearchParts::Index(&targets)).ignore_unavailable(true).allow_no_indices(true).body(body).send().await;
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
