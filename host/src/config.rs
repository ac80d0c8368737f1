//! `pipeline.toml`: the sections of every component, composed.
//!
//! Each component owns its section — its typed struct (`deny_unknown_fields`,
//! a doc per field, `const fn` defaults), its `validate()` that touches no
//! file, socket or database, and its `change()` saying whether a new value
//! applies live, needs a restart, or is refused. This module parses the
//! file, applies environment overrides (`KAFKA_BROKERS`, `DATABASE_URL`,
//! `ELASTICSEARCH_URL`, `CLICKSTREAM_API_LISTEN`, so the same file runs
//! against a local stack or a real cluster), resolves relative paths and
//! validates every section. Every error names the file, the key and the fix.
//! No error quotes a source line (see `toml_error`): it may hold a secret.

#[cfg(test)]
mod reference_test;
mod toml_error;

// What the sections share lives in `section`, a leaf, so that no component
// imports this module; this keeps the path callers outside the crate use.
pub use crate::section::ConfigError;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::config::{chain_of, validate_chain, PluginConfig, PluginsConfig};
use crate::plugin::geoip::GeoIpConfig;
use crate::plugin::PluginSpec;
use crate::runtime::api::config::ApiConfig;
use crate::section::resolve;
use crate::stages::aggregate::config::AggregateConfig;
use crate::stages::decode::DecodeLimits;
use crate::stages::index::config::IndexConfig;
use crate::stages::record::WindowSpec;
use crate::stages::source::config::SourceConfig;
use crate::stages::source::Batching;
use crate::stages::store::config::StoreConfig;

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
    /// The chain of transforms, in order (`[[transforms]]`).
    #[serde(default)]
    pub transforms: Vec<PluginConfig>,
    /// The aggregate plugin (and the pre-chain `[plugins.enrich]`, turned
    /// into a one-transform chain when read).
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

impl PipelineConfig {
    /// Reads, parses, applies environment overrides, resolves relative paths
    /// against the file's folder, and validates.
    pub fn load(file: &Path) -> Result<PipelineConfig, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read { file: file.to_path_buf(), source })?;
        Self::parse(&text, file, |name| std::env::var(name).ok())
    }

    /// Parses `text` as if read from `file`; `env` supplies overrides. No I/O.
    pub fn parse(text: &str, file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<PipelineConfig, ConfigError> {
        let mut config: PipelineConfig = toml::from_str(text).map_err(|e| {
            let toml_error::Located { line, column, key, problem } = toml_error::locate(text, &e);
            // A URL serde quotes (a string where a number belongs) may hold a password.
            let problem = crate::redact::in_text(&problem).into_owned();
            ConfigError::Parse { file: file.to_path_buf(), line, column, key, problem }
        })?;
        config.file = file.to_path_buf();
        for (name, value) in [
            ("KAFKA_BROKERS", &mut config.source.brokers),
            ("DATABASE_URL", &mut config.store.database_url),
            ("ELASTICSEARCH_URL", &mut config.index.url),
            ("CLICKSTREAM_API_LISTEN", &mut config.api.listen),
        ] {
            if let Some(v) = env(name) {
                *value = v;
            }
        }
        let base = file.parent().unwrap_or(Path::new("")).to_path_buf();
        chain_of(file, config.plugins.enrich.take(), &mut config.transforms)?;
        config.plugins.resolve(&base);
        config.transforms.iter_mut().for_each(|t| t.resolve(&base));
        config.geoip.databases.iter_mut().for_each(|p| resolve(&base, p));
        config.validate()?;
        Ok(config)
    }

    /// Every section's checks; touches no file, socket or database.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let file = &self.file;
        self.source.validate(file)?;
        self.store.validate(file)?;
        validate_chain(file, &self.transforms)?;
        self.plugins.validate(file)?;
        self.aggregate.validate(file)?;
        self.index.validate(file)?;
        self.api.validate(file)
    }

    /// How each transform of the chain is loaded, in order.
    pub fn transform_specs(&self) -> Vec<PluginSpec> {
        self.transforms.iter().map(|t| t.spec(t.transform_name())).collect()
    }

    /// How the aggregate plugin is loaded.
    pub fn aggregate_spec(&self) -> PluginSpec {
        self.plugins.aggregate.spec("aggregate")
    }

    /// The source's batching limits.
    pub fn batching(&self) -> Batching {
        Batching { batch_size: self.source.batch_size, max_wait: Duration::from_millis(self.source.batch_max_wait_ms) }
    }

    /// What a record may be, from `[source]`.
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits {
            max_record_bytes: self.source.max_record_bytes,
            min_timestamp_ms: self.source.min_event_time_ms(),
            max_future_ms: self.source.max_future_secs as i64 * 1000,
            max_past_ms: self.source.max_past_ms(),
        }
    }

    /// The windowing of `[aggregate]`.
    pub fn windows(&self) -> WindowSpec {
        self.aggregate.windows()
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
        // The pre-chain [plugins.enrich] is a one-transform chain.
        assert_eq!((c.transforms.len(), c.transforms[0].name.as_deref()), (1, Some("enrich")));
        assert_eq!(c.transforms[0].path, Path::new("/etc/cs/plugins/enrich.wasm"));
        assert_eq!(c.transform_specs()[0].limits.memory_bytes, 256 << 20);
    }

    #[test]
    fn a_chain_is_read_in_order_with_its_own_limits_and_settings() {
        let text = MINIMAL.replace(
            "[plugins.enrich]\npath = \"plugins/enrich.wasm\"\n",
            "[[transforms]]\nname = \"enrich\"\npath = \"t/enrich.wasm\"\n\n[[transforms]]\nname = \"bot-filter\"\npath = \"t/bot.wasm\"\nmemory_mib = 32\nsettings = { markers = \"curl\" }\n\n",
        );
        let c = parse(&text).unwrap();
        let specs = c.transform_specs();
        assert_eq!(specs.iter().map(|s| s.slot.as_str()).collect::<Vec<_>>(), vec!["enrich", "bot-filter"]);
        assert_eq!(specs[1].limits.memory_bytes, 32 << 20);
        assert_eq!(specs[1].settings, vec![("markers".to_string(), "curl".to_string())]);
        assert_eq!(specs[1].path, Path::new("/etc/cs/t/bot.wasm"));
    }

    #[test]
    fn the_old_enrich_table_beside_a_chain_is_refused_with_the_new_form() {
        let text = format!("{MINIMAL}\n[[transforms]]\nname = \"x\"\npath = \"x.wasm\"\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("plugins.enrich") && err.contains("[[transforms]]") && err.contains("name = \"enrich\""), "{err}");
    }

    #[test]
    fn transform_names_must_be_present_unique_and_well_formed() {
        let chain = |names: &[&str]| {
            let mut text = MINIMAL.replace("[plugins.enrich]\npath = \"plugins/enrich.wasm\"\n", "");
            for n in names {
                text.push_str(&format!("\n[[transforms]]\nname = \"{n}\"\npath = \"{n}.wasm\"\n"));
            }
            parse(&text).map(|_| ()).map_err(|e| e.to_string())
        };
        assert!(chain(&["a", "b-2"]).is_ok());
        assert!(chain(&["a", "a"]).unwrap_err().contains("again"));
        assert!(chain(&["Upper"]).unwrap_err().contains("transforms[0].name"));
        assert!(chain(&["aggregate"]).is_err());
        assert!(chain(&[]).is_ok(), "an empty chain stores events as decoded");
    }

    #[test]
    fn a_transform_is_a_wasm_component_or_a_precompiled_cwasm() {
        let with = |path: &str| parse(&MINIMAL.replace("plugins/enrich.wasm", path)).map(|_| ()).map_err(|e| e.to_string());
        assert!(with("plugins/enrich.cwasm").is_ok());
        let err = with("plugins/enrich.so").unwrap_err();
        assert!(err.contains("plugins.enrich") || err.contains("transforms[0].path"), "{err}");
        assert!(err.contains(".cwasm from `clickstream plugin compile`"), "{err}");
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
    fn a_url_an_error_quotes_is_shown_without_its_password() {
        let errors = [
            // Refused by a section's validation, which quotes the value.
            format!("{MINIMAL}\n[store]\ndatabase_url = \"mysql://u:s3cret@h/db?password=s3cret2\"\n"),
            format!("{MINIMAL}\n[index]\nurl = \"ftp://elastic:s3cret@search.example:9200\"\n"),
            // Refused by the TOML parser, which quotes the line.
            format!("{MINIMAL}\n[index]\nurl = \"http://elastic:s3cret@search.example:9200\n"),
            format!("{MINIMAL}\n[index]\nurl = [\"http://elastic:s3cret@search.example:9200\"]\n"),
        ]
        .map(|text| parse(&text).unwrap_err().to_string());
        for err in &errors {
            assert!(!err.contains("s3cret"), "{err}");
        }
        assert!(errors[0].contains("`store.database_url` is \"mysql://u:***@h/db?password=***\""), "{}", errors[0]);
        assert!(errors[1].contains("ftp://elastic:***@search.example:9200"), "{}", errors[1]);
        // The parser's errors name the place, not the line.
        assert!(errors[2].contains("line 10, column") && !errors[2].contains("search.example"), "{}", errors[2]);
        assert!(errors[3].contains("line 10, column 7: `index.url`: invalid type: sequence"), "{}", errors[3]);
    }

    /// A configuration printed with `{:?}` (a log line, a failed
    /// assertion) shows where each secret is, never its value.
    #[test]
    fn a_configuration_printed_for_debugging_shows_no_secret() {
        let text = MINIMAL
            .replacen("[source]\n", "[source]\nkafka = { \"sasl.password\" = \"s3cret-kafka\", \"security.protocol\" = \"SASL_SSL\" }\n", 1)
            .replacen("[plugins.enrich]\n", "[plugins.enrich]\nsettings = { api_key = \"s3cret-plugin\", mode = \"fast\" }\n", 1)
            + "[api]\nreload_token = \"s3cret-token-0123456789\"\n"
            + "[store]\ndatabase_url = \"postgres://u:s3cret-pg@db.example/clicks\"\n"
            + "[index]\nurl = \"http://elastic:s3cret-es@search.example:9200\"\n";
        let shown = format!("{:?}", parse(&text).unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        for visible in
            ["SASL_SSL", "\"fast\"", "postgres://u:***@db.example/clicks", "elastic:***@search.example", "reload_token: Some(\"***\")"]
        {
            assert!(shown.contains(visible), "{visible} is missing from {shown}");
        }
    }

    /// A secret's line broken in each way the parser refuses: the error
    /// names the file, line, column and what is wrong, never the secret
    /// (the parser's own message quotes the line).
    #[test]
    fn a_broken_line_holding_a_secret_is_located_without_quoting_it() {
        const SECRET: &str = "s3cret-0123456789abcdef";
        const NUMBER: &str = "86753091234567890";
        let api = |lines: &str| format!("{MINIMAL}\n[api]\n{lines}\n");
        let source = |lines: &str| MINIMAL.replacen("[source]\n", &format!("[source]\n{lines}\n"), 1);
        let kafka = |lines: &str| format!("{MINIMAL}\n[source.kafka]\n{lines}\n");
        // (file, the start of the line the error is on, what the error says)
        let cases = [
            (api(&format!("reload_token = \"{SECRET}")), "reload_token", "invalid basic string"),
            (api(&format!("reload_token = '{SECRET}")), "reload_token", "invalid literal string"),
            (api(&format!("reload_token = \"\"\"{SECRET}")), "", "invalid multiline basic string"),
            (api(&format!("reload_token = {SECRET}")), "reload_token", "invalid string"),
            (
                api(&format!("reload_token = \"{SECRET}\" #{SECRET}\nreload_token = \"{SECRET}\" x")),
                "reload_token = \"s3cret-0123456789abcdef\" x",
                "expected newline",
            ),
            (api(&format!("reload_token = {NUMBER}")), "reload_token", "`api.reload_token`: invalid type: integer ***"),
            (
                api(&format!("reload_token = \"{SECRET}\"\nreload_token = \"{SECRET}\"")),
                "reload_token = \"s3cret-0123456789abcdef\"\n",
                "duplicate key `reload_token`",
            ),
            (api(&format!("reload_token = \"{SECRET}\"\nreload_tokn = \"{SECRET}\"")), "reload_tokn", "unknown field `reload_tokn`"),
            (source(&format!("kafka = {{ \"sasl.password\" = \"{SECRET} }}")), "kafka", "invalid basic string"),
            (
                source(&format!("kafka = {{ \"sasl.password\" = {NUMBER} }}")),
                "kafka",
                "`source.kafka.\"sasl.password\"`: invalid type: integer ***",
            ),
            (
                source(&format!("kafka = {{ \"sasl.password\" = \"{SECRET}\", \"sasl.password\" = \"{SECRET}\" }}")),
                "kafka",
                "duplicate key `sasl.password`",
            ),
            (
                source(&format!("kafka = {{ \"sasl.password\" = \"{SECRET}\" }}\nkafak = {{ \"sasl.password\" = \"{SECRET}\" }}")),
                "kafak",
                "unknown field `kafak`",
            ),
            (kafka(&format!("\"ssl.key.password\" = \"{SECRET}")), "\"ssl.key.password\"", "invalid basic string"),
            (kafka(&format!("\"ssl.key.password\" = {NUMBER}.5")), "\"ssl.key.password\"", "invalid type: floating point ***"),
            (kafka(&format!("\"ssl.key.password\" = [\"{SECRET}\"]")), "\"ssl.key.password\"", "invalid type: sequence"),
            (
                kafka(&format!("\"ssl.key.password\" = \"{SECRET}\"\n\"ssl.key.password\" = \"{SECRET}\"")),
                "\"ssl.key.password\" = \"s3cret-0123456789abcdef\"\n",
                "duplicate key `ssl.key.password`",
            ),
        ];
        for (text, line_start, what) in &cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(!err.contains(SECRET) && !err.contains(NUMBER), "the secret in: {err}");
            // The line: the last one starting so, or the one after a match ending in a newline (a duplicate).
            let line = match line_start.strip_suffix('\n') {
                Some(first) => text.lines().position(|l| l == first).unwrap() + 2,
                None if line_start.is_empty() => text.lines().count() + 1,
                None => text.lines().collect::<Vec<_>>().iter().rposition(|l| l.starts_with(line_start)).unwrap() + 1,
            };
            assert!(err.starts_with(&format!("/etc/cs/pipeline.toml: line {line}, column ")), "line {line} of\n{text}\n{err}");
            assert!(err.contains(what), "{what:?} in: {err}");
        }
        let err = parse(&cases[0].0).unwrap_err().to_string();
        let column = "reload_token = \"".len() + SECRET.len() + 1;
        assert_eq!(err, format!("/etc/cs/pipeline.toml: line 10, column {column}: invalid basic string"));
    }

    #[test]
    fn the_shipped_pipeline_toml_is_valid() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipeline.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        PipelineConfig::parse(&text, &file, |_| None).unwrap();
    }
}
