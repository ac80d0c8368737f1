//! `clickstream dead-letters`: list what was refused and why, or replay it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::geoip::GeoIp;
use clickstream::runtime::dead_letters;
use clickstream::stages::transform::{describe_chain, load_chain, ChainRunner};

use super::connect_store;

/// List dead-lettered records, or replay them through the chain of transforms.
#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file.
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
    /// Include records already replayed.
    #[arg(long)]
    all: bool,
    /// Most records to list.
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// List those with an id above this one (the next page starts after
    /// the last id listed).
    #[arg(long, default_value_t = 0)]
    after: i64,
    /// Re-run every pending dead letter through the chain in pipeline.toml;
    /// successes are stored, failures keep their new reason.
    #[arg(long)]
    replay: bool,
}

/// Lists or replays.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args { pipeline, all, limit, after, replay } = args;
    let config = PipelineConfig::load(&pipeline)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = connect_store(&config).await?;
        if replay {
            let geoip = Arc::new(GeoIp::open(&config.geoip.databases)?);
            let chain = load_chain(config.transform_specs(), &geoip).context("while loading [[transforms]]")?;
            println!("replaying pending dead letters through {}", describe_chain(&chain));
            let mut runner = ChainRunner::fixed(chain);
            let retention_days = config.store.retention_days;
            let outcome = dead_letters::replay(store.pool(), config.windows(), &mut runner, &config.decode_limits(), retention_days, |o| {
                eprintln!("  ... {} stored, {} dropped, {} still failing, {} expired", o.stored, o.dropped, o.still_failing, o.expired);
            })
            .await?;
            println!(
                "replay: {} stored, {} dropped by a transform, {} still failing",
                outcome.stored, outcome.dropped, outcome.still_failing
            );
            if outcome.expired > 0 {
                println!(
                    "{} not replayed: their events are older than the oldest day kept (store.retention_days = {retention_days}); \
                     storing them would recreate a dropped day that the hourly upkeep drops again, losing them. \
                     They stay pending, kind `expired`; raise store.retention_days to cover their days and replay again.",
                    outcome.expired
                );
            }
            return Ok(());
        }
        let (total, pending) = dead_letters::counts(store.pool()).await?;
        println!("{total} dead letters, {pending} pending replay");
        let rows = dead_letters::list(store.pool(), !all, after, limit, true).await?;
        for row in &rows {
            println!(
                "#{} {}/{}@{} {}:{}{} — {}\n    {} bytes: {}",
                row.id,
                row.topic,
                row.partition,
                row.offset,
                row.stage,
                row.kind,
                if row.replayed_at.is_some() { " (replayed)" } else { "" },
                row.reason.lines().next().unwrap_or_default(),
                row.payload_bytes,
                row.payload_preview.as_deref().unwrap_or_default().chars().take(100).collect::<String>()
            );
        }
        if let Some(last) = rows.last().filter(|_| rows.len() as i64 == limit) {
            println!("more may follow: --after {}", last.id);
        }
        Ok(())
    })
}
