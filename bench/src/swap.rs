//! `swap`, hot swap under load: the release binary runs as in `ingest` while
//! events are produced at a steady rate; the enrich plugin file is replaced
//! (a temporary file in the same folder renamed over it, as a deploy does)
//! alternately by the canary and the normal build. Per swap:
//!
//! - **file write → swap logged**: from just before the new file's bytes are
//!   written to the timestamp of the host's `plugin swapped` log line (the
//!   new version is in its slot: every batch that starts enriching from then
//!   on uses it);
//! - **file write → first stored event of the new version**: to the
//!   `stored_at` (transaction start) of the first event stamped with the new
//!   `plugin_version` — what a user of the data sees, which adds batching
//!   and queueing;
//! - the host's own `took_ms` (from noticing the change, after the
//!   debounce, to the swap).
//!
//! Then every produced event id must be stored exactly once. Run once per
//! [`Case`]: precompiled artifacts, the baseline tier, compiling before
//! serving, and the caches (the default).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clickstream_testkit::{tail, Host};
use serde_json::{json, Value};
use sqlx::Row as _;

use clickstream::plugin::artifact;

use super::ingest::{final_counters, pool, stored_records};
use super::stats::{percentile, Spread};
use super::{progress, Bench};

/// A `plugin swapped` line of the host's log.
#[derive(Debug, Clone, PartialEq)]
pub struct SwapLine {
    /// Its timestamp.
    pub at: DateTime<Utc>,
    /// The new version, e.g. `enrich 0.1.0-canary`.
    pub new: String,
    /// The host's own measure.
    pub took_ms: Option<u64>,
}

/// The `plugin swapped` lines of a log.
pub fn swap_lines(log: &str) -> Vec<SwapLine> {
    log.lines()
        .filter(|l| l.contains("plugin swapped") && l.contains("plugin=enrich"))
        .filter_map(|l| {
            let at = DateTime::parse_from_rfc3339(l.split_whitespace().next()?).ok()?.with_timezone(&Utc);
            let new = l.split_once(" new=")?.1.split(" sha256=").next()?.trim_matches('"').to_string();
            let took_ms = l.split_whitespace().find_map(|w| w.strip_prefix("took_ms="))?.parse().ok();
            Some(SwapLine { at, new, took_ms })
        })
        .collect()
}

fn install(from: &Path, to: &Path) -> anyhow::Result<()> {
    let tmp = to.with_file_name(format!(".{}.tmp", to.file_name().and_then(|n| n.to_str()).unwrap_or("plugin")));
    std::fs::copy(from, &tmp)?;
    std::fs::rename(&tmp, to)?;
    Ok(())
}

fn ms(d: chrono::TimeDelta) -> f64 {
    d.num_microseconds().unwrap_or(i64::MAX) as f64 / 1000.0
}

/// How the host gets the new build's code in a run of `swap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// A sealed `.cwasm` written beside each `.wasm` (`clickstream plugin
    /// compile` beforehand); no caches.
    Precompiled,
    /// No caches: every swap compiles with the baseline compiler (Winch),
    /// then Cranelift in the background.
    BaselineTier,
    /// No caches, no baseline tier: every swap compiles with Cranelift
    /// before serving (what every cold swap did before).
    CompileBeforeServing,
    /// The default: caches on, so only swap 1 (to the canary, never
    /// compiled) compiles, with the baseline tier.
    Cache,
}

impl Case {
    /// Its key in the results.
    pub fn name(self) -> &'static str {
        match self {
            Case::Precompiled => "precompiled",
            Case::BaselineTier => "baseline_tier",
            Case::CompileBeforeServing => "compile_before_serving",
            Case::Cache => "cache",
        }
    }

    fn env(self) -> [(&'static str, &'static str); 2] {
        let (cache, tier) = match self {
            Case::Precompiled | Case::CompileBeforeServing => ("off", "off"),
            Case::BaselineTier => ("off", "on"),
            Case::Cache => ("on", "on"),
        };
        [("CLICKSTREAM_COMPILE_CACHE", cache), ("CLICKSTREAM_BASELINE_TIER", tier)]
    }
}

/// Runs `swap` once per [`Case`]. The default's (`cache`) figures are at
/// the top level, every case's under `cases`. `arm1_rate` (events/s) sizes
/// the produce rate when not given.
pub async fn run(bench: &Bench, arm1_rate: Option<f64>) -> anyhow::Result<Value> {
    let rate = bench.sizes.swap_rate.unwrap_or_else(|| arm1_rate.map_or(5_000, |r| ((r * 0.5) as u64).clamp(500, 10_000)));
    let mut cases = serde_json::Map::new();
    for case in [Case::Precompiled, Case::BaselineTier, Case::CompileBeforeServing] {
        progress(format_args!("  case {}", case.name()));
        cases.insert(case.name().into(), run_once(bench, rate, case).await?);
    }
    progress("  case cache (the default)");
    let mut on = run_once(bench, rate, Case::Cache).await?;
    // With the cache, swap 1 (to the canary) compiles; the normal build was
    // compiled at start-up, so every later swap finds its build compiled.
    let per = |from: usize, to: usize| -> Vec<f64> {
        on["per_swap"].as_array().map_or(Vec::new(), |a| {
            a.iter().skip(from).take(to.saturating_sub(from)).filter_map(|s| s["write_to_log_ms"].as_f64()).collect()
        })
    };
    on["cold_vs_cached"] = json!({
        "cold_write_to_log_ms": Spread::of(&per(0, 1)),
        "cached_write_to_log_ms": Spread::of(&per(1, usize::MAX)),
        "note": "cache on: swap 1 loads the canary build for the first time (baseline tier); the normal build was compiled at start-up, so swaps 2.. load builds compiled before",
    });
    let sum = |key: &str| cases.values().chain([&on]).filter_map(|c| c[key].as_u64()).sum::<u64>();
    let (lost, duplicated) = (sum("lost"), sum("duplicated"));
    on["lost_all_cases"] = json!(lost);
    on["duplicated_all_cases"] = json!(duplicated);
    on["cases"] = Value::Object(cases);
    Ok(on)
}

/// Precompiles `wasm` with the host binary, sealed with the key in
/// `cache_dir` (the one the host of the run uses).
fn precompile(wasm: &Path, out: &Path, cache_dir: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new(clickstream_testkit::host_binary()?)
        .args(["plugin", "compile"])
        .arg(wasm)
        .arg("--out")
        .arg(out)
        .env("CLICKSTREAM_CACHE_DIR", cache_dir)
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "clickstream plugin compile {} failed: {status}", wasm.display());
    Ok(())
}

async fn run_once(bench: &Bench, rate: u64, case: Case) -> anyhow::Result<Value> {
    let variant = format!("swap-{}", case.name().replace('_', "-"));
    let swaps = bench.sizes.swaps as usize;
    let interval = Duration::from_millis(bench.sizes.swap_interval_ms);
    let warmup = Duration::from_secs(bench.sizes.swap_warmup_secs);
    let duration = warmup + interval * swaps as u32 + warmup * 3 / 5;
    let total = rate * duration.as_secs();
    let normal = bench.plugin("enrich")?;
    let canary = bench.plugin("enrich-canary")?;
    let normal_version = format!("enrich {}", clickstream_enrich::VERSION);
    let canary_version = format!("enrich {}-canary", clickstream_enrich::VERSION);

    let dir = bench.work.join(format!("{variant}-plugins"));
    std::fs::create_dir_all(&dir)?;
    // A fresh cache dir per run: an empty disk cache, and the key the
    // precompiled artifacts are sealed with.
    let cache_dir = bench.work.join(format!("{variant}-cache"));
    let _ = std::fs::remove_dir_all(&cache_dir);
    let target = dir.join("enrich.wasm");
    let artifacts = if case == Case::Precompiled {
        let (normal_cwasm, canary_cwasm) = (dir.join("normal.cwasm"), dir.join("canary.cwasm"));
        precompile(&normal, &normal_cwasm, &cache_dir)?;
        precompile(&canary, &canary_cwasm, &cache_dir)?;
        install(&normal_cwasm, &artifact::beside(&target))?;
        Some((normal_cwasm, canary_cwasm))
    } else {
        None
    };
    install(&normal, &target)?;
    let topic = format!("bench-{}-{variant}", bench.unique);
    clickstream::kafka::ensure_topic(&bench.services.brokers, &topic, super::data::PARTITIONS).await?;
    let db = bench.fresh_database(&variant).await?;
    let pipeline = bench.write_pipeline(&variant, &topic, &db, &target)?;
    let log = bench.work.join(format!("{variant}-host.log"));
    let cache_env = cache_dir.display().to_string();
    let mut env = case.env().to_vec();
    env.push(("CLICKSTREAM_CACHE_DIR", &cache_env));
    let mut host = Host::try_start(&pipeline, &log, &env)?;
    let started = Instant::now();
    while !host.log().contains("consuming") {
        host.check_alive()?;
        anyhow::ensure!(started.elapsed() < Duration::from_secs(60), "host not consuming after 60 s: {}", tail(&log, 20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    progress(format_args!("  producing {total} events at {rate}/s while swapping {swaps} times every {} ms", interval.as_millis()));
    let producing = {
        let generator = super::data::generator(bench, total);
        let brokers = bench.services.brokers.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            clickstream::produce::to_kafka(generator, &brokers, &topic, Some(rate), &Default::default(), &indicatif::ProgressBar::hidden())
                .await
        })
    };
    let mut peak_rss = 0.0f64;
    let sample_rss = |host: &Host, peak: &mut f64| {
        if let Some((hwm, _)) = host.memory_mib() {
            *peak = peak.max(hwm);
        }
    };
    tokio::time::sleep(warmup).await;
    let mut writes: Vec<(DateTime<Utc>, String)> = Vec::new();
    for i in 0..swaps {
        host.check_alive()?;
        let (file, version) = if i % 2 == 0 { (&canary, &canary_version) } else { (&normal, &normal_version) };
        let t0: DateTime<Utc> = SystemTime::now().into();
        if let Some((normal_cwasm, canary_cwasm)) = &artifacts {
            // The artifact first, then the component: the swap the .wasm triggers finds its .cwasm.
            install(if i % 2 == 0 { canary_cwasm } else { normal_cwasm }, &artifact::beside(&target))?;
        }
        install(file, &target)?;
        writes.push((t0, version.clone()));
        tokio::time::sleep(interval).await;
        sample_rss(&host, &mut peak_rss);
    }
    let summary = producing.await.context("producer task")??;
    let pool = pool(&db).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stored_records(&pool).await < total as i64 {
        host.check_alive()?;
        anyhow::ensure!(Instant::now() < deadline, "only {} of {total} stored 120 s after producing ended", stored_records(&pool).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sample_rss(&host, &mut peak_rss);
    let host_log = tokio::task::spawn_blocking(move || host.stop()).await??;
    let counters = final_counters(&host_log);
    let lines = swap_lines(&host_log);
    let rejected = host_log.lines().filter(|l| l.contains("plugin reload rejected")).count();
    let optimized = host_log.lines().filter(|l| l.contains("plugin optimized")).count();
    let origins: Vec<String> = host_log
        .lines()
        .filter(|l| l.contains("plugin swapped"))
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("origin=")).map(str::to_string))
        .collect();

    // Per swap: the log line and the first stored event of the new version.
    let mut per_swap = Vec::new();
    let (mut to_log, mut to_stored, mut took) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (t0, version)) in writes.iter().enumerate() {
        let line = lines.iter().find(|l| l.at >= *t0 && &l.new == version);
        let plugin_version = version.trim_start_matches("enrich ");
        let first: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT min(stored_at) FROM events WHERE plugin_version = $1 AND stored_at >= $2")
                .bind(plugin_version)
                .bind(t0)
                .fetch_one(&pool)
                .await?;
        let log_ms = line.map(|l| ms(l.at - *t0));
        let stored_ms = first.map(|f| ms(f - *t0));
        if let Some(v) = log_ms {
            to_log.push(v);
        }
        if let Some(v) = stored_ms {
            to_stored.push(v);
        }
        if let Some(t) = line.and_then(|l| l.took_ms) {
            took.push(t as f64);
        }
        per_swap.push(json!({ "swap": i + 1, "to": version, "write_to_log_ms": log_ms, "write_to_first_stored_ms": stored_ms, "host_took_ms": line.and_then(|l| l.took_ms) }));
    }

    // Lost or duplicated: every produced id stored exactly once.
    let produced: HashSet<String> = super::data::generator(bench, total).map(|r| r.event_id).collect();
    let stored_ids: Vec<String> = sqlx::query("SELECT event_id FROM events").fetch_all(&pool).await?.iter().map(|r| r.get(0)).collect();
    let stored_set: HashSet<&str> = stored_ids.iter().map(String::as_str).collect();
    let lost = produced.iter().filter(|id| !stored_set.contains(id.as_str())).count();
    let unexpected = stored_set.iter().filter(|id| !produced.contains(**id)).count();
    let consumed = counters["consumed"].as_u64();
    let redelivered = counters["redelivered"].as_u64();
    // Consumed more often than produced = a record processed twice (the
    // primary key would hide the second row, so count it here).
    let duplicated = consumed.map(|c| c.saturating_sub(summary.records) + redelivered.unwrap_or(0));
    let versions: Vec<(String, i64)> =
        sqlx::query_as("SELECT plugin_version, count(*) FROM events GROUP BY 1 ORDER BY 1").fetch_all(&pool).await?;

    // Throughput and latency around swaps vs the rest.
    let per_second: Vec<(DateTime<Utc>, i64)> =
        sqlx::query_as("SELECT date_trunc('second', stored_at) AS s, count(*) FROM events GROUP BY 1 ORDER BY 1").fetch_all(&pool).await?;
    let near_swap = |t: &DateTime<Utc>| writes.iter().any(|(w, _)| *t >= *w && *t < *w + chrono::TimeDelta::seconds(1));
    let steady_span = |t: &DateTime<Utc>| {
        writes.first().is_some_and(|(f, _)| *t >= *f)
            && writes.last().is_some_and(|(l, _)| *t < *l + chrono::TimeDelta::from_std(interval).unwrap_or_default())
    };
    let during: Vec<f64> = per_second.iter().filter(|(t, _)| steady_span(t) && near_swap(t)).map(|(_, n)| *n as f64).collect();
    let outside: Vec<f64> = per_second.iter().filter(|(t, _)| steady_span(t) && !near_swap(t)).map(|(_, n)| *n as f64).collect();
    let latency_rows: Vec<(DateTime<Utc>, f64)> =
        sqlx::query_as("SELECT received_at, extract(epoch FROM stored_at - received_at)::float8 * 1000 FROM events")
            .fetch_all(&pool)
            .await?;
    let lat_during: Vec<f64> = latency_rows.iter().filter(|(t, _)| steady_span(t) && near_swap(t)).map(|r| r.1).collect();
    let lat_outside: Vec<f64> = latency_rows.iter().filter(|(t, _)| steady_span(t) && !near_swap(t)).map(|r| r.1).collect();
    pool.close().await;

    let log_spread = Spread::of(&to_log);
    let stored_spread = Spread::of(&to_stored);
    progress(format_args!(
        "  swaps: {}/{swaps} logged, write→log p50 {:?} p99 {:?} ms; write→stored p50 {:?} p99 {:?} ms; lost {lost}, duplicated {duplicated:?}",
        to_log.len(),
        log_spread.p50.map(|v| v.round()),
        log_spread.p99.map(|v| v.round()),
        stored_spread.p50.map(|v| v.round()),
        stored_spread.p99.map(|v| v.round()),
    ));
    super::data::delete_topic(bench, &topic).await;
    Ok(json!({
        "case": case.name(),
        "host_env": case.env().iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        "origins": origins,
        "optimized_swaps": optimized,
        "swaps": swaps,
        "swaps_logged": to_log.len(),
        "swaps_rejected": rejected,
        "interval_ms": interval.as_millis() as u64,
        "produce_rate": rate,
        "produced": summary.records,
        "write_to_log_ms": log_spread,
        "write_to_first_stored_ms": stored_spread,
        "host_took_ms": Spread::of(&took),
        "per_swap": per_swap,
        "lost": lost,
        "duplicated": duplicated,
        "unexpected_ids": unexpected,
        "stored": stored_ids.len(),
        "versions": versions.iter().map(|(v, n)| json!({"plugin_version": v, "events": n})).collect::<Vec<_>>(),
        "host_counters": counters,
        "host_peak_rss_mib": peak_rss,
        "throughput": {
            "events_per_s_near_swaps_p50": percentile(&during, 50.0),
            "events_per_s_near_swaps_min": percentile(&during, 0.0),
            "events_per_s_elsewhere_p50": percentile(&outside, 50.0),
            "near_swap": "the second after each file write (per-second counts: seconds starting in it); elsewhere = the rest of the swapping period",
        },
        "latency_ms": {
            "near_swaps": Spread::of(&lat_during),
            "elsewhere": Spread::of(&lat_outside),
            "measures": "stored_at − received_at per event (see `ingest`)",
        },
        "host_log": log,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_lines_are_parsed_from_the_host_log() {
        let log = "2026-11-28T20:00:01.250000Z  INFO clickstream::reload: plugin swapped plugin=enrich old=enrich 0.1.0 new=enrich 0.1.0-canary sha256=ab took_ms=612\n\
                   2026-11-28T20:00:02Z  INFO clickstream::reload: something else\n";
        let lines = swap_lines(log);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].new, "enrich 0.1.0-canary");
        assert_eq!(lines[0].took_ms, Some(612));
        assert_eq!(lines[0].at.timestamp_millis() % 1000, 250);
    }
}
