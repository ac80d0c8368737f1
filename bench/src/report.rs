//! The targets, judged from a run's figures, and the Markdown summary.

use std::fmt::Write as _;

use super::stats::{format_number, format_ratio, ratio, Goal, Target};
use super::Results;

/// The targets of issues #8, #14, #17 and #18, each with its measured value and verdict.
pub fn targets(r: &Results) -> Vec<Target> {
    let arm1 = r.num(1, "/steady/events_per_s");
    let arm0 = r.num(0, "/events_per_s");
    let arm2 = r.num(2, "/events_per_s");
    let limit = match (arm0, arm2) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => None,
    };
    let arm4 = r.num(4, "/events_per_s");
    let rss = [r.num(1, "/host_peak_rss_mib"), r.num(6, "/host_peak_rss_mib"), r.num(8, "/host_peak_rss_mib")]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    let lost_dup = match (r.num(6, "/lost_all_cases"), r.num(6, "/duplicated_all_cases")) {
        (Some(l), Some(d)) => Some(l + d),
        _ => None,
    };
    vec![
        Target::new(
            "`ingest` sustained throughput",
            arm1,
            Goal::AtLeast,
            50_000.0,
            "events/s",
            "steady state (10%→90% of the events stored)".into(),
        ),
        Target::new(
            "`ingest` / min(`broker`, `copy-limit`)",
            ratio(arm1, limit),
            Goal::AtLeast,
            0.5,
            "×",
            format!(
                "`ingest` {} events/s; broker ceiling {}; binary COPY {}",
                arm1.map_or("n/a".into(), format_number),
                arm0.map_or("n/a".into(), format_number),
                arm2.map_or("n/a".into(), format_number)
            ),
        ),
        Target::new(
            "WASM / native enrich at the default batch size",
            r.num(3, "/wasm_over_native_at_default"),
            Goal::AtLeast,
            0.85,
            "×",
            format!("batch size {}", r.sizes.batch_size),
        ),
        Target::new(
            "`chain` (enrich → bot-filter → anonymize-ip) / `ingest` (enrich alone)",
            r.num(8, "/over_arm_1"),
            Goal::AtLeast,
            0.9,
            "×",
            format!(
                "steady events/s, same topic, run back to back; chain {}",
                r.num(8, "/steady/events_per_s").map_or("n/a".into(), format_number)
            ),
        ),
        Target::new(
            "`ingest` / `classic-insert` (classic)",
            ratio(arm1, arm4),
            Goal::AtLeast,
            50.0,
            "×",
            format!("classic {} events/s", arm4.map_or("n/a".into(), format_number)),
        ),
        Target::new(
            "Aggregation: plugin path time / SQL time",
            r.num(5, "/plugin_path_over_sql"),
            Goal::AtMost,
            2.0,
            "×",
            "results equal (checked row by row)".into(),
        ),
        Target::new(
            "Aggregation: plugin path time / Spark local mode time",
            r.num(5, "/plugin_path_over_spark"),
            Goal::AtMost,
            1.0,
            "×",
            match r.arm(5).and_then(|v| v["spark"]["status"].as_str()) {
                Some("ok") => format!(
                    "Spark aggregation {:.1} s after a {:.1} s start-up; results equal",
                    r.num(5, "/spark/aggregate_seconds").unwrap_or(0.0),
                    r.num(5, "/spark/startup_seconds").unwrap_or(0.0)
                ),
                _ => format!(
                    "Spark not run: {}",
                    r.arm(5).and_then(|v| v["spark"]["reason"].as_str()).unwrap_or("`aggregation` did not run")
                ),
            },
        ),
        Target::new(
            "Swap p99 with a precompiled .cwasm, file write → serving",
            r.num(6, "/cases/precompiled/write_to_log_ms/p99"),
            Goal::AtMost,
            50.0,
            "ms",
            format!("p50 {} ms; no caches", r.num(6, "/cases/precompiled/write_to_log_ms/p50").map_or("n/a".into(), format_number)),
        ),
        Target::new(
            "Swap p99 to a never-seen .wasm via the baseline tier, file write → serving",
            r.num(6, "/cases/baseline_tier/write_to_log_ms/p99"),
            Goal::AtMost,
            150.0,
            "ms",
            format!(
                "p50 {} ms; no caches; Cranelift before serving instead: p99 {} ms",
                r.num(6, "/cases/baseline_tier/write_to_log_ms/p50").map_or("n/a".into(), format_number),
                r.num(6, "/cases/compile_before_serving/write_to_log_ms/p99").map_or("n/a".into(), format_number)
            ),
        ),
        Target::new(
            "Swap p99 (default: caches and baseline tier), file write → swap logged",
            r.num(6, "/write_to_log_ms/p99"),
            Goal::AtMost,
            250.0,
            "ms",
            format!("p50 {} ms", r.num(6, "/write_to_log_ms/p50").map_or("n/a".into(), format_number)),
        ),
        Target::new(
            "Swap p99, file write → first stored event of the new version",
            r.num(6, "/write_to_first_stored_ms/p99"),
            Goal::AtMost,
            250.0,
            "ms",
            "includes batching (up to batch_max_wait_ms = 200) and queueing".into(),
        ),
        Target::new(
            "Events lost + duplicated during swaps",
            lost_dup,
            Goal::AtMost,
            0.0,
            "events",
            "every produced event id stored exactly once, in all four swap cases".into(),
        ),
        Target::new(
            "`ingest` / `copy-limit` (binary COPY into the final schema)",
            ratio(arm1, arm2),
            Goal::AtLeast,
            0.8,
            "×",
            format!("`ingest` {} events/s, `copy-limit` {} events/s", f(arm1), f(arm2)),
        ),
        Target::new(
            "`copy-limit`: COPY into the final schema / into the schema before partitions",
            r.num(2, "/final_over_before"),
            Goal::AtLeast,
            1.5,
            "×",
            format!("before: {} events/s", f(r.num(2, "/by_shape/before/events_per_s"))),
        ),
        Target::new(
            "`ingest` / `batched` (careful batched design)",
            ratio(arm1, r.num(13, "/events_per_s")),
            Goal::AtLeast,
            3.0,
            "×",
            format!("multi-row INSERT of 5,000 per transaction: {} events/s", f(r.num(13, "/events_per_s"))),
        ),
        Target::new(
            "`prefilled` (table holding 4–5× the topic) / `ingest` (0–1×)",
            r.num(12, "/over_arm_1"),
            Goal::AtLeast,
            0.9,
            "×",
            format!("{} events/s from {} rows at start", f(r.num(12, "/steady/events_per_s")), f(r.num(12, "/table_rows_at_start"))),
        ),
        Target::new(
            "`api-load` (beside API load) / `ingest`",
            r.num(14, "/over_arm_1"),
            Goal::AtLeast,
            0.9,
            "×",
            format!(
                "{} events/s while {} loopback clients made {} API requests/s ({} shed)",
                f(r.num(14, "/steady/events_per_s")),
                f(r.num(14, "/api_load/clients")),
                f(r.num(14, "/api_load/requests_per_s")),
                f(r.num(14, "/api_load/shed_503")),
            ),
        ),
        Target::new(
            "`slow-shadow` (a candidate in shadow sleeping 900 ms of its 1,000 ms deadline per batch) / `ingest`",
            r.num(15, "/over_arm_1"),
            Goal::AtLeast,
            0.95,
            "×",
            format!(
                "{} events/s; the candidate ran on {} batches and {} were skipped",
                f(r.num(15, "/steady/events_per_s")),
                f(r.num(15, "/shadow/report/report/batches")),
                f(r.num(15, "/shadow/report/report/skipped")),
            ),
        ),
        Target::new(
            "Latency at half of `ingest`'s rate, p99 receipt → stored",
            r.num(1, "/below_capacity/latency/per_event_ms/p99"),
            Goal::AtMost,
            400.0,
            "ms",
            format!(
                "2 × batch_max_wait_ms (200); p50 {} ms at {} events/s",
                f(r.num(1, "/below_capacity/latency/per_event_ms/p50")),
                f(r.num(1, "/below_capacity/rate"))
            ),
        ),
        Target::new(
            "Host peak RSS under sustained load",
            rss,
            Goal::AtMost,
            300.0,
            "MiB",
            "VmHWM of the host process, `ingest`, `swap` and `chain`".into(),
        ),
    ]
}

fn f(v: Option<f64>) -> String {
    v.map_or("n/a".into(), format_number)
}

/// The Markdown summary of a run.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Benchmark run {}{}\n", r.run_id, if r.quick { " (quick: smoke sizes, not comparable)" } else { "" });
    let m = &r.machine;
    let _ = writeln!(
        s,
        "Machine: {} CPUs ({}), {} MiB RAM, kernel {}; load average at start `{}`, at end `{}`. PostgreSQL {} (synchronous_commit {}, fsync {}), Kafka API: nisshi, search: osmem — all on this machine.\n",
        m.nproc,
        m.cpu_model,
        m.memory_mib,
        m.kernel,
        m.loadavg_start,
        m.loadavg_end,
        m.postgres.get("server_version").and_then(|v| v.as_str()).unwrap_or("?"),
        m.postgres.get("synchronous_commit").and_then(|v| v.as_str()).unwrap_or("?"),
        m.postgres.get("fsync").and_then(|v| v.as_str()).unwrap_or("?"),
    );
    let _ = writeln!(
        s,
        "Sizes: {} events (~{} bytes each, seed {}), batch size {}, {} enrich events per batch size, {} classic events, {} swaps, {} documents per bulk size. Commit {}{}. Total {:.0} s.\n",
        r.sizes.events,
        f(r.num(0, "/mean_record_bytes")),
        r.sizes.seed,
        r.sizes.batch_size,
        r.sizes.enrich_events,
        r.sizes.classic_events,
        r.sizes.swaps,
        r.sizes.index_docs,
        r.git["sha"].as_str().unwrap_or("?"),
        if r.git["dirty"].as_bool() == Some(true) { " (with uncommitted changes)" } else { "" },
        r.total_seconds
    );

    let _ = writeln!(s, "### Targets\n\n| target | measured (threshold) | verdict | notes |\n|---|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(s, "| {} | {} | **{}** | {} |", t.name, t.describe(), t.verdict, t.detail);
    }

    let _ = writeln!(s, "\n### Arms\n\n| arm | what | result | time |\n|---|---|---|---|");
    for a in &r.arms {
        let result = match (a.status.as_str(), a.arm) {
            ("ok", 0) => format!("{} events/s, {:.1} MiB/s", f(r.num(0, "/events_per_s")), r.num(0, "/mib_per_s").unwrap_or(0.0)),
            ("ok", 1) => format!(
                "{} events/s steady ({:.1} MiB/s); batch latency p50 {} / p99 {} ms (per event p50 {} / p99 {} ms); peak RSS {} MiB",
                f(r.num(1, "/steady/events_per_s")),
                r.num(1, "/steady/mib_per_s").unwrap_or(0.0),
                f(r.num(1, "/latency/per_batch_ms/p50")),
                f(r.num(1, "/latency/per_batch_ms/p99")),
                f(r.num(1, "/latency/per_event_ms/p50")),
                f(r.num(1, "/latency/per_event_ms/p99")),
                f(r.num(1, "/host_peak_rss_mib")),
            ) + &format!(
                "; below capacity ({} events/s): per event p50 {} / p99 {} ms",
                f(r.num(1, "/below_capacity/rate")),
                f(r.num(1, "/below_capacity/latency/per_event_ms/p50")),
                f(r.num(1, "/below_capacity/latency/per_event_ms/p99")),
            ),
            ("ok", 11) => format!(
                "{} events/s steady, {} of `ingest` (two hosts on two cores)",
                f(r.num(11, "/steady/events_per_s")),
                format_ratio(r.num(11, "/over_arm_1")),
            ),
            ("ok", 12) => format!(
                "{} events/s steady from {} to {} stored rows, {} of `ingest`",
                f(r.num(12, "/steady/events_per_s")),
                f(r.num(12, "/table_rows_at_start")),
                f(r.num(12, "/table_rows_at_end")),
                format_ratio(r.num(12, "/over_arm_1")),
            ),
            ("ok", 13) => format!("{} events/s", f(r.num(13, "/events_per_s"))),
            ("ok", 15) => format!(
                "{} events/s steady, {} of `ingest`, beside a candidate in shadow sleeping {} ms per batch: it ran on {} batches ({} events compared, {} errors), {} skipped",
                f(r.num(15, "/steady/events_per_s")),
                format_ratio(r.num(15, "/over_arm_1")),
                f(r.num(15, "/shadow/sleeps_ms_per_batch")),
                f(r.num(15, "/shadow/report/report/batches")),
                f(r.num(15, "/shadow/report/report/events")),
                f(r.num(15, "/shadow/report/report/errors")),
                f(r.num(15, "/shadow/report/report/skipped")),
            ),
            ("ok", 14) => format!(
                "{} events/s steady, {} of `ingest`, beside {} clients: {} API requests/s (dead letters p99 {} ms, aggregates p99 {} ms, metrics p99 {} ms; {} shed)",
                f(r.num(14, "/steady/events_per_s")),
                format_ratio(r.num(14, "/over_arm_1")),
                f(r.num(14, "/api_load/clients")),
                f(r.num(14, "/api_load/requests_per_s")),
                f(r.num(14, "/api_load/by_endpoint/dead_letters/latency_ms/p99")),
                f(r.num(14, "/api_load/by_endpoint/aggregates/latency_ms/p99")),
                f(r.num(14, "/api_load/by_endpoint/metrics/latency_ms/p99")),
                f(r.num(14, "/api_load/shed_503")),
            ),
            ("ok", 10) => format!(
                "{} events/s steady, {} of `ingest`; peak RSS {} MiB",
                f(r.num(10, "/steady/events_per_s")),
                format_ratio(r.num(10, "/over_arm_1")),
                f(r.num(10, "/host_peak_rss_mib")),
            ),
            ("ok", 8) => format!(
                "{} events/s steady, {} of `ingest`; {} stored, {} dropped by bot-filter; peak RSS {} MiB",
                f(r.num(8, "/steady/events_per_s")),
                format_ratio(r.num(8, "/over_arm_1")),
                f(r.num(8, "/stored")),
                f(r.num(8, "/dropped")),
                f(r.num(8, "/host_peak_rss_mib")),
            ),
            ("ok", 2) => format!(
                "{} events/s ({:.1} MiB/s of Kafka payload); the schema before partitions: {} events/s ({} of it); {}",
                f(r.num(2, "/events_per_s")),
                r.num(2, "/mib_per_s").unwrap_or(0.0),
                f(r.num(2, "/by_shape/before/events_per_s")),
                format_ratio(r.num(2, "/final_over_before")),
                r.arm(2)
                    .and_then(|v| v["by_shape"].as_object())
                    .map(|m| m.iter().map(|(k, v)| format!("{k} {}", f(v["events_per_s"].as_f64()))).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
            ),
            ("ok", 3) => format!(
                "WASM/native at batch {}: {}; baseline tier (Winch) {} events/s = {} of Cranelift's; compile: Cranelift {} ms, Winch {} ms",
                r.sizes.batch_size,
                format_ratio(r.num(3, "/wasm_over_native_at_default")),
                f(r.num(3, "/tiers/winch_events_per_s")),
                format_ratio(r.num(3, "/tiers/winch_over_cranelift")),
                f(r.num(3, "/tiers/cranelift_compile_ms")),
                f(r.num(3, "/tiers/winch_load_ms")),
            ),
            ("ok", 4) => format!("{} events/s", f(r.num(4, "/events_per_s"))),
            ("ok", 9) => format!(
                "JavaScript (QuickJS) {} events/s = {} of Rust's {}; see the table below",
                f(r.num(9, "/builds/1/events_per_s")),
                format_ratio(r.num(9, "/builds/1/over_rust")),
                f(r.num(9, "/builds/0/events_per_s")),
            ),
            ("ok", 5) => format!(
                "{} rows, equal; plugin path {:.2} s vs SQL {:.2} s ({}); compute only: WASM {:.2} s, native {:.2} s",
                f(r.num(5, "/rows")),
                r.num(5, "/plugin_path_seconds").unwrap_or(0.0),
                r.num(5, "/sql_seconds").unwrap_or(0.0),
                format_ratio(r.num(5, "/plugin_path_over_sql")),
                r.num(5, "/compute_only/wasm_plugin_seconds").unwrap_or(0.0),
                r.num(5, "/compute_only/native_seconds").unwrap_or(0.0),
            ),
            ("ok", 6) => format!(
                "{}/{} swaps; write→logged p50 {} / p99 {} ms; write→first stored p50 {} / p99 {} ms; lost {}, duplicated {}; {} events/s produced",
                f(r.num(6, "/swaps_logged")),
                f(r.num(6, "/swaps")),
                f(r.num(6, "/write_to_log_ms/p50")),
                f(r.num(6, "/write_to_log_ms/p99")),
                f(r.num(6, "/write_to_first_stored_ms/p50")),
                f(r.num(6, "/write_to_first_stored_ms/p99")),
                f(r.num(6, "/lost")),
                f(r.num(6, "/duplicated")),
                f(r.num(6, "/produce_rate")),
            ),
            ("ok", 7) => r
                .arm(7)
                .and_then(|v| v["sweep"].as_array())
                .map(|sweep| {
                    sweep
                        .iter()
                        .map(|x| format!("{} MiB: {} docs/s", x["bulk_max_mib"], f(x["documents_per_s"].as_f64())))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
            _ => format!("{}: {}", a.status, a.error.as_deref().unwrap_or("").lines().next().unwrap_or("")),
        };
        let _ = writeln!(s, "| `{}` ({}) | {} | {} | {:.0} s |", a.slug, a.arm, a.name, result.replace('|', "\\|"), a.seconds);
    }

    if let Some(swap) = r.arm(6) {
        let _ = writeln!(s, "\n### Hot swap by how the new build's code is had (ms from file write)\n\n| case | write → swap logged p50 / p99 | write → first stored p50 / p99 | host took_ms p50 / p99 | lost | duplicated | peak RSS MiB |\n|---|---|---|---|---|---|---|");
        let cases = &swap["cases"];
        for (label, v) in [
            ("precompiled .cwasm beside the .wasm, no caches", &cases["precompiled"]),
            ("never-seen .wasm, baseline tier (Winch), no caches", &cases["baseline_tier"]),
            ("never-seen .wasm, Cranelift before serving, no caches", &cases["compile_before_serving"]),
            ("default: caches + baseline tier", swap),
        ] {
            let g = |p: &str| f(v.pointer(p).and_then(|x| x.as_f64()));
            let _ = writeln!(
                s,
                "| {label} | {} / {} | {} / {} | {} / {} | {} | {} | {} |",
                g("/write_to_log_ms/p50"),
                g("/write_to_log_ms/p99"),
                g("/write_to_first_stored_ms/p50"),
                g("/write_to_first_stored_ms/p99"),
                g("/host_took_ms/p50"),
                g("/host_took_ms/p99"),
                g("/lost"),
                g("/duplicated"),
                g("/host_peak_rss_mib"),
            );
        }
        let g = |p: &str| f(swap.pointer(p).and_then(|x| x.as_f64()));
        let _ = writeln!(
            s,
            "\nDefault: the one swap to a build never compiled before (swap 1, baseline tier) {} ms; swaps to builds compiled before p50 {} / p99 {} ms.",
            g("/cold_vs_cached/cold_write_to_log_ms/max"),
            g("/cold_vs_cached/cached_write_to_log_ms/p50"),
            g("/cold_vs_cached/cached_write_to_log_ms/p99"),
        );
    }

    if let Some(builds) = r.arm(9).and_then(|v| v["builds"].as_array()) {
        let _ = writeln!(
            s,
            "\n### One transform, three builds (utm; one core)\n\n| build | component MiB | compile ms | precompiled MiB | load ms | events/s at batch {0} | ×Rust | µs/event at {0} | longest batch of {0}, ms | events/s at 512 | memory MiB |\n|---|---|---|---|---|---|---|---|---|---|---|",
            r.sizes.batch_size
        );
        for b in builds {
            let (default, small) = (&b["batches"][0], &b["batches"][1]);
            let _ = writeln!(
                s,
                "| {} | {:.2} | {} | {:.1} | {:.1} | {} | {} | {:.1} | {} | {} | {:.1} |",
                b["what"].as_str().unwrap_or("?"),
                b["component_mib"].as_f64().unwrap_or(0.0),
                f(b["compile_ms"].as_f64()),
                b["precompiled_mib"].as_f64().unwrap_or(0.0),
                b["precompiled_load_ms_median"].as_f64().unwrap_or(0.0),
                f(b["events_per_s"].as_f64()),
                format_ratio(b["over_rust"].as_f64()),
                default["us_per_event"].as_f64().unwrap_or(0.0),
                f(default["longest_batch_ms"].as_f64()),
                f(small["events_per_s"].as_f64()),
                b["memory_high_water_mib"].as_f64().unwrap_or(0.0),
            );
        }
    }

    if let Some(sweep) = r.arm(3).and_then(|v| v["sweep"].as_array()) {
        let _ = writeln!(
            s,
            "\n### Enrich, native vs WASM (events/s, one thread)\n\n| batch size | native | WASM | WASM/native |\n|---|---|---|---|"
        );
        for x in sweep {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                x["batch_size"],
                f(x["native_events_per_s"].as_f64()),
                f(x["wasm_events_per_s"].as_f64()),
                format_ratio(x["wasm_over_native"].as_f64())
            );
        }
    }
    s
}
