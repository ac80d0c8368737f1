//! `clickstream plugin check`: load a component, say which world and
//! contract version it targets, and run it on sample events without Kafka —
//! the loop a plugin author runs before dropping a file in place.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::{AggregateRun, LoadedAggregate};
use clickstream::plugin::enrich::{EnrichRunner, LoadedEnrich};
use clickstream::plugin::geoip::GeoIp;
use clickstream::plugin::instance::target_of;
use clickstream::plugin::wit::{World, PACKAGE};
use clickstream::plugin::{golden, PluginLimits, PluginSpec, Slot};
use clickstream::stages::decode::{decode, DecodeLimits};
use clickstream::stages::record::RawEvent;

use super::parse_setting;

/// Plugin author tools.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Load a component, report which world it implements, and run it on sample events.
    Check {
        /// The .wasm component.
        file: PathBuf,
        /// NDJSON events in the pipeline's event format (default: a built-in sample).
        #[arg(long)]
        events: Option<PathBuf>,
        /// A setting passed to the plugin's configure, as KEY=VALUE (repeatable).
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// GeoIP databases for the enricher's lookups (default: those of pipeline.toml, when present).
        #[arg(long = "geoip")]
        geoip: Vec<PathBuf>,
    },
}

/// Runs a plugin subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { file, events, settings, geoip } => check(&file, events.as_deref(), settings, geoip),
    }
}

fn check(file: &Path, events: Option<&Path>, settings: Vec<(String, String)>, geoip: Vec<PathBuf>) -> anyhow::Result<()> {
    let events = match events {
        Some(path) => read_events(path)?,
        None => golden::batch(),
    };
    let spec = |slot: &str| PluginSpec {
        slot: slot.into(),
        path: file.to_path_buf(),
        settings: settings.clone(),
        limits: PluginLimits::default(),
    };
    let target = target_of(&spec("check"))?;
    println!("{}: world {} of {PACKAGE}@{}", file.display(), target.world.name(), target.version);
    let lines = match target.world {
        World::Enricher => {
            let geoip = if geoip.is_empty() {
                PipelineConfig::load(Path::new("pipeline.toml")).ok().and_then(|c| GeoIp::open(&c.geoip.databases).ok())
            } else {
                Some(GeoIp::open(&geoip)?)
            };
            if geoip.is_none() {
                eprintln!("note: no GeoIP database: countries and cities will be unknown (pass --geoip FILE.mmdb)");
            }
            check_enricher(spec("enrich"), geoip.map(Arc::new), &events)?
        }
        World::Aggregator => check_aggregator(spec("aggregate"), events)?,
    };
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}

/// Reads clicks from an NDJSON file, one event per line in the pipeline's
/// event format. A bad line is an error naming the line.
fn read_events(path: &Path) -> anyhow::Result<Vec<RawEvent>> {
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

fn check_enricher(spec: PluginSpec, geoip: Option<Arc<GeoIp>>, events: &[RawEvent]) -> anyhow::Result<Vec<String>> {
    let loaded = LoadedEnrich::load(spec, geoip)?;
    println!("plugin {} {}", loaded.info.name, loaded.info.version);
    let mut runner = EnrichRunner::new(Arc::new(Slot::new(loaded)));
    let (_, results) = runner.enrich(events)?;
    Ok(events
        .iter()
        .zip(results)
        .map(|(input, result)| match result {
            Ok(e) => {
                let x = &e.enrichment;
                format!(
                    "{}  ok     country={} city={} browser={} os={} device={} version={}",
                    input.event_id,
                    x.country,
                    x.city,
                    x.browser,
                    x.os,
                    x.device.as_str(),
                    x.plugin_version
                )
            }
            Err(e) => format!("{}  error  {}{}", input.event_id, e.field.map(|f| format!("{f}: ")).unwrap_or_default(), e.reason),
        })
        .collect())
}

fn check_aggregator(spec: PluginSpec, events: Vec<RawEvent>) -> anyhow::Result<Vec<String>> {
    let loaded = LoadedAggregate::load(spec)?;
    println!("plugin {} {}", loaded.info.name, loaded.info.version);
    let stored = golden::as_stored(events);
    let window = golden::PARAMS.window_ms;
    let from = stored.iter().map(|c| c.timestamp_ms).min().unwrap_or(0).div_euclid(window) * window;
    let to = (stored.iter().map(|c| c.timestamp_ms).max().unwrap_or(0).div_euclid(window) + 1) * window;
    let mut run = AggregateRun::start(&Slot::new(loaded), golden::PARAMS, from, to)?;
    run.push(&stored)?;
    Ok(run
        .finish()?
        .into_iter()
        .map(|r| {
            format!(
                "window={} url={} country={} clicks={} unique_users={} time_spent_total_ms={} time_spent_samples={}",
                r.window_start_ms, r.url, r.country, r.clicks, r.unique_users, r.time_spent_total_ms, r.time_spent_samples
            )
        })
        .collect())
}
