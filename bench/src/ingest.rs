//! `ingest`, the full pipeline: the release binary's `clickstream run` as a
//! subprocess on a fresh database, consuming the pre-filled topic (Kafka →
//! WASM enrich → PostgreSQL). Progress is polled from `ingest_offsets` (the
//! records stored, dead-lettered or dropped, maintained in each batch's
//! transaction); peak RSS from `/proc/<pid>/status`.
//!
//! `chain` is `ingest` with the demo's three-transform chain (enrich →
//! bot-filter → anonymize-ip), run right after it on the same topic: its
//! rate over `ingest`'s is what a longer chain costs. `chain-js` is `ingest` with the
//! JavaScript transform `utm` after enrich: what a JavaScript link costs in
//! the whole pipeline.
//!
//! `ingest` also measures latency below capacity: a second host on a fresh
//! topic while events are produced at half of `ingest`'s rate. `two-hosts` is `ingest`
//! with two hosts in one consumer group; `prefilled` is `ingest` on a table that
//! already holds four times the topic's events in the same day partition
//! (the rate at 4–5M stored events against `ingest`'s 0–1M). `api-load` is `ingest`
//! while loopback clients hammer the host's API ([`super::api_load`]).
//! `slow-shadow` is `ingest` with a candidate in shadow beside enrich that sleeps 900
//! ms of its 1000 ms deadline on every batch (`misbehave-slow`): the
//! shadow runs on its own thread and skips what it cannot keep up with, so
//! its rate over `ingest`'s is what a slow shadow costs the stream.

use std::time::{Duration, Instant};

use anyhow::Context;
use clickstream_testkit::procfs::cpu_seconds_of;
use clickstream_testkit::{tail, Host};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::stats::{mib_per_s, rate};
use super::{progress, Bench, State};

/// Connection options for a bench database: no slow-statement warnings
/// (the bench's queries are meant to be long).
pub fn options(url: &str) -> anyhow::Result<sqlx::postgres::PgConnectOptions> {
    use sqlx::ConnectOptions;
    let options: sqlx::postgres::PgConnectOptions = url.parse()?;
    Ok(options.log_slow_statements(tracing::log::LevelFilter::Off, Duration::from_secs(3600)))
}

/// A small pool on a bench database.
pub async fn pool(url: &str) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new().max_connections(2).connect_with(options(url)?).await?)
}

/// Records stored so far (events and dead letters): the sum of the stored
/// next offsets. 0 until the host has created its tables.
pub async fn stored_records(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT coalesce(sum(next_offset), 0)::bigint FROM ingest_offsets").fetch_one(pool).await.unwrap_or(0)
}

/// Percentiles of `stored_at - received_at` in ms: per event, and per
/// transaction (all events of a batch share `stored_at`, the transaction's
/// start; its latency is counted from its earliest record's arrival).
pub async fn latencies(pool: &PgPool, filter: &str) -> anyhow::Result<Value> {
    let per_event: (Option<f64>, Option<f64>, Option<f64>) = sqlx::query_as(&format!(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d)
         FROM (SELECT extract(epoch FROM stored_at - received_at)::float8 * 1000 AS d FROM events WHERE {filter}) x"
    ))
    .fetch_one(pool)
    .await?;
    let per_batch: (Option<f64>, Option<f64>, Option<f64>, i64) = sqlx::query_as(&format!(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d), count(*)
         FROM (SELECT extract(epoch FROM stored_at - min(received_at))::float8 * 1000 AS d FROM events WHERE {filter} GROUP BY stored_at) x"
    ))
    .fetch_one(pool)
    .await?;
    Ok(json!({
        "per_event_ms": { "p50": per_event.0, "p99": per_event.1, "max": per_event.2 },
        "per_batch_ms": { "p50": per_batch.0, "p99": per_batch.1, "max": per_batch.2, "batches": per_batch.3 },
        "measures": "stored_at − received_at: from the source taking the record off the consumer to the start of the PostgreSQL transaction that stores it (now() is the transaction's start; the transaction itself is not included). Per batch: from the batch's earliest record.",
    }))
}

/// The host's final counters, from its `pipeline stopped` log line.
pub fn final_counters(log: &str) -> Value {
    let line = log.lines().rev().find(|l| l.contains("pipeline stopped")).unwrap_or_default();
    let field = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.trim_matches(|c: char| !c.is_ascii_digit()).parse::<u64>().ok())
    };
    json!({
        "consumed": field("consumed"),
        "stored": field("stored"),
        "dead_lettered": field("dead_lettered"),
        "redelivered": field("redelivered"),
    })
}

/// Runs `ingest`: saturated on the pre-filled topic, then below capacity.
pub async fn run(bench: &Bench, state: &mut State) -> anyhow::Result<Value> {
    let (mut figures, db) = run_pipeline(bench, state, "ingest", &Shape::default()).await?;
    state.ingest_db = Some(db);
    let rate = figures.pointer("/steady/events_per_s").and_then(Value::as_f64).unwrap_or(10_000.0);
    figures["below_capacity"] = below_capacity(bench, rate * 0.5).await?;
    Ok(figures)
}

/// Runs `chain` (or `chain-js`: enrich and the transforms `after`), and its ratio to
/// `ingest` when `ingest` ran.
pub async fn run_chain(bench: &Bench, state: &State, arm1: Option<f64>, after: &[&str]) -> anyhow::Result<Value> {
    let name = format!("chain_{}", after.join("_").replace('-', "_"));
    let (figures, _) = run_pipeline(bench, state, &name, &Shape { after, ..Shape::default() }).await?;
    Ok(over_arm_1(figures, arm1))
}

/// Runs `two-hosts`: two hosts in one group.
pub async fn run_two_hosts(bench: &Bench, state: &State, arm1: Option<f64>) -> anyhow::Result<Value> {
    let (figures, _) = run_pipeline(bench, state, "two_hosts", &Shape { hosts: 2, ..Shape::default() }).await?;
    Ok(over_arm_1(figures, arm1))
}

/// Runs `prefilled`: `ingest` on a table already holding four times the topic's
/// events, in the same day partition.
pub async fn run_prefilled(bench: &Bench, state: &State, arm1: Option<f64>) -> anyhow::Result<Value> {
    let prefill = 4 * state.topic.as_ref().context("the ingest topic was not produced")?.records;
    let (figures, _) = run_pipeline(bench, state, "prefilled", &Shape { prefill, ..Shape::default() }).await?;
    Ok(over_arm_1(figures, arm1))
}

/// Runs `slow-shadow`: `ingest` with a slow candidate in shadow.
pub async fn run_beside_slow_shadow(bench: &Bench, state: &State, arm1: Option<f64>) -> anyhow::Result<Value> {
    let (figures, _) = run_pipeline(bench, state, "slow_shadow", &Shape { shadow: Some("misbehave-slow"), ..Shape::default() }).await?;
    Ok(over_arm_1(figures, arm1))
}

/// Runs `api-load`: `ingest` beside `--api-clients` clients on the host's API.
pub async fn run_beside_api_load(bench: &Bench, state: &State, arm1: Option<f64>) -> anyhow::Result<Value> {
    let (figures, _) =
        run_pipeline(bench, state, "api_load", &Shape { api_clients: bench.args.api_clients.max(1), ..Shape::default() }).await?;
    Ok(over_arm_1(figures, arm1))
}

fn over_arm_1(mut figures: Value, arm1: Option<f64>) -> Value {
    let rate = figures.pointer("/steady/events_per_s").and_then(Value::as_f64);
    figures["over_arm_1"] = json!(super::stats::ratio(rate, arm1));
    figures
}

/// How a pipeline arm runs: transforms after enrich, hosts in the group,
/// events in the table before the host starts, clients on the first host's
/// API while it ingests.
struct Shape<'a> {
    after: &'a [&'a str],
    hosts: usize,
    prefill: u64,
    api_clients: usize,
    /// A built plugin put in shadow beside enrich once the host runs.
    shadow: Option<&'a str>,
}

impl Default for Shape<'_> {
    fn default() -> Self {
        Shape { after: &[], hosts: 1, prefill: 0, api_clients: 0, shadow: None }
    }
}

/// The deadline of enrich's calls in the shadow arm, and how long its slow
/// candidate sleeps per batch: near the deadline, never past it.
const SHADOW_DEADLINE_MS: u64 = 1000;

/// Runs the release binary over the bench topic as `shape` says. Returns
/// the figures and the database.
async fn run_pipeline(bench: &Bench, state: &State, name: &str, shape: &Shape<'_>) -> anyhow::Result<(Value, String)> {
    let after = shape.after;
    let topic = state.topic.clone().context("the ingest topic was not produced")?;
    let db = bench.fresh_database(name).await?;
    let before = super::copy::prefill(bench, &db, shape.prefill).await?;
    if shape.api_clients > 0 {
        super::api_load::prefill_dead_letters(&db, super::api_load::dead_letters_for(bench.args.quick)).await?;
    }
    // With a shadow, enrich is a copy the candidate is written over.
    let enrich = match shape.shadow {
        Some(_) => {
            let copy = bench.work.join(format!("{name}-enrich.wasm"));
            std::fs::copy(bench.plugin("enrich")?, &copy)?;
            copy
        }
        None => bench.plugin("enrich")?,
    };
    let pipeline = bench.write_chain_pipeline(name, &topic.name, &db, &enrich, after)?;
    if shape.shadow.is_some() {
        let text = std::fs::read_to_string(&pipeline)?;
        let path_line = format!("path = \"{}\"\n", enrich.display());
        anyhow::ensure!(text.contains(&path_line), "enrich's table in {}", pipeline.display());
        let keys = format!("rollout = \"shadow\"\ndeadline_ms = {SHADOW_DEADLINE_MS}\n");
        std::fs::write(&pipeline, text.replace(&path_line, &format!("{path_line}{keys}")))?;
    }
    let log = bench.work.join(format!("{name}-host.log"));
    let pool = pool(&db).await?;
    // WAL written by the whole cluster over the arm (nothing else writes during it).
    let wal0: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text").fetch_one(&pool).await?;
    let (pg_cpu0, broker_cpu0, wall0) = (cpu_seconds_of(&["postgres"]), cpu_seconds_of(&["nisshi", "tansu"]), Instant::now());
    let mut hosts: Vec<Host> = (0..shape.hosts)
        .map(|i| {
            Host::try_start(
                &pipeline,
                &bench.work.join(format!("{name}-host{}.log", if i == 0 { String::new() } else { format!("-{i}") })),
                &[],
            )
        })
        .collect::<Result<_, _>>()?;
    let load = match shape.api_clients {
        0 => None,
        clients => {
            // The API is up before the pipeline connects, so the load runs from the first record on.
            let waited = Instant::now();
            let address = loop {
                hosts[0].check_alive()?;
                if let Some(address) = super::api_load::api_address(&hosts[0].log()) {
                    break address;
                }
                anyhow::ensure!(waited.elapsed() < Duration::from_secs(60), "the host's API did not come up in 60 s: {}", tail(&log, 20));
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            progress(format_args!("  {clients} clients on the API at http://{address}/"));
            Some(super::api_load::start(&address, clients, bench.args.api_rate)?)
        }
    };
    let total = topic.records as i64;
    // The share of the records stored before the shadow ran: the steady
    // window starts after it.
    let mut shadow_from = 0.0;
    if let Some(candidate) = shape.shadow {
        let waited = Instant::now();
        while !hosts[0].log().contains("hot reload: watching") {
            hosts[0].check_alive()?;
            anyhow::ensure!(
                waited.elapsed() < Duration::from_secs(60),
                "the host did not watch its plugin files in 60 s: {}",
                tail(&log, 20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let staged = enrich.with_extension("staged");
        std::fs::copy(bench.plugin(candidate)?, &staged)?;
        std::fs::rename(&staged, &enrich)?;
        while !hosts[0].log().contains("candidate in shadow") {
            hosts[0].check_alive()?;
            anyhow::ensure!(waited.elapsed() < Duration::from_secs(120), "the candidate never went into shadow: {}", tail(&log, 20));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shadow_from = stored_records(&pool).await as f64 / total.max(1) as f64;
        progress(format_args!("  {candidate} in shadow after {:.0}% of the records", shadow_from * 100.0));
        anyhow::ensure!(shadow_from < 0.5, "the shadow started after {:.0}% of the records: too late to measure", shadow_from * 100.0);
    }
    let mut samples: Vec<(f64, i64)> = Vec::new();
    let (mut peak_rss, mut max_rss) = (0.0f64, 0.0f64);
    let mut last_report = Instant::now();
    let mut last_progress = Instant::now();
    let mut last_stored = 0;
    loop {
        for host in &mut hosts {
            host.check_alive()?;
        }
        let stored = stored_records(&pool).await;
        let t = hosts[0].started.elapsed().as_secs_f64();
        samples.push((t, stored));
        for host in &hosts {
            if let Some((hwm, rss)) = host.memory_mib() {
                peak_rss = peak_rss.max(hwm);
                max_rss = max_rss.max(rss);
            }
        }
        if stored != last_stored {
            last_stored = stored;
            last_progress = Instant::now();
        }
        if stored >= total {
            break;
        }
        anyhow::ensure!(
            last_progress.elapsed() < Duration::from_secs(90),
            "no progress for 90 s at {stored}/{total}; log: {}\n{}",
            log.display(),
            tail(&log, 20)
        );
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format_args!("  stored {stored}/{total}, host RSS {max_rss:.0} MiB"));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api_load = match load {
        Some(load) => load.finish(bench.args.api_rate).await,
        None => Value::Null,
    };
    let shadow = match shape.shadow {
        Some(candidate) => {
            let address = super::api_load::api_address(&hosts[0].log()).context("the host's API address in its log")?;
            let plugins: Value = serde_json::from_str(&reqwest::get(format!("http://{address}/api/plugins")).await?.text().await?)?;
            let report = plugins["plugins"].as_array().and_then(|p| p.iter().find(|p| p["slot"] == "enrich")).map(|p| p["shadow"].clone());
            json!({
                "candidate": candidate,
                "sleeps_ms_per_batch": 900,
                "deadline_ms": SHADOW_DEADLINE_MS,
                "started_after_share_of_records": shadow_from,
                "report": report,
            })
        }
        None => Value::Null,
    };
    let cpu = hosts.iter().map(Host::cpu_seconds).sum::<Option<f64>>();
    let (pg_cpu, broker_cpu, wall) =
        (cpu_seconds_of(&["postgres"]) - pg_cpu0, cpu_seconds_of(&["nisshi", "tansu"]) - broker_cpu0, wall0.elapsed().as_secs_f64());
    let mut counters = Vec::new();
    for host in hosts {
        let host_log = tokio::task::spawn_blocking(move || host.stop()).await??;
        counters.push(final_counters(&host_log));
    }

    let steady =
        steady_rate(&samples, total, (shadow_from + 0.05).max(0.1), 0.9).context("too few progress samples for a steady-state rate")?;
    let first = samples.iter().find(|s| s.1 > 0).map(|s| s.0).unwrap_or(0.0);
    let last = samples.last().map(|s| s.0).unwrap_or(0.0);
    let bytes_per_event = topic.bytes as f64 / topic.records.max(1) as f64;
    let stored_events: i64 = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events").fetch_one(&pool).await? - before as i64;
    let dropped: i64 = sqlx::query_scalar("SELECT coalesce(sum(dropped), 0)::bigint FROM dropped_events").fetch_one(&pool).await?;
    anyhow::ensure!(stored_events + dropped == total, "stored {stored_events} events and dropped {dropped} of {total}");
    anyhow::ensure!(!after.is_empty() || dropped == 0, "enrich alone dropped {dropped} events");
    let wal_bytes: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8").bind(&wal0).fetch_one(&pool).await?;
    let latency = latencies(&pool, "topic <> 'prefill'").await?;
    // What ingest no longer does in its transactions, the aggregator does:
    // the window log of the whole run, taken at once.
    let taken = Instant::now();
    let log_rows = clickstream::stages::aggregate::apply_window_changes(&pool, WINDOWS).await?;
    let log_seconds = taken.elapsed().as_secs_f64();
    pool.close().await;
    progress(format_args!(
        "  full pipeline: {:.0} events/s steady ({:.1} MiB/s), peak RSS {peak_rss:.0} MiB",
        steady.0,
        steady.0 * bytes_per_event / 1048576.0
    ));
    let transforms = std::iter::once("enrich").chain(after.iter().copied()).collect::<Vec<_>>().join(" → ");
    let figures = json!({
        "events": total,
        "transforms": transforms,
        "hosts": shape.hosts,
        "table_rows_at_start": before,
        "table_rows_at_end": before as i64 + stored_events,
        "stored": stored_events,
        "dropped": dropped,
        "steady": {
            "events_per_s": steady.0,
            "mib_per_s": steady.0 * bytes_per_event / 1048576.0,
            "window": "between 10% and 90% of the records stored (or dropped)",
            "seconds": steady.1,
        },
        "overall": {
            "events_per_s": rate(total as f64, last - first),
            "mib_per_s": mib_per_s(total as f64 * bytes_per_event, last - first),
            "first_stored_after_start_s": first,
            "seconds": last - first,
        },
        "host_peak_rss_mib": peak_rss,
        "writers": bench.args.writers,
        "host_max_rss_sampled_mib": max_rss,
        "host_cpu_seconds": cpu,
        "host_cpu_ms_per_1000_events": cpu.map(|c| c * 1000.0 * 1000.0 / total as f64),
        "cpu_seconds": {
            "host": cpu,
            "host_measures": "the sum over the hosts",
            "postgres": pg_cpu,
            "broker": broker_cpu,
            "wall": wall,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "measures": "user + system CPU from /proc over the arm (host start to host exit): the host process, every postgres process, the broker (nisshi, or tansu where it still runs); anything else on the machine is not counted",
        },
        "latency": latency,
        "wal_bytes_per_event": wal_bytes / total as f64,
        "window_log": {
            "rows": log_rows,
            "seconds_to_take": log_seconds,
            "ms_per_1000_events": log_seconds * 1e6 / total as f64,
            "measures": "after the host stopped: apply_window_changes over the run's whole window log (what the aggregator does each pass: versions bumped, neighbour windows probed), one connection",
        },
        "host_counters": counters,
        "api_load": api_load,
        "shadow": shadow,
        "batch_size": bench.sizes.batch_size,
        "max_in_flight_batches": 4,
        "aggregation": "on, with aggregate.interval_ms = 3600000: no pass runs during the measurement (`aggregation` measures aggregation)",
        "pipeline_file": pipeline,
        "host_log": log,
    });
    Ok((figures, db))
}

/// The bench pipeline's windowing (the defaults).
const WINDOWS: clickstream::stages::record::WindowSpec =
    clickstream::stages::record::WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 };

/// `batch_max_wait_ms` in the bench's pipeline files.
const BATCH_MAX_WAIT_MS: f64 = 200.0;

/// `ingest` below capacity: a host on a fresh topic and database while events
/// are produced at `rate` per second (half of `ingest`'s steady rate), for
/// between 5 and 30 s by the run's size; latency from the stored rows.
async fn below_capacity(bench: &Bench, rate: f64) -> anyhow::Result<Value> {
    let name = "steady";
    let rate = (rate as u64).max(100);
    let secs = (bench.sizes.events / 40_000).clamp(5, 30);
    let total = rate * secs;
    let topic = format!("bench-{}-{name}", bench.unique);
    clickstream::kafka::ensure_topic(&bench.services.brokers, &topic, super::data::PARTITIONS).await?;
    let db = bench.fresh_database(name).await?;
    let pipeline = bench.write_chain_pipeline(name, &topic, &db, &bench.plugin("enrich")?, &[])?;
    let log = bench.work.join(format!("{name}-host.log"));
    let mut host = Host::try_start(&pipeline, &log, &[])?;
    let started = Instant::now();
    while !host.log().contains("partitions assigned") {
        host.check_alive()?;
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "host not assigned partitions after 60 s: {}", tail(&log, 20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(format_args!("  below capacity: producing {total} events at {rate}/s"));
    let generator = super::data::generator_seeded(bench, total, bench.sizes.seed.wrapping_add(7));
    clickstream::produce::to_kafka(
        generator,
        &bench.services.brokers,
        &topic,
        Some(rate),
        &Default::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .await?;
    let pool = pool(&db).await?;
    let waited = Instant::now();
    while stored_records(&pool).await < total as i64 {
        host.check_alive()?;
        anyhow::ensure!(waited.elapsed() < Duration::from_secs(60), "not everything stored 60 s after producing: {}", tail(&log, 20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::spawn_blocking(move || host.stop()).await??;
    let latency = latencies(&pool, "true").await?;
    pool.close().await;
    super::data::delete_topic(bench, &topic).await;
    let p99 = latency.pointer("/per_event_ms/p99").and_then(Value::as_f64);
    progress(format_args!(
        "  below capacity: p50 {:.0} ms, p99 {:.0} ms per event (target p99 <= {:.0} ms)",
        latency.pointer("/per_event_ms/p50").and_then(Value::as_f64).unwrap_or(f64::NAN),
        p99.unwrap_or(f64::NAN),
        2.0 * BATCH_MAX_WAIT_MS
    ));
    Ok(json!({
        "events": total,
        "rate": rate,
        "seconds_produced": secs,
        "batch_max_wait_ms": BATCH_MAX_WAIT_MS,
        "latency": latency,
        "target_p99_ms": 2.0 * BATCH_MAX_WAIT_MS,
        "met": p99.map(|p| p <= 2.0 * BATCH_MAX_WAIT_MS),
        "measures": "a second host on a fresh topic and database, events produced at half of `ingest`'s steady rate; latency per event from the stored rows, as for `ingest`",
    }))
}

/// The rate between the first samples at or past `from` and `to` of `total`:
/// (events/s, seconds). Samples are (seconds, records stored).
pub fn steady_rate(samples: &[(f64, i64)], total: i64, from: f64, to: f64) -> Option<(f64, f64)> {
    let at = |share: f64| samples.iter().find(|s| s.1 as f64 >= share * total as f64).copied();
    let (a, b) = (at(from)?, at(to)?);
    (b.0 > a.0).then(|| (rate((b.1 - a.1) as f64, b.0 - a.0), b.0 - a.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_ignores_start_up_and_tail() {
        // Slow start, 1000/s in the middle, then a slow tail.
        let samples = vec![(0.0, 0), (5.0, 0), (6.0, 100), (7.0, 1100), (8.0, 2100), (9.0, 3100), (10.0, 4100), (20.0, 4200)];
        let (r, secs) = steady_rate(&samples, 4200, 0.1, 0.9).unwrap();
        assert_eq!(secs, 3.0);
        assert_eq!(r, 1000.0);
        assert!(steady_rate(&samples[..2], 4200, 0.1, 0.9).is_none());
    }

    #[test]
    fn final_counters_come_from_the_stop_line() {
        let log =
            "x\n2026-11-28T20:00:00Z  INFO clickstream::pipeline: pipeline stopped consumed=10 stored=9 dead_lettered=1 redelivered=0\n";
        let c = final_counters(log);
        assert_eq!(c["consumed"], 10);
        assert_eq!(c["dead_lettered"], 1);
    }
}
