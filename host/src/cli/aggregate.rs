//! `clickstream aggregate`: re-aggregate and re-index a time range.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::plugin::aggregate::LoadedAggregate;
use clickstream::plugin::Slot;
use clickstream::stages::aggregate::Aggregator;
use clickstream::stages::index::{Indexer, Publisher};
use clickstream::stats::Stats;

use super::{connect_store, parse_time, progress_bar};

/// Re-aggregate and re-index a time range (backfill), with progress.
#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file.
    #[arg(default_value = "pipeline.toml")]
    pipeline: PathBuf,
    /// Start of the range: RFC 3339 or epoch milliseconds.
    #[arg(long, value_parser = parse_time)]
    from: i64,
    /// End of the range (exclusive): RFC 3339 or epoch milliseconds.
    #[arg(long, value_parser = parse_time)]
    to: i64,
}

/// Re-aggregates every window of the range with events, then publishes
/// what the index lacks.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Args { pipeline, from, to } = args;
    anyhow::ensure!(from < to, "--from must be before --to");
    let config = PipelineConfig::load(&pipeline)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = connect_store(&config).await?;
        let plugin = LoadedAggregate::load(config.aggregate_spec()).context("while loading [plugins.aggregate]")?;
        let stats = Arc::new(Stats::default());
        let aggregator = Aggregator::new(
            store.pool().clone(),
            Arc::new(Slot::new(plugin)),
            tokio::sync::watch::channel(config.aggregate.clone()).1,
            config.source.topics.clone(),
            stats.clone(),
        );
        let bar = progress_bar(0);
        let outcome = aggregator
            .backfill(from, to, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await
            .context("while backfilling")?;
        bar.finish_and_clear();
        let indexer = Indexer::new(&config.index)?;
        indexer.ensure_mapping().await.context("while setting up the search index")?;
        let (indexed, refused) = Publisher::new(store.pool().clone(), indexer, stats).index_pending().await.context("while indexing")?;
        println!(
            "re-aggregated {} windows into {} rows ({} set aside after failing); indexed {indexed}, refused {refused}",
            outcome.windows, outcome.rows, outcome.windows_failed
        );
        Ok(())
    })
}
