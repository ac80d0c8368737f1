//! `clickstream validate`: check a pipeline file without running it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::LoadedAggregate;
use clickstream::plugin::enrich::LoadedEnrich;
use clickstream::plugin::geoip::GeoIp;

/// Check a pipeline.toml without running it: keys, values, plugin files and GeoIP databases.
#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file.
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
}

/// Validates the keys, opens the GeoIP databases and loads both plugins.
pub fn run(args: Args) -> anyhow::Result<()> {
    let pipeline: &Path = &args.pipeline;
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
