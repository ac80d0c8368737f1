//! `clickstream validate`: check a pipeline file without running it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::LoadedAggregate;
use clickstream::plugin::geoip::GeoIp;
use clickstream::plugin::transform::LoadedTransform;
use clickstream::stages::store::migrations;

/// Check a pipeline.toml without running it: keys and values, the Kafka
/// client properties, plugin files, GeoIP databases and the database's
/// migrations.
#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file.
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
    /// Check the file and what it names on disk only: do not connect to
    /// PostgreSQL for its migrations.
    #[arg(long)]
    offline: bool,
}

/// Validates the keys and the Kafka properties, opens the GeoIP databases,
/// loads every plugin and reads which migrations the database lacks. Nothing
/// is written and no client joins anything.
pub fn run(args: Args) -> anyhow::Result<()> {
    let pipeline: &Path = &args.pipeline;
    let config = PipelineConfig::load(pipeline)?;
    println!("{}: keys and values are valid", pipeline.display());
    clickstream::stages::source::check_properties(&config.source)
        .with_context(|| format!("while checking the Kafka client properties ([source] and [source.kafka] in {})", pipeline.display()))?;
    println!("source.kafka: {} properties of our own accepted by librdkafka", config.source.kafka.len());
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
    if args.offline {
        println!("store: not checked (--offline)");
    } else {
        let url = &config.store.database_url;
        let status = tokio::runtime::Runtime::new()?.block_on(migrations::status(url)).with_context(|| {
            format!(
                "while reading the migrations of [store] database_url = {} (or pass --offline to check the file alone)",
                clickstream::redact::url(url)
            )
        })?;
        println!("store: {} of {} migrations applied", status.applied, status.known);
        for pending in &status.pending {
            println!("store: pending migration {pending} (applied when the pipeline starts)");
        }
    }
    println!("{}: ok", pipeline.display());
    Ok(())
}
