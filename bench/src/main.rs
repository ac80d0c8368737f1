//! `clickstream-bench`: the benchmark harness, a tool of its own beside the
//! product (it links the plugin crates natively to compare them with their
//! WASM builds; the host does not).
//!
//! Every figure is a ratio against a baseline measured in the same run on the
//! same machine. The harness sets up fresh topics, databases and indices, runs
//! the arms (one module each), and writes `bench/results/<date>-<sha>.json`
//! plus a Markdown summary (also printed). docs/BENCHMARKS.md describes the
//! arms and keeps the latest summary.
//!
//! 0. [`broker`]: the broker ceiling (consume, do nothing).
//! 1. [`ingest`]: the full pipeline, the release binary as a subprocess.
//! 2. [`copy`]: binary COPY of the same enriched rows (the ingest limit).
//! 3. [`enrich`]: native vs WASM enrich over batch sizes.
//! 4. [`copy`]: the classic design, INSERT + COMMIT per event.
//! 5. [`aggregate`]: the aggregate plugin vs one SQL query (must match).
//! 6. [`swap`]: hot swaps under load.
//! 7. [`index`]: aggregate documents → search server by bulk size.
//!
//! Arms 8 to 14 are in docs/BENCHMARKS.md ("What each arm measures"); 14,
//! [`api_load`], is `ingest` beside loopback clients hammering the host's API.
//!
//! This file holds what every arm shares: the options, the run's state
//! (services, fresh databases, work folders), the result format and the
//! driver that runs the arms in order; each arm is a file of its own.

pub mod aggregate;
pub mod api_load;
pub mod arms;
pub mod batched;
pub mod broker;
pub mod copy;
pub mod data;
pub mod enrich;
pub mod index;
pub mod ingest;
pub mod languages;
pub mod report;
pub mod stats;
pub mod swap;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clickstream_testkit::Services;
use serde::Serialize;
use serde_json::Value;

/// Command-line options of `clickstream-bench`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "clickstream-bench", version, about = "Benchmark arms against the real services (docs/BENCHMARKS.md)")]
pub struct BenchArgs {
    /// CI smoke test: small sizes (about 1–2 minutes); timings are reported, never asserted.
    #[arg(long)]
    pub quick: bool,
    /// Events produced for the ingest arms (`broker`, `ingest`, `copy-limit`, `aggregation`) [default: 1000000, quick 20000].
    #[arg(long)]
    pub events: Option<u64>,
    /// Events enriched per batch size in the native/WASM sweep [default: 50000, quick 5000].
    #[arg(long)]
    pub enrich_events: Option<u64>,
    /// Batch sizes of `enrich-wasm`'s sweep, e.g. `4096` to profile one [default: 1, 64, 512, 4096 and --batch-size].
    #[arg(long, value_delimiter = ',')]
    pub sweep: Option<Vec<usize>>,
    /// Events inserted one by one in the classic arm [default: 3000, quick 300].
    #[arg(long)]
    pub classic_events: Option<u64>,
    /// Plugin swaps under load [default: 20, quick 3].
    #[arg(long)]
    pub swaps: Option<u32>,
    /// Events/s produced during the swap arm [default: half of `ingest`'s rate, at most 10000; quick 2000].
    #[arg(long)]
    pub swap_rate: Option<u64>,
    /// Pause between two swaps, in milliseconds [default: 2500, quick 2000].
    #[arg(long)]
    pub swap_interval_ms: Option<u64>,
    /// Documents indexed per bulk size [default: 25000 (about 10 MiB), quick 500].
    #[arg(long)]
    pub index_docs: Option<u64>,
    /// Records per batch (enrich call and database transaction), as `source.batch_size`.
    #[arg(long, default_value_t = 4096)]
    pub batch_size: usize,
    /// Same seed, same events, for every arm.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Loopback clients hammering the host's API in `api-load`.
    #[arg(long, default_value_t = 4)]
    pub api_clients: usize,
    /// Requests per second the clients of `api-load` send together at most (0: each as fast as it is answered).
    #[arg(long, default_value_t = 0)]
    pub api_rate: u64,
    /// `store.writers` in the pipeline files of the host arms (`ingest`, `swap`, `chain`, `chain-js`, `two-hosts`, `prefilled`, `api-load`).
    #[arg(long, default_value_t = 4)]
    pub writers: usize,
    /// Arms to run by name, e.g. `ingest,enrich-wasm,swap` (their numbers work too; default: all).
    #[arg(long, value_delimiter = ',', value_parser = arms::parse)]
    pub arms: Option<Vec<u8>>,
    /// Where the JSON and Markdown results go.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Scratch folder (pipeline files, plugin copies, host logs).
    #[arg(long, default_value = "target/bench")]
    pub work_dir: PathBuf,
    /// Folder of the built plugins (scripts/build-plugins).
    #[arg(long, default_value = "target/plugins")]
    pub plugins: PathBuf,
    /// Folder of the GeoIP databases (scripts/services up).
    #[arg(long, default_value = "data/geoip")]
    pub geoip_dir: PathBuf,
    /// Keep the bench databases afterwards (indices are always deleted).
    #[arg(long)]
    pub keep: bool,
}

/// Resolved sizes.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Events for the ingest arms.
    pub events: u64,
    /// Events per batch size in the enrich sweep.
    pub enrich_events: u64,
    /// Events in the classic arm.
    pub classic_events: u64,
    /// Swaps.
    pub swaps: u32,
    /// Produce rate during swaps (None: derived from `ingest`).
    pub swap_rate: Option<u64>,
    /// Pause between swaps.
    pub swap_interval_ms: u64,
    /// Steady load before the first swap, seconds (and 3/5 of it after the last).
    pub swap_warmup_secs: u64,
    /// Documents per bulk size.
    pub index_docs: u64,
    /// Batch size.
    pub batch_size: usize,
    /// Distinct users in the generated events.
    pub users: u64,
    /// Distinct pages.
    pub urls: u64,
    /// Event times spread over this many seconds.
    pub span_secs: u64,
    /// Seed.
    pub seed: u64,
}

impl Sizes {
    fn of(args: &BenchArgs) -> Sizes {
        let q = args.quick;
        let events = args.events.unwrap_or(if q { 20_000 } else { 1_000_000 });
        Sizes {
            events,
            enrich_events: args.enrich_events.unwrap_or(if q { 5_000 } else { 50_000 }),
            classic_events: args.classic_events.unwrap_or(if q { 300 } else { 3_000 }),
            swaps: args.swaps.unwrap_or(if q { 3 } else { 20 }),
            swap_rate: args.swap_rate.or(q.then_some(2_000)),
            swap_interval_ms: args.swap_interval_ms.unwrap_or(if q { 2_000 } else { 2_500 }),
            swap_warmup_secs: if q { 2 } else { 5 },
            index_docs: args.index_docs.unwrap_or(if q { 500 } else { 25_000 }),
            batch_size: args.batch_size,
            users: (events / 100).clamp(500, 20_000),
            urls: 100,
            span_secs: 3_600,
            seed: args.seed,
        }
    }
}

/// What every arm shares.
pub struct Bench {
    /// Options.
    pub args: BenchArgs,
    /// Sizes.
    pub sizes: Sizes,
    /// Service addresses.
    pub services: Services,
    /// `<date>-<sha>`.
    pub run_id: String,
    /// A suffix unique to this process, for topics and indices.
    pub unique: String,
    /// Scratch folder of this run (absolute).
    pub work: PathBuf,
    /// The repository root (absolute): where the command runs.
    pub root: PathBuf,
    /// Databases created, dropped at the end unless `--keep`.
    pub databases: std::sync::Mutex<Vec<String>>,
}

impl Bench {
    /// An absolute path for a path given relative to the root.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// A built plugin, e.g. `plugin("enrich-canary")`.
    pub fn plugin(&self, name: &str) -> anyhow::Result<PathBuf> {
        let path = self.path(&self.args.plugins).join(format!("{name}.wasm"));
        anyhow::ensure!(path.exists(), "{} is missing: run scripts/build-plugins", path.display());
        Ok(path)
    }

    /// The GeoIP databases in the order pipeline.toml lists them.
    pub fn geoip_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let dir = self.path(&self.args.geoip_dir);
        let files: Vec<PathBuf> = clickstream_testkit::GEOIP_DATABASES.iter().map(|f| dir.join(f)).collect();
        for f in &files {
            anyhow::ensure!(f.exists(), "{} is missing: run scripts/services up (it downloads the GeoIP databases)", f.display());
        }
        Ok(files)
    }

    /// Opens the GeoIP databases.
    pub fn geoip(&self) -> anyhow::Result<std::sync::Arc<clickstream::plugin::geoip::GeoIp>> {
        Ok(std::sync::Arc::new(clickstream::plugin::geoip::GeoIp::open(&self.geoip_files()?)?))
    }

    /// Drops (if present) and creates database `clickstream_bench_<name>`,
    /// returning its URL.
    pub async fn fresh_database(&self, name: &str) -> anyhow::Result<String> {
        let db = format!("clickstream_bench_{name}");
        let base = &self.services.database_url;
        let mut conn = clickstream_testkit::connect_server(base).await?;
        let url = clickstream_testkit::create_database(&mut conn, base, &db).await?;
        self.databases.lock().expect("not poisoned").push(db);
        Ok(url)
    }

    async fn drop_databases(&self) {
        let dbs = std::mem::take(&mut *self.databases.lock().expect("not poisoned"));
        if let Ok(mut conn) = clickstream_testkit::connect_server(&self.services.database_url).await {
            for db in dbs {
                let _ = clickstream_testkit::drop_database(&mut conn, &db).await;
            }
        }
    }

    /// A pipeline.toml for the bench: its own topic, group and database,
    /// the given enrich plugin file, aggregation effectively off during the
    /// measurement (first pass after an hour), and its own index.
    pub fn write_pipeline(&self, name: &str, topic: &str, database_url: &str, enrich: &Path) -> anyhow::Result<PathBuf> {
        self.write_chain_pipeline(name, topic, database_url, enrich, &[])
    }

    /// [`Bench::write_pipeline`], with the built plugins `after` (e.g.
    /// `bot-filter`, `anonymize-ip`: the demo's chain) after `enrich`.
    pub fn write_chain_pipeline(
        &self,
        name: &str,
        topic: &str,
        database_url: &str,
        enrich: &Path,
        after: &[&str],
    ) -> anyhow::Result<PathBuf> {
        let geoip = self.geoip_files()?;
        let mut more_transforms = String::new();
        for plugin in after {
            more_transforms.push_str(&format!("\n[[transforms]]\nname = \"{plugin}\"\npath = \"{}\"\n", self.plugin(plugin)?.display()));
        }
        let text = format!(
            r#"# Written by `clickstream bench` for arm `{name}`.
[source]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "bench-{name}-{unique}"
batch_size = {batch}
batch_max_wait_ms = 200
# Off: the generated clicks start at a fixed instant (data::START_MS), so that
# runs compare, and would age past the default 400 days.
max_past_days = 0

[store]
database_url = "{database_url}"
max_in_flight_batches = 4
writers = {writers}

[geoip]
databases = [{geoip}]

[[transforms]]
name = "enrich"
path = "{enrich}"
settings = {{ extra_bot_markers = "uptimerobot,pingdom" }}
{more_transforms}
[plugins.aggregate]
path = "{aggregate}"

[aggregate]
interval_ms = 3600000

[index]
url = "{search}"
index = "bench-{unique}-{name}"

[api]
listen = "127.0.0.1:0"
"#,
            brokers = self.services.brokers,
            unique = self.unique,
            batch = self.sizes.batch_size,
            writers = self.args.writers,
            geoip = geoip.iter().map(|p| format!("{:?}", p.display().to_string())).collect::<Vec<_>>().join(", "),
            enrich = enrich.display(),
            more_transforms = more_transforms,
            aggregate = self.plugin("aggregate")?.display(),
            search = self.services.search_url,
        );
        let path = self.work.join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        clickstream_testkit::try_load_config(&path).with_context(|| format!("the bench wrote an invalid {}", path.display()))?;
        Ok(path)
    }

    /// The bench pipeline file parsed as the host would (no environment overrides).
    pub fn load_pipeline(&self, path: &Path) -> anyhow::Result<clickstream::config::PipelineConfig> {
        Ok(clickstream_testkit::try_load_config(path)?)
    }

    /// Whether arm `n` is selected.
    pub fn runs(&self, n: u8) -> bool {
        self.args.arms.as_ref().is_none_or(|a| a.contains(&n))
    }
}

/// Progress on stderr, with the time since start.
pub fn progress(msg: impl std::fmt::Display) {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(Instant::now);
    eprintln!("[bench {:>6.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// Facts about the machine, recorded with every run.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// CPU model name.
    pub cpu_model: String,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// /proc/loadavg at start.
    pub loadavg_start: String,
    /// /proc/loadavg at the end.
    pub loadavg_end: String,
    /// Kernel release.
    pub kernel: String,
    /// PostgreSQL settings that decide commit cost.
    pub postgres: Value,
}

fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let meminfo = read("/proc/meminfo");
    Machine {
        nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        cpu_model: cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
            .unwrap_or_else(|| "unknown".into()),
        memory_mib: meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb / 1024)
            .unwrap_or(0),
        loadavg_start: read("/proc/loadavg").trim().to_string(),
        loadavg_end: String::new(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        postgres: Value::Null,
    }
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").args(args).current_dir(root).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// One arm's outcome: its JSON figures, or why it failed or was skipped.
#[derive(Debug, Clone, Serialize)]
pub struct ArmResult {
    /// Its number (older results use it).
    pub arm: u8,
    /// Its name (`arms::ARMS`).
    pub slug: &'static str,
    /// What it measures.
    pub name: &'static str,
    /// `ok`, `failed`, `skipped`.
    pub status: String,
    /// Wall time of the arm, seconds.
    pub seconds: f64,
    /// The figures.
    pub figures: Value,
    /// Error, when failed.
    pub error: Option<String>,
}

/// The whole run, as written to JSON.
#[derive(Debug, Serialize)]
pub struct Results {
    /// `<date>-<sha>`.
    pub run_id: String,
    /// Start, RFC 3339.
    pub started_at: String,
    /// Commit and whether the tree had changes.
    pub git: Value,
    /// The command line.
    pub command: String,
    /// Quick mode.
    pub quick: bool,
    /// Sizes.
    pub sizes: Sizes,
    /// Service addresses.
    pub services: Services,
    /// The machine.
    pub machine: Machine,
    /// Per arm.
    pub arms: Vec<ArmResult>,
    /// The issue's targets.
    pub targets: Vec<stats::Target>,
    /// Total wall time, seconds.
    pub total_seconds: f64,
}

impl Results {
    /// The figures of arm `n`, when it ran and succeeded.
    pub fn arm(&self, n: u8) -> Option<&Value> {
        self.arms.iter().find(|a| a.arm == n && a.status == "ok").map(|a| &a.figures)
    }

    /// A number in an arm's figures by JSON pointer, e.g. `/steady/events_per_s`.
    pub fn num(&self, arm: u8, pointer: &str) -> Option<f64> {
        self.arm(arm)?.pointer(pointer)?.as_f64()
    }
}

fn main() -> std::process::ExitCode {
    use clap::Parser;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(BenchArgs::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the selected arms and writes the results. Fails when an arm failed
/// (after writing what was measured), so CI notices; never on a timing.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: BenchArgs) -> anyhow::Result<()> {
    progress("starting");
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let root = std::env::current_dir()?;
    let sha = git(&root, &["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "nogit".into());
    // Changes to earlier results do not make the measured code dirty.
    let dirty = git(&root, &["status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench/results"]).is_some_and(|s| !s.is_empty());
    let run_id = format!("{}-{sha}", started_at.format("%Y-%m-%d"));
    let unique = format!("{}{}", started_at.format("%H%M%S"), std::process::id());
    let sizes = Sizes::of(&args);
    let work = root.join(&args.work_dir).join(&run_id);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut machine = machine();
    let bench = Bench {
        args: args.clone(),
        sizes,
        services: Services::from_env(),
        run_id: run_id.clone(),
        unique,
        work,
        root: root.clone(),
        databases: Default::default(),
    };
    machine.postgres = postgres_settings(&bench.services.database_url).await.unwrap_or(Value::Null);
    progress(format_args!(
        "run {run_id}: {} events, seed {}, batch {}; {} CPUs ({}), load {}",
        bench.sizes.events, bench.sizes.seed, bench.sizes.batch_size, machine.nproc, machine.cpu_model, machine.loadavg_start
    ));

    let mut arms: Vec<ArmResult> = Vec::new();
    let mut state = State::default();

    macro_rules! arm {
        ($n:expr, $body:expr) => {{
            let arm = arms::by_number($n);
            if bench.runs($n) {
                progress(format_args!("arm {}: {}", arm.name, arm.title));
                let t = Instant::now();
                let result: anyhow::Result<Value> = $body.await;
                let seconds = t.elapsed().as_secs_f64();
                let (status, figures, error) = match result {
                    Ok(v) => ("ok".to_string(), v, None),
                    Err(e) => {
                        progress(format_args!("arm {} FAILED: {e:#}", arm.name));
                        ("failed".to_string(), Value::Null, Some(format!("{e:#}")))
                    }
                };
                progress(format_args!("arm {} done in {seconds:.1} s: {status}", arm.name));
                arms.push(ArmResult { arm: $n, slug: arm.name, name: arm.title, status, seconds, figures, error });
            } else {
                arms.push(ArmResult {
                    arm: $n,
                    slug: arm.name,
                    name: arm.title,
                    status: "skipped".into(),
                    seconds: 0.0,
                    figures: Value::Null,
                    error: Some("not selected (--arms)".into()),
                });
            }
        }};
    }

    // The topic the broker, ingest, chain, chain-js, two-hosts, prefilled, batched and api-load arms read, produced once.
    if [0, 1, 8, 10, 11, 12, 13, 14].into_iter().any(|n| bench.runs(n)) {
        match data::produce_topic(&bench).await {
            Ok(t) => state.topic = Some(t),
            Err(e) => progress(format_args!("producing the bench topic FAILED: {e:#}")),
        }
    }
    arm!(0, broker::run(&bench, &state));
    arm!(1, ingest::run(&bench, &mut state));
    // Right after `ingest`, on the same topic, so the two compare side by side.
    let arm1_rate = arms.iter().find(|a| a.arm == 1 && a.status == "ok").and_then(|a| a.figures.pointer("/steady/events_per_s")?.as_f64());
    arm!(8, ingest::run_chain(&bench, &state, arm1_rate, &["bot-filter", "anonymize-ip"]));
    arm!(10, ingest::run_chain(&bench, &state, arm1_rate, &["utm"]));
    arm!(11, ingest::run_two_hosts(&bench, &state, arm1_rate));
    arm!(12, ingest::run_prefilled(&bench, &state, arm1_rate));
    arm!(14, ingest::run_beside_api_load(&bench, &state, arm1_rate));
    arm!(15, ingest::run_beside_slow_shadow(&bench, &state, arm1_rate));
    arm!(13, batched::run(&bench, &state));
    arm!(2, copy::run_copy(&bench));
    arm!(3, enrich::run(&bench));
    arm!(4, copy::run_classic(&bench));
    arm!(5, aggregate::run(&bench, &mut state));
    arm!(6, swap::run(&bench, arm1_rate));
    arm!(7, index::run(&bench, &state));
    arm!(9, languages::run(&bench));

    if let Some(t) = &state.topic {
        data::delete_topic(&bench, &t.name).await;
    }
    if !bench.args.keep {
        bench.drop_databases().await;
    }
    machine.loadavg_end = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string();
    let mut results = Results {
        run_id: run_id.clone(),
        started_at: started_at.to_rfc3339(),
        git: serde_json::json!({ "sha": sha, "dirty": dirty, "branch": git(&root, &["rev-parse", "--abbrev-ref", "HEAD"]) }),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        quick: bench.args.quick,
        sizes: bench.sizes.clone(),
        services: bench.services.clone(),
        machine,
        arms,
        targets: Vec::new(),
        total_seconds: 0.0,
    };
    results.targets = report::targets(&results);
    results.total_seconds = started.elapsed().as_secs_f64();
    let markdown = report::markdown(&results);

    let out = bench.path(&bench.args.out);
    std::fs::create_dir_all(&out)?;
    let base = if bench.args.quick { format!("{run_id}-quick") } else { run_id.clone() };
    // A second measured run of the same commit (a rerun of some arms) must
    // not overwrite the first one's results; a quick run is a smoke test.
    let taken = |stem: &str| out.join(format!("{stem}.json")).exists() || out.join(format!("{stem}.md")).exists();
    let stem = (1..)
        .map(|n| if n == 1 { base.clone() } else { format!("{base}-{n}") })
        .find(|stem| bench.args.quick || !taken(stem))
        .expect("some free name");
    let json_path = out.join(format!("{stem}.json"));
    let md_path = out.join(format!("{stem}.md"));
    let tmp = out.join(format!("{stem}.json.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(&results)?)?;
    std::fs::rename(&tmp, &json_path)?;
    std::fs::write(&md_path, &markdown)?;
    println!("{markdown}");
    progress(format_args!("wrote {} and {}", json_path.display(), md_path.display()));
    let failed: Vec<String> =
        results.arms.iter().filter(|a| a.status == "failed").map(|a| format!("arm {} ({})", a.slug, a.name)).collect();
    anyhow::ensure!(failed.is_empty(), "{} failed; see {}", failed.join(", "), json_path.display());
    Ok(())
}

/// What one arm hands to a later one.
#[derive(Default)]
pub struct State {
    /// The pre-filled topic of `broker` and `ingest`.
    pub topic: Option<data::Topic>,
    /// `ingest`'s database (events stored by the real pipeline), for `aggregation`.
    pub ingest_db: Option<String>,
    /// Aggregate rows computed in `aggregation`, for `indexing`.
    pub aggregates: Vec<clickstream::stages::index::AggregateDoc>,
}

async fn postgres_settings(url: &str) -> anyhow::Result<Value> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let mut out = serde_json::Map::new();
    for name in ["server_version", "synchronous_commit", "fsync", "shared_buffers", "wal_level", "max_wal_size"] {
        let v: String = sqlx::query_scalar(&format!("SHOW {name}")).fetch_one(&mut conn).await?;
        out.insert(name.into(), Value::String(v));
    }
    Ok(Value::Object(out))
}
