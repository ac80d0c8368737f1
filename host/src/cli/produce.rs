//! `clickstream produce`: synthetic clickstream to Kafka or a file.

use std::path::PathBuf;

use anyhow::Context;
use clickstream::config::PipelineConfig;
use clickstream::produce::{self, Generator, GeneratorConfig};

use super::{parse_setting, progress_bar};

/// Write synthetic clickstream to a Kafka topic (or an NDJSON file).
#[derive(clap::Args)]
pub struct Args {
    /// The pipeline file whose brokers and first topic are used.
    #[arg(long, default_value = "pipeline.toml")]
    pipeline: PathBuf,
    /// Brokers (default: the pipeline's, or KAFKA_BROKERS).
    #[arg(long)]
    brokers: Option<String>,
    /// Topic (default: the pipeline's first).
    #[arg(long)]
    topic: Option<String>,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Records to write, bad ones included.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Distinct users.
    #[arg(long, default_value_t = 500)]
    users: u64,
    /// Distinct pages.
    #[arg(long, default_value_t = 50)]
    urls: u64,
    /// Records per second (default: as fast as the broker takes them).
    #[arg(long)]
    rate: Option<u64>,
    /// Event times spread over about this many seconds.
    #[arg(long, default_value_t = 3600)]
    span_secs: u64,
    /// Event time of the first click, in epoch milliseconds (default: now minus the span).
    #[arg(long)]
    start_ms: Option<i64>,
    /// Same seed, same records.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Share of deliberately bad records (0.0-1.0): malformed JSON, missing fields,
    /// wrong types, bad IPs, oversized records and records the enrich plugin refuses.
    #[arg(long, default_value_t = 0.0)]
    bad_fraction: f64,
    /// A librdkafka producer property, as KEY=VALUE (repeatable), e.g. `linger.ms=0`.
    #[arg(long = "kafka-property", value_parser = parse_setting)]
    kafka_properties: Vec<(String, String)>,
    /// Write NDJSON to this file instead of Kafka.
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Generates and writes; prints a summary.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&args.bad_fraction), "--bad-fraction must be between 0 and 1, got {}", args.bad_fraction);
    anyhow::ensure!(args.users > 0 && args.urls > 0, "--users and --urls must be at least 1");
    let start_ms = args.start_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis() - args.span_secs as i64 * 1000);
    let generator = Generator::new(GeneratorConfig {
        events: args.events,
        users: args.users,
        urls: args.urls,
        seed: args.seed,
        start_ms,
        span_secs: args.span_secs,
        bad_fraction: args.bad_fraction,
        ..GeneratorConfig::default()
    });
    let progress = progress_bar(args.events);
    let summary = match &args.output {
        Some(path) => produce::to_file(generator, path, &progress).with_context(|| format!("while writing {}", path.display()))?,
        None => {
            let (brokers, topic) = kafka_target(&args)?;
            let shown = clickstream::redact::in_text(&brokers).into_owned();
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                clickstream::kafka::ensure_topic(&brokers, &topic, args.partitions)
                    .await
                    .with_context(|| format!("while creating topic {topic} on {shown} (is the broker up? scripts/services up)"))?;
                progress.println(format!("producing {} records to {topic} on {shown}", args.events));
                let properties = args.kafka_properties.iter().cloned().collect();
                produce::to_kafka(generator, &brokers, &topic, args.rate, &properties, &progress)
                    .await
                    .with_context(|| format!("while producing to {topic} on {shown}"))
            })?
        }
    };
    progress.finish_and_clear();
    println!("{summary}");
    Ok(())
}

fn kafka_target(args: &Args) -> anyhow::Result<(String, String)> {
    let config = match (&args.brokers, &args.topic) {
        (Some(_), Some(_)) => None,
        _ => Some(PipelineConfig::load(&args.pipeline).context("while reading brokers and topic (or pass --brokers and --topic)")?),
    };
    let brokers = args.brokers.clone().or_else(|| config.as_ref().map(|c| c.source.brokers.clone()));
    let topic = args.topic.clone().or_else(|| config.as_ref().map(|c| c.source.topics[0].clone()));
    Ok((brokers.expect("from args or config"), topic.expect("from args or config")))
}
