//! `clickstream validate`: check a pipeline file without running it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::LoadedAggregate;
use clickstream::plugin::geoip::GeoIp;
use clickstream::plugin::transform::LoadedTransform;

/// Check a pipeline.toml without running it: keys, values, plugin files and GeoIP databases.
#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file.
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
}

/// Validates the keys, opens the GeoIP databases and loads every plugin.
pub fn run(args: Args) -> anyhow::Result<()> {
    let pipeline: &Path = &args.pipeline;
    let config = PipelineConfig::load(pipeline)?;
    println!("{}: keys and values are valid", pipeline.display());
    let geoip = Arc::new(GeoIp::open(&config.geoip.databases).context("while opening [geoip] databases")?);
    for db in geoip.databases() {
        println!("geoip: {} ({}, IPv{}, built {})", db.path.display(), db.database_type, db.ip_version, db.built_at());
    }
    if config.transforms.is_empty() {
        println!("transforms: none (events are stored as decoded)");
    }
    for (i, spec) in config.transform_specs().into_iter().enumerate() {
        let name = spec.slot.clone();
        let t = LoadedTransform::load(spec, Some(geoip.clone())).with_context(|| format!("while loading transforms[{i}] ({name})"))?;
        let info = &t.info;
        println!("transforms[{i}] {name}: {} {} (contract {}, {})", info.name, info.version, info.contract, info.path.display());
    }
    let aggregate = LoadedAggregate::load(config.aggregate_spec()).context("while loading [plugins.aggregate]")?;
    println!("plugins.aggregate: {} {} ({})", aggregate.info.name, aggregate.info.version, aggregate.info.path.display());
    println!("{}: ok", pipeline.display());
    Ok(())
}
