//! `clickstream plugin check`: load a component, say which world and
//! contract version it targets, and run it on sample events without Kafka —
//! the loop a plugin author runs before dropping a file in place.
//! `clickstream plugin compile`: precompile it for a fast swap.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::{AggregateRun, LoadedAggregate};
use clickstream::plugin::artifact::{self, ArtifactKey};
use clickstream::plugin::compiled;
use clickstream::plugin::geoip::GeoIp;
use clickstream::plugin::instance::target_of;
use clickstream::plugin::wit::{self, World, PACKAGE};
use clickstream::plugin::{golden, PluginLimits, PluginSpec, Slot};
use clickstream::runtime::pipeline::describe_chain;
use clickstream::stages::decode::{decode, DecodeLimits};
use clickstream::stages::record::{attributes_json, Consumed, Decoded, Provenance, RawEvent, WriteBatch};
use clickstream::stages::transform::{load_chain, ChainRunner};
use clickstream::stats::Stats;

use super::parse_setting;

/// Plugin author tools.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run transforms (one file, several files as a chain, or the chain of a
    /// pipeline.toml) or an aggregator on sample events, and print what
    /// became of each event.
    Check {
        /// .wasm components: one aggregator, or transforms run as a chain in
        /// the order given.
        #[arg(required_unless_present = "chain")]
        files: Vec<PathBuf>,
        /// Run the `[[transforms]]` chain of this pipeline.toml, with its
        /// settings, limits and GeoIP databases.
        #[arg(long, conflicts_with_all = ["files", "settings"])]
        chain: Option<PathBuf>,
        /// NDJSON events in the pipeline's event format (default: a built-in sample).
        #[arg(long)]
        events: Option<PathBuf>,
        /// A setting passed to every file's configure, as KEY=VALUE (repeatable).
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// GeoIP databases for the `geoip` import (default: those of the
        /// chain's pipeline.toml, or of ./pipeline.toml when present).
        #[arg(long = "geoip")]
        geoip: Vec<PathBuf>,
    },
    /// Precompile components into `.cwasm` artifacts this host's engine
    /// loads without compiling (a swap in milliseconds). Write the `.cwasm`
    /// beside the `.wasm` before the `.wasm` itself.
    Compile {
        /// .wasm components.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the artifact (one file only) [default: FILE.cwasm beside FILE.wasm].
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// The artifact key that seals it, created when absent [default:
        /// $CLICKSTREAM_ARTIFACT_KEY, else artifact.key in the host's cache dir].
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

/// Runs a plugin subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Compile { files, out, key } => compile(&files, out, key),
        Command::Check { files, chain, events, settings, geoip } => {
            let events = match events {
                Some(path) => read_events(&path)?,
                None => golden::batch(),
            };
            let (specs, config) = match chain {
                Some(file) => {
                    let config = PipelineConfig::load(&file)?;
                    (config.transform_specs(), Some(config))
                }
                None => (specs_of(&files, &settings)?, PipelineConfig::load(Path::new("pipeline.toml")).ok()),
            };
            if let [spec] = specs.as_slice() {
                if target_of(spec)?.world == World::Aggregator {
                    return check_aggregator(PluginSpec { slot: "aggregate".into(), ..spec.clone() }, events);
                }
            }
            let geoip =
                if geoip.is_empty() { config.and_then(|c| GeoIp::open(&c.geoip.databases).ok()) } else { Some(GeoIp::open(&geoip)?) };
            let geoip = geoip.unwrap_or_else(|| {
                eprintln!("note: no GeoIP database: lookups find nothing (pass --geoip FILE.mmdb)");
                GeoIp::empty()
            });
            check_chain(specs, &Arc::new(geoip), events)
        }
    }
}

/// Writes a sealed artifact per file, each checked by loading it back.
fn compile(files: &[PathBuf], out: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!(out.is_none() || files.len() == 1, "--out takes one file; several files each get FILE.cwasm beside them");
    let key_path = key.or_else(|| compiled::artifact_key_path().map(Path::to_path_buf)).context("no artifact key: pass --key FILE")?;
    let key = ArtifactKey::load_or_create(&key_path).with_context(|| format!("artifact key {}", key_path.display()))?;
    let engine = clickstream::plugin::engine();
    println!("engine fingerprint {}; key {}", &artifact::hex(&artifact::fingerprint(engine))[..16], key_path.display());
    for file in files {
        let started = std::time::Instant::now();
        let source = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        anyhow::ensure!(!artifact::is_artifact(&source), "{} is already a precompiled artifact", file.display());
        eprintln!("compiling {} ({:.1} MiB)...", file.display(), source.len() as f64 / 1048576.0);
        let sealed =
            artifact::compile(engine, &key, &source).with_context(|| format!("{} is not a WebAssembly component", file.display()))?;
        let hash = clickstream::plugin::content_hash(&source);
        let (component, _) = artifact::open(engine, &key, &sealed, Some(&hash)).context("the artifact just written does not load back")?;
        let target = wit::target(&component).with_context(|| format!("{} is not a clickstream plugin", file.display()))?;
        let dest = out.clone().unwrap_or_else(|| artifact::beside(file));
        anyhow::ensure!(dest != *file, "the artifact would overwrite its source {}", file.display());
        let tmp = dest.with_extension("cwasm.tmp");
        std::fs::write(&tmp, &sealed).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        println!(
            "{}: world {} of {PACKAGE}@{}, sha256 {}; wrote {} ({:.1} MiB) in {} ms",
            file.display(),
            target.world.name(),
            target.version,
            &hash[..12],
            dest.display(),
            sealed.len() as f64 / 1048576.0,
            started.elapsed().as_millis()
        );
    }
    Ok(())
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
    let mut decoded = Decoded::default();
    for (offset, event) in events.into_iter().enumerate() {
        let provenance = Provenance { topic: "check".into(), partition: 0, offset: offset as i64, received_at: chrono::Utc::now() };
        decoded.batch.saw(&provenance);
        decoded.origins.push(Consumed { provenance, key: None, payload: Vec::new() });
        decoded.events.push(event);
    }
    let batch = ChainRunner::fixed(chain).process(decoded, &Stats::default());
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
    let loaded = LoadedAggregate::load(spec)?;
    println!("plugin {} {}", loaded.info.name, loaded.info.version);
    let stored = golden::as_stored(events);
    let window = golden::PARAMS.window_ms;
    let from = stored.iter().map(|c| c.timestamp_ms).min().unwrap_or(0).div_euclid(window) * window;
    let to = (stored.iter().map(|c| c.timestamp_ms).max().unwrap_or(0).div_euclid(window) + 1) * window;
    let mut run = AggregateRun::start(&Slot::new(loaded), golden::PARAMS, from, to)?;
    run.push(&stored)?;
    for r in run.finish()? {
        println!(
            "  window={} url={} country={} clicks={} unique_users={} time_spent_total_ms={} time_spent_samples={}",
            r.window_start_ms, r.url, r.country, r.clicks, r.unique_users, r.time_spent_total_ms, r.time_spent_samples
        );
    }
    Ok(())
}
