//! The `clickstream` binary: the CLI edge, where errors become messages.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use clickstream::check::{self, CheckReport};
use clickstream::config::PipelineConfig;
use clickstream::geoip::GeoIp;
use clickstream::plugin::aggregate::LoadedAggregate;
use clickstream::plugin::enrich::LoadedEnrich;
use clickstream::plugin::PluginLimits;

#[derive(Parser)]
#[command(name = "clickstream", version, about = "Real-time clickstream pipeline with WASM plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a pipeline.toml without running it: keys, values, plugin files and GeoIP databases.
    Validate {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
    },
    /// Plugin author tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
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

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Validate { pipeline } => validate(&pipeline),
        Command::Plugin {
            command: PluginCommand::Check { file, events, settings, geoip },
        } => plugin_check(&file, events.as_deref(), settings, geoip),
    }
}

fn validate(pipeline: &Path) -> anyhow::Result<()> {
    let config = PipelineConfig::load(pipeline)?;
    println!("{}: keys and values are valid", pipeline.display());
    let geoip = Arc::new(GeoIp::open(&config.geoip.databases).context("while opening [geoip] databases")?);
    for (path, kind) in geoip.databases() {
        println!("geoip: {} ({kind})", path.display());
    }
    let enrich = LoadedEnrich::load(config.enrich_spec(), Some(geoip)).context("while loading [plugins.enrich]")?;
    println!("plugins.enrich: {} {} ({})", enrich.info.name, enrich.info.version, enrich.info.path.display());
    let aggregate = LoadedAggregate::load(config.aggregate_spec()).context("while loading [plugins.aggregate]")?;
    println!("plugins.aggregate: {} {} ({})", aggregate.info.name, aggregate.info.version, aggregate.info.path.display());
    println!("{}: ok", pipeline.display());
    Ok(())
}

fn plugin_check(file: &Path, events: Option<&Path>, settings: Vec<(String, String)>, geoip: Vec<PathBuf>) -> anyhow::Result<()> {
    let events = match events {
        Some(path) => check::read_events(path)?,
        None => check::golden_batch(),
    };
    let geoip = if geoip.is_empty() {
        PipelineConfig::load(Path::new("pipeline.toml"))
            .ok()
            .and_then(|c| GeoIp::open(&c.geoip.databases).ok())
    } else {
        Some(GeoIp::open(&geoip)?)
    };
    if geoip.is_none() {
        eprintln!("note: no GeoIP database: countries and cities will be unknown (pass --geoip FILE.mmdb)");
    }
    let report = check::check(file, settings, PluginLimits::default(), geoip.map(Arc::new), events)?;
    let (world, name, version, lines) = match report {
        CheckReport::Enricher { name, version, lines } => ("enricher", name, version, lines),
        CheckReport::Aggregator { name, version, lines } => ("aggregator", name, version, lines),
    };
    println!("{}: world {world} of clickstream:pipeline@0.1.0, plugin {name} {version}", file.display());
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}
