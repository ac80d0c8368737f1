//! `clickstream plugin check`: load a component, say which world and
//! contract version it targets, and run it on sample events without Kafka —
//! the loop a plugin author runs before dropping a file in place.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::{AggregateRun, LoadedAggregate};
use clickstream::plugin::geoip::GeoIp;
use clickstream::plugin::instance::target_of;
use clickstream::plugin::wit::{World, PACKAGE};
use clickstream::plugin::{golden, PluginInfo, PluginLimits, PluginSpec, Slot};
use clickstream::stages::decode::{decode, DecodeLimits};
use clickstream::stages::record::{attributes_json, AggregateRow, Consumed, Decoded, Provenance, RawEvent, WriteBatch};
use clickstream::stages::transform::{describe_chain, load_chain, Chain, ChainRunner};
use clickstream::stats::Stats;

/// Runs `clickstream plugin check`.
pub fn check(
    files: &[PathBuf],
    chain: Option<PathBuf>,
    events: Option<PathBuf>,
    settings: &[(String, String)],
    geoip: &[PathBuf],
) -> anyhow::Result<()> {
    let events = match events {
        Some(path) => read_events(&path)?,
        None => golden::batch(),
    };
    let (specs, config) = match chain {
        Some(file) => {
            let config = PipelineConfig::load(&file)?;
            (config.transform_specs(), Some(config))
        }
        None => (specs_of(files, settings)?, None),
    };
    if let [spec] = specs.as_slice() {
        if target_of(spec)?.world == World::Aggregator {
            return check_aggregator(PluginSpec { slot: "aggregate".into(), ..spec.clone() }, events);
        }
    }
    check_chain(specs, &Arc::new(open_geoip(geoip, config.as_ref())?), events)
}

/// The GeoIP databases named by `--geoip`, else those of `config` or of
/// ./pipeline.toml when there is one, else none (lookups find nothing).
pub fn open_geoip(files: &[PathBuf], config: Option<&PipelineConfig>) -> anyhow::Result<GeoIp> {
    if !files.is_empty() {
        return Ok(GeoIp::open(files)?);
    }
    let local = || PipelineConfig::load(Path::new("pipeline.toml")).ok();
    let opened = match config {
        Some(config) => GeoIp::open(&config.geoip.databases).ok(),
        None => local().and_then(|c| GeoIp::open(&c.geoip.databases).ok()),
    };
    Ok(opened.unwrap_or_else(|| {
        eprintln!("note: no GeoIP database: lookups find nothing (pass --geoip FILE.mmdb)");
        GeoIp::empty()
    }))
}

/// A spec per file, named for its file stem (made unique), each told where
/// its component points.
fn specs_of(files: &[PathBuf], settings: &[(String, String)]) -> anyhow::Result<Vec<PluginSpec>> {
    let mut specs: Vec<PluginSpec> = Vec::new();
    for file in files {
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "plugin".into());
        let mut name = stem.clone();
        let mut n = 2;
        while specs.iter().any(|s| s.slot == name) {
            name = format!("{stem}-{n}");
            n += 1;
        }
        let spec = PluginSpec { slot: name, path: file.clone(), settings: settings.to_vec(), limits: PluginLimits::default() };
        let target = target_of(&spec)?;
        println!("{}: world {} of {PACKAGE}@{}", file.display(), target.world.name(), target.version);
        if target.world == World::Aggregator && files.len() > 1 {
            anyhow::bail!("{} is an aggregator: it does not run in a chain; check it alone", file.display());
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Reads clicks from an NDJSON file, one event per line in the pipeline's
/// event format. A bad line is an error naming the line.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<RawEvent>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening events file {}", path.display()))?;
    let mut events = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = decode(line.as_bytes(), &DecodeLimits::UNBOUNDED, 0, || format!("line-{}", n + 1))
            .with_context(|| format!("{}:{}: not a valid event", path.display(), n + 1))?;
        events.push(event);
    }
    Ok(events)
}

/// Runs `events` through the chain exactly as the pipeline would, and
/// prints each event's path: the transforms that kept it, and where it was
/// dropped or rejected.
fn check_chain(specs: Vec<PluginSpec>, geoip: &Arc<GeoIp>, events: Vec<RawEvent>) -> anyhow::Result<()> {
    let chain = load_chain(specs, geoip)?;
    for slot in &chain {
        let info = &slot.current().info;
        println!("transform {}: {} {} (contract {})", info.slot, info.name, info.version, info.contract);
    }
    let names: Vec<String> = chain.iter().map(|slot| slot.current().info.slot.clone()).collect();
    println!("chain: {}", describe_chain(&chain));
    let ids: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    let batch = run_chain(chain, events);
    let mut lines = paths(&batch, &names);
    lines.sort_by_key(|(offset, _)| *offset);
    for (offset, line) in &lines {
        println!("  {}  {line}", ids[*offset as usize]);
    }
    println!(
        "{} events: {} kept, {} dropped, {} rejected or failed",
        ids.len(),
        batch.events.len(),
        batch.dropped.len(),
        batch.dead_letters.len()
    );
    Ok(())
}

/// Runs `events` through `chain` as one batch, exactly as the pipeline
/// would; each event's offset is its index in `events`.
pub fn run_chain(chain: Chain, events: Vec<RawEvent>) -> WriteBatch {
    let mut decoded = Decoded::default();
    for (offset, event) in events.into_iter().enumerate() {
        let provenance = Provenance { topic: "check".into(), partition: 0, offset: offset as i64, received_at: chrono::Utc::now() };
        decoded.batch.saw(&provenance);
        decoded.origins.push(Consumed { provenance, key: None, payload: Vec::new() });
        decoded.events.push(event);
    }
    ChainRunner::fixed(chain).process(decoded, &Stats::default())
}

/// One line per event of `batch`, keyed by its offset: the path it took
/// through the transforms named `names` and what became of it.
fn paths(batch: &WriteBatch, names: &[String]) -> Vec<(i64, String)> {
    // The transforms before `name` kept the event, or it would not have reached it.
    let upto = |name: &str| {
        let i = names.iter().position(|n| n == name).map_or(names.len(), |i| i + 1);
        names[..i].join(" → ")
    };
    let mut lines = Vec::with_capacity(batch.len());
    for e in &batch.events {
        let x = &e.enrichment;
        let unset = |v: Option<&str>| v.unwrap_or("-").to_string();
        let path = e.chain.iter().map(|l| format!("{}@{}", l.name, l.version)).collect::<Vec<_>>().join(" → ");
        lines.push((
            e.provenance.offset,
            format!(
                "kept     {path}\n      country={} city={} browser={} os={} device={} ip={} attributes={}",
                unset(x.country.as_deref()),
                unset(x.city.as_deref()),
                unset(x.browser.as_deref()),
                unset(x.os.as_deref()),
                unset(x.device.map(|d| d.as_str())),
                e.raw.ip,
                attributes_json(&e.attributes)
            ),
        ));
    }
    for d in &batch.dropped {
        lines.push((d.provenance.offset, format!("dropped  {} (by {}: {})", upto(&d.transform), d.transform, d.reason)));
    }
    for d in &batch.dead_letters {
        let by = d.plugin_version.as_deref().and_then(|v| v.split_once('@')).map_or("", |(name, _)| name);
        lines.push((d.provenance.offset, format!("{}  {} (by {by}: {})", d.kind, upto(by), d.reason)));
    }
    lines
}

fn check_aggregator(spec: PluginSpec, events: Vec<RawEvent>) -> anyhow::Result<()> {
    let (info, rows) = aggregate(spec, events)?;
    println!("plugin {} {}", info.name, info.version);
    for r in rows {
        println!(
            "  window={} url={} country={} clicks={} unique_users={} time_spent_total_ms={} time_spent_samples={}",
            r.window_start_ms, r.url, r.country, r.clicks, r.unique_users, r.time_spent_total_ms, r.time_spent_samples
        );
    }
    Ok(())
}

/// Runs an aggregator over `events` (as stored, country `unknown`) in one
/// run over the windows they fall in, with the default parameters.
pub fn aggregate(spec: PluginSpec, events: Vec<RawEvent>) -> anyhow::Result<(PluginInfo, Vec<AggregateRow>)> {
    let loaded = LoadedAggregate::load(spec)?;
    let info = loaded.info.clone();
    let stored = golden::as_stored(events);
    let window = golden::PARAMS.window_ms;
    let from = stored.iter().map(|c| c.timestamp_ms).min().unwrap_or(0).div_euclid(window) * window;
    let to = (stored.iter().map(|c| c.timestamp_ms).max().unwrap_or(0).div_euclid(window) + 1) * window;
    let mut run = AggregateRun::start(&Slot::new(loaded), golden::PARAMS, from, to)?;
    run.push(&stored)?;
    Ok((info, run.finish()?))
}
