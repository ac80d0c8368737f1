//! The index template and mappings: keyword URLs and countries, a date for
//! the window start, longs for counts.

use std::collections::HashMap;

use elasticsearch::indices::{IndicesCreateParts, IndicesGetMappingParts, IndicesPutIndexTemplateParts, IndicesPutMappingParts};
use serde_json::{json, Value};

use super::config::TimeSuffix;
use super::{IndexError, Indexer};

/// Above Elastic's built-in templates (100) so our mapping wins for our
/// names, without claiming the top so an operator can still override it.
const TEMPLATE_PRIORITY: u32 = 200;
/// Bumped whenever [`mappings`] changes; stored in the template so an
/// operator can tell which host version wrote it.
const MAPPING_VERSION: u32 = 1;

impl Indexer {
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
        let response = self.client.indices().put_index_template(IndicesPutIndexTemplateParts::Name(&name)).body(template).send().await;
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

    /// Creates `index` with the mapping; one that exists already (made by
    /// another host, or by the template on first write) is fine.
    pub(super) async fn create_index(&self, index: &str) -> Result<(), IndexError> {
        let response = self.client.indices().create(IndicesCreateParts::Index(index)).body(json!({ "mappings": mappings() })).send().await;
        match self.json(response, "PUT index").await {
            Err(IndexError::Refused { status: 400, reason, .. }) if reason.starts_with("resource_already_exists_exception") => Ok(()),
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
            ours["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .any(|(field, spec)| theirs[field]["type"].as_str().is_some_and(|t| Some(t) != spec["type"].as_str()))
        })
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}
