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
    /// Run the pipeline until SIGINT or SIGTERM.
    Run {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
    },
    /// Check a pipeline.toml without running it: keys, values, plugin files and GeoIP databases.
    Validate {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
    },
    /// Re-aggregate and re-index a time range (backfill), with progress.
    Aggregate {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Start of the range: RFC 3339 or epoch milliseconds.
        #[arg(long, value_parser = parse_time)]
        from: i64,
        /// End of the range (exclusive): RFC 3339 or epoch milliseconds.
        #[arg(long, value_parser = parse_time)]
        to: i64,
    },
    /// List dead-lettered records, or replay them through the current enrich plugin.
    DeadLetters {
        /// The pipeline file.
        #[arg(default_value = "pipeline.toml")]
        pipeline: PathBuf,
        /// Include records already replayed.
        #[arg(long)]
        all: bool,
        /// Most records to list.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Re-run every pending dead letter through the plugin in pipeline.toml;
        /// successes are stored, failures keep their new reason.
        #[arg(long)]
        replay: bool,
    },
    /// Write synthetic clickstream to a Kafka topic (or an NDJSON file).
    Produce(ProduceArgs),
    /// Run the benchmark arms of issue #8 and write bench/results/ (see docs/BENCHMARKS.md).
    Bench(clickstream::bench::BenchArgs),
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

#[derive(clap::Args)]
struct ProduceArgs {
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

fn parse_time(s: &str) -> Result<i64, String> {
    s.parse::<i64>()
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|t| t.timestamp_millis()))
        .map_err(|_| format!("`{s}` is neither epoch milliseconds nor an RFC 3339 time"))
}

fn parse_setting(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Run { pipeline } => run_pipeline(&pipeline),
        Command::Validate { pipeline } => validate(&pipeline),
        Command::Produce(args) => produce(args),
        Command::Bench(args) => clickstream::bench::run(args),
        Command::Aggregate { pipeline, from, to } => backfill(&pipeline, from, to),
        Command::DeadLetters { pipeline, all, limit, replay } => dead_letters(&pipeline, all, limit, replay),
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

fn produce(args: ProduceArgs) -> anyhow::Result<()> {
    use clickstream::produce::{self, Generator, GeneratorConfig};
    anyhow::ensure!((0.0..=1.0).contains(&args.bad_fraction), "--bad-fraction must be between 0 and 1, got {}", args.bad_fraction);
    anyhow::ensure!(args.users > 0 && args.urls > 0, "--users and --urls must be at least 1");
    let start_ms = args
        .start_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis() - args.span_secs as i64 * 1000);
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
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                clickstream::kafka::ensure_topic(&brokers, &topic, args.partitions)
                    .await
                    .with_context(|| format!("while creating topic {topic} on {brokers} (is the broker up? scripts/services up)"))?;
                progress.println(format!("producing {} records to {topic} on {brokers}", args.events));
                let properties = args.kafka_properties.iter().cloned().collect();
                produce::to_kafka(generator, &brokers, &topic, args.rate, &properties, &progress)
                    .await
                    .with_context(|| format!("while producing to {topic} on {brokers}"))
            })?
        }
    };
    progress.finish_and_clear();
    println!("{summary}");
    Ok(())
}

fn kafka_target(args: &ProduceArgs) -> anyhow::Result<(String, String)> {
    let config = match (&args.brokers, &args.topic) {
        (Some(_), Some(_)) => None,
        _ => Some(PipelineConfig::load(&args.pipeline).context("while reading brokers and topic (or pass --brokers and --topic)")?),
    };
    let brokers = args.brokers.clone().or_else(|| config.as_ref().map(|c| c.source.brokers.clone()));
    let topic = args.topic.clone().or_else(|| config.as_ref().map(|c| c.source.topics[0].clone()));
    Ok((brokers.expect("from args or config"), topic.expect("from args or config")))
}

/// A progress bar on an interactive terminal; hidden otherwise, so logs and
/// CI output stay clean.
fn progress_bar(len: u64) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("template"),
    );
    bar
}

fn run_pipeline(pipeline: &Path) -> anyhow::Result<()> {
    let config = PipelineConfig::load(pipeline)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let sighup = Arc::new(tokio::sync::Notify::new());
        let hup = sighup.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut signals = signal(SignalKind::hangup()).expect("install SIGHUP handler");
            while signals.recv().await.is_some() {
                hup.notify_one();
            }
        });
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: draining"),
                _ = int.recv() => tracing::info!("SIGINT: draining"),
            }
            let _ = stop_tx.send(true);
            // A second signal means "now": in-flight batches are redelivered on restart.
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::warn!("second signal: exiting without draining");
            std::process::exit(130);
        });
        let stats = Arc::new(clickstream::stats::Stats::default());
        let api = clickstream::api::Api::new(stats.clone());
        let listen = config.api.listen.clone();
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("while binding [api] listen = {listen:?} in {} (is another process on that port?)", pipeline.display()))?;
        let bound = listener.local_addr().map_or_else(|_| listen.clone(), |a| a.to_string());
        tracing::info!(listen = %bound, "HTTP API and dashboard at http://{bound}/");
        let serving = tokio::spawn(api.clone().serve(listener, stop_rx.clone()));
        let result = clickstream::pipeline::run_until_stopped(config, stop_rx, sighup, stats, |running| {
            if running.config.api.listen != listen {
                tracing::warn!(listen = %listen, wanted = %running.config.api.listen, "api.listen changed; the API keeps its address until the process restarts");
            }
            api.serve_pipeline(running);
        })
        .await
        .with_context(|| format!("while running {}", pipeline.display()));
        let _ = serving.await;
        result
    })?;
    Ok(())
}

fn dead_letters(pipeline: &Path, all: bool, limit: i64, replay: bool) -> anyhow::Result<()> {
    use clickstream::dead_letters;
    let config = PipelineConfig::load(pipeline)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = connect_store(&config).await?;
        if replay {
            let geoip = Arc::new(GeoIp::open(&config.geoip.databases)?);
            let loaded = LoadedEnrich::load(config.enrich_spec(), Some(geoip)).context("while loading [plugins.enrich]")?;
            println!("replaying pending dead letters through {} {}", loaded.info.name, loaded.info.version);
            let mut runner = clickstream::plugin::enrich::EnrichRunner::new(Arc::new(clickstream::plugin::Slot::new(loaded)));
            let outcome = dead_letters::replay(store.pool(), clickstream::store::WindowSpec::of(&config.aggregate), &mut runner, &clickstream::decode::DecodeLimits::of(&config.source), |o| {
                eprintln!("  ... {} stored, {} still failing", o.stored, o.still_failing);
            })
            .await?;
            println!("replay: {} stored, {} still failing", outcome.stored, outcome.still_failing);
            return Ok(());
        }
        let (total, pending) = dead_letters::counts(store.pool()).await?;
        println!("{total} dead letters, {pending} pending replay");
        for row in dead_letters::list(store.pool(), !all, limit, 0).await? {
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
                row.payload_preview.chars().take(100).collect::<String>()
            );
        }
        Ok(())
    })
}

fn backfill(pipeline: &Path, from: i64, to: i64) -> anyhow::Result<()> {
    anyhow::ensure!(from < to, "--from must be before --to");
    let config = PipelineConfig::load(pipeline)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = connect_store(&config).await?;
        let plugin = LoadedAggregate::load(config.aggregate_spec()).context("while loading [plugins.aggregate]")?;
        let indexer = clickstream::index::Indexer::new(&config.index)?;
        let aggregator = clickstream::aggregate::Aggregator::new(
            store.pool().clone(),
            Arc::new(clickstream::plugin::Slot::new(plugin)),
            tokio::sync::watch::channel(config.aggregate.clone()).1,
            config.source.topics.clone(),
            indexer,
            Arc::new(clickstream::stats::Stats::default()),
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
        println!(
            "re-aggregated {} windows into {} rows; indexed {}, refused {}",
            outcome.windows, outcome.rows, outcome.indexed, outcome.rejected
        );
        Ok(())
    })
}

/// The store of a pipeline file, for the commands that work on its tables.
async fn connect_store(config: &PipelineConfig) -> anyhow::Result<clickstream::store::Store> {
    clickstream::store::Store::connect(&config.store.database_url, clickstream::store::WindowSpec::of(&config.aggregate))
        .await
        .with_context(|| format!("while connecting to [store] database_url in {}", config.file.display()))
}
