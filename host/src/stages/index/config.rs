//! `[index]`: the Elasticsearch-compatible search server.

use std::path::Path;

use serde::Deserialize;

use crate::section::{in_range, invalid, Apply, ConfigError};

/// `[index]`. Any change needs a restart (a new client, maybe new indices).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Base URL; `user:password@` in it is sent as basic auth. Env: `ELASTICSEARCH_URL`.
    #[serde(default = "default_url")]
    pub url: String,
    /// Index name, or prefix with a time suffix.
    #[serde(default = "default_index")]
    pub index: String,
    /// Suffix the index name by the window's date.
    #[serde(default)]
    pub time_suffix: TimeSuffix,
    /// Largest `_bulk` request body, in bytes.
    #[serde(default = "default_bulk_max_bytes")]
    pub bulk_max_bytes: usize,
}

/// How an index name is suffixed by date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeSuffix {
    /// One index.
    #[default]
    None,
    /// `NAME-YYYY.MM.DD`.
    Daily,
    /// `NAME-YYYY.MM`.
    Monthly,
}

fn default_url() -> String {
    "http://127.0.0.1:9200".into()
}
fn default_index() -> String {
    "clickstream-aggregates".into()
}
const fn default_bulk_max_bytes() -> usize {
    5 << 20
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig { url: default_url(), index: default_index(), time_suffix: TimeSuffix::None, bulk_max_bytes: default_bulk_max_bytes() }
    }
}

impl IndexConfig {
    /// Checks the URL's scheme, the index name and the bulk size; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if !self.url.starts_with("http://") && !self.url.starts_with("https://") {
            return Err(invalid(file, "index.url", format!("is {:?}", crate::redact::url(&self.url)), "use an http:// or https:// URL"));
        }
        let name = &self.index;
        if name.is_empty()
            || name.starts_with(['_', '-', '+'])
            || name.chars().any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c))
        {
            return Err(invalid(
                file,
                "index.index",
                format!("is {name:?}"),
                "use a lower-case name without spaces or \\/*?\"<>|,#: that does not start with _, - or +",
            ));
        }
        in_range(file, "index.bulk_max_bytes", self.bulk_max_bytes, 64 << 10..=100 << 20, default_bulk_max_bytes())?;
        Ok(())
    }

    /// How a change to this section applies.
    pub fn change(&self, next: &IndexConfig) -> Apply {
        if self == next {
            Apply::Unchanged
        } else {
            Apply::Restart
        }
    }
}

/// Debug shows the URL without its password.
impl std::fmt::Debug for IndexConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let IndexConfig { url, index, time_suffix, bulk_max_bytes } = self;
        f.debug_struct("IndexConfig")
            .field("url", &crate::redact::url(url))
            .field("index", index)
            .field("time_suffix", time_suffix)
            .field("bulk_max_bytes", bulk_max_bytes)
            .finish()
    }
}
