//! `clickstream plugin test`: runs a built transform on its fixture events,
//! through the host's own chain runner and GeoIP import, and compares what
//! became of each event with the expected file (for an aggregator: the rows
//! of one run over the events' windows): a readable difference per event or
//! row and a failing exit code, so it runs in a plugin's CI.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::plugin::geoip::GeoIp;
use clickstream::plugin::instance::target_of;
use clickstream::plugin::wit::World;
use clickstream::plugin::{PluginLimits, PluginSpec};
use clickstream::stages::record::{attributes_json, AggregateRow, Event, WriteBatch};
use clickstream::stages::transform::load_chain;
use serde_json::{json, Map, Value};

use super::check::{aggregate, read_events, run_chain};
use super::project::Project;

const INPUT: &str = "fixtures/in.ndjson";
const EXPECTED: &str = "fixtures/expected.ndjson";
const SETTINGS: &str = "fixtures/settings.toml";

/// Tests the build of the project in `dir` against its fixtures, or with
/// `bless` writes what it does as the expected outcomes.
pub fn test(dir: &Path, bless: bool, extra: Vec<(String, String)>, geoip: &[PathBuf]) -> anyhow::Result<()> {
    let project = Project::open(dir)?;
    let wasm = project.wasm();
    anyhow::ensure!(wasm.is_file(), "no build at {}: run `clickstream plugin build {}` first", wasm.display(), dir.display());
    let FixtureSettings { mut settings, geoip: fixture_geoip } = fixture_settings(&project.file(SETTINGS))?;
    settings.extend(extra);
    // The fixtures' own GeoIP data, never the databases of a pipeline.toml
    // where the command happens to run: a test gives one answer anywhere.
    let geoip = if geoip.is_empty() { fixture_geoip } else { geoip.to_vec() };
    let spec = PluginSpec { slot: project.name.clone(), path: wasm.clone(), settings, limits: PluginLimits::default() };
    let input = project.file(INPUT);
    let events = read_events(&input)?;
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let (info, actual, keys, noun) = if target_of(&spec)?.world == World::Aggregator {
        let (info, rows) = aggregate(spec, events)?;
        let keys: Vec<String> =
            rows.iter().map(|r| format!("row window {} url {} country {}", r.window_start_ms, r.url, r.country)).collect();
        (info, rows.iter().map(row).collect::<Vec<_>>(), keys, "rows")
    } else {
        let geoip = if geoip.is_empty() { GeoIp::empty() } else { GeoIp::open(&geoip)? };
        let chain = load_chain(vec![spec], &Arc::new(geoip))?;
        let info = chain[0].current().info.clone();
        let keys = ids.iter().enumerate().map(|(n, id)| format!("event {id} ({INPUT} line {})", n + 1)).collect();
        (info, outcomes(&run_chain(chain, events), &ids), keys, "outcomes")
    };
    println!("testing {} {} ({}) on {} events of {}", info.name, info.version, wasm.display(), ids.len(), input.display());
    let expected_path = project.file(EXPECTED);
    if bless {
        let text: String = actual.iter().map(line).collect();
        std::fs::write(&expected_path, text).with_context(|| format!("writing {}", expected_path.display()))?;
        println!("wrote {} {noun} to {}", actual.len(), expected_path.display());
        return Ok(());
    }
    let expected = read_expected(&expected_path)?;
    let differences = compare(&expected, &actual, &keys);
    if differences.is_empty() {
        println!("ok: all {} {noun} are as {} expects", actual.len(), expected_path.display());
        return Ok(());
    }
    for line in &differences {
        println!("{line}");
    }
    anyhow::bail!(
        "the {noun} differ from {} (see above); if the change is deliberate, run `clickstream plugin test --bless {}`",
        expected_path.display(),
        dir.display()
    )
}

/// What the fixture's settings file holds.
struct FixtureSettings {
    /// Its `key = value` pairs, for `configure`.
    settings: Vec<(String, String)>,
    /// The databases its `[geoip] databases` lists (relative to the
    /// project); none when it has no such table: lookups then find nothing.
    geoip: Vec<PathBuf>,
}

/// Reads the fixture's settings file; an absent one holds nothing.
fn fixture_settings(path: &Path) -> anyhow::Result<FixtureSettings> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FixtureSettings { settings: Vec::new(), geoip: Vec::new() }),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let geoip = match table.remove("geoip") {
        None => Vec::new(),
        Some(geoip) => fixture_geoip(path, geoip)?,
    };
    let settings = table
        .into_iter()
        .map(|(key, value)| {
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => value.to_string(),
                other => anyhow::bail!("{}: `{key}` is a {}; a setting is a string, number or boolean", path.display(), other.type_str()),
            };
            Ok((key, value))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(FixtureSettings { settings, geoip })
}

/// The `[geoip]` table of the fixture's settings file: `databases`, a list
/// of MMDB files relative to the project.
fn fixture_geoip(path: &Path, geoip: toml::Value) -> anyhow::Result<Vec<PathBuf>> {
    let refuse =
        || anyhow::anyhow!("{}: [geoip] takes one key, `databases = [\"file.mmdb\", ...]` (relative to the project)", path.display());
    let toml::Value::Table(mut table) = geoip else { return Err(refuse()) };
    let databases = table.remove("databases").ok_or_else(refuse)?;
    anyhow::ensure!(table.is_empty(), refuse());
    let project = path.parent().and_then(Path::parent).unwrap_or(Path::new("."));
    let toml::Value::Array(files) = databases else { return Err(refuse()) };
    files.into_iter().map(|file| file.as_str().map(|f| project.join(f)).ok_or_else(refuse)).collect()
}

/// What became of each input event, in input order: `keep` with the fields
/// and attributes that would be stored, `drop` with its reason, or
/// `dead_letter` with its kind and reason.
fn outcomes(batch: &WriteBatch, ids: &[String]) -> Vec<Value> {
    let mut out = vec![Value::Null; ids.len()];
    let mut put = |offset: i64, kind: &str, value: Value| {
        let at = offset as usize;
        out[at] = json!({ "event_id": ids[at], kind: value });
    };
    for event in &batch.events {
        put(event.provenance.offset, "keep", kept(event));
    }
    for dropped in &batch.dropped {
        put(dropped.provenance.offset, "drop", dropped.reason.clone().into());
    }
    for dead in &batch.dead_letters {
        put(dead.provenance.offset, "dead_letter", json!({ "kind": dead.kind, "reason": dead.reason }));
    }
    out
}

/// A line of the expected file, its fields in reading order: `event_id`
/// then the outcome, or a row's group then its metrics.
fn line(value: &Value) -> String {
    let Some(object) = value.as_object() else { return format!("{value}\n") };
    let first = ["event_id", "window_start_ms", "url", "country", "clicks", "unique_users", "time_spent_total_ms", "time_spent_samples"];
    let ordered = first.iter().filter_map(|key| object.get_key_value(*key));
    let fields: Vec<String> = ordered
        .chain(object.iter().filter(|(key, _)| !first.contains(&key.as_str())))
        .map(|(key, value)| format!("{}:{value}", Value::from(key.as_str())))
        .collect();
    format!("{{{}}}\n", fields.join(","))
}

fn kept(event: &Event) -> Value {
    let (raw, found) = (&event.raw, &event.enrichment);
    let mut fields = Map::new();
    let mut put = |key: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            fields.insert(key.into(), value.into());
        }
    };
    put("url", Some(&raw.url));
    put("ip", Some(&raw.ip));
    put("user_agent", Some(&raw.user_agent));
    put("referrer", raw.referrer.as_deref());
    put("session_id", raw.session_id.as_deref());
    put("country", found.country.as_deref());
    put("city", found.city.as_deref());
    put("browser", found.browser.as_deref());
    put("os", found.os.as_deref());
    put("device", found.device.map(|d| d.as_str()));
    if !event.attributes.is_empty() {
        let attributes = serde_json::from_str(&attributes_json(&event.attributes)).expect("the host writes valid JSON");
        fields.insert("attributes".into(), attributes);
    }
    Value::Object(fields)
}

fn read_expected(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (write it from the current build with `clickstream plugin test --bless`)", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| serde_json::from_str(line).with_context(|| format!("{}:{}: not valid JSON", path.display(), n + 1)))
        .collect()
}

/// An aggregate row as a line of the expected file.
fn row(r: &AggregateRow) -> Value {
    json!({
        "window_start_ms": r.window_start_ms,
        "url": r.url,
        "country": r.country,
        "clicks": r.clicks,
        "unique_users": r.unique_users,
        "time_spent_total_ms": r.time_spent_total_ms,
        "time_spent_samples": r.time_spent_samples,
    })
}

/// A paragraph per line that differs (an event's outcome, or an aggregate
/// row), named by `keys`, with each differing field.
fn compare(expected: &[Value], actual: &[Value], keys: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if expected.len() != actual.len() {
        out.push(format!("{EXPECTED} has {} lines; the plugin gave {}", expected.len(), actual.len()));
        for (key, extra) in keys.iter().zip(actual).skip(expected.len()) {
            out.push(format!("{key}: not expected: {extra}"));
        }
        for missing in expected.iter().skip(actual.len()) {
            out.push(format!("missing: {missing}"));
        }
    }
    for (n, (want, got)) in expected.iter().zip(actual).enumerate() {
        let mut lines = Vec::new();
        match (kind(want), kind(got)) {
            (Some((a, want)), Some((b, got))) if a == b => diff(a, want, got, &mut lines),
            _ if want.get("url").is_some() => diff("row", want, got, &mut lines),
            _ => lines.push(format!("expected {}\n    got      {}", summary(want), summary(got))),
        }
        if want.get("event_id") != got.get("event_id") {
            lines.push(format!(
                "event_id: expected {}, got {} (are the two fixture files in step?)",
                show(want.get("event_id")),
                show(got.get("event_id"))
            ));
        }
        if !lines.is_empty() {
            out.push(format!("{}:", keys[n]));
            out.extend(lines.into_iter().map(|l| format!("    {l}")));
        }
    }
    out
}

/// The outcome's kind (`keep`, `drop` or `dead_letter`) and its value; none
/// for an aggregate row.
fn kind(outcome: &Value) -> Option<(&str, &Value)> {
    let object = outcome.as_object()?;
    object.get("event_id")?;
    object.iter().find(|(key, _)| *key != "event_id").map(|(key, value)| (key.as_str(), value))
}

fn summary(outcome: &Value) -> String {
    kind(outcome).map_or_else(|| outcome.to_string(), |(kind, value)| format!("{kind} {value}"))
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "nothing".into(), Value::to_string)
}

fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(want), Value::Object(got)) => {
            for (key, w) in want {
                let at = format!("{path}.{key}");
                match got.get(key) {
                    Some(g) => diff(&at, w, g, out),
                    None => out.push(format!("{at}: expected {w}, got nothing")),
                }
            }
            for (key, g) in got.iter().filter(|(key, _)| !want.contains_key(*key)) {
                out.push(format!("{path}.{key}: expected nothing, got {g}"));
            }
        }
        _ if want == got => {}
        _ => out.push(format!("{path}: expected {want}, got {got}")),
    }
}
