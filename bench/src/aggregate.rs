//! `aggregation`, aggregation: the stored events aggregated through the aggregate
//! plugin (the host's own path: `Aggregator::aggregate_windows`, which
//! streams each run of windows from PostgreSQL through the plugin and writes
//! the rows to `aggregates`; no indexing) against one PostgreSQL query with
//! window functions computing the same metrics from the definitions in
//! docs/aggregates.md. The row sets must be equal, or the arm fails.
//!
//! Also timed on the same sorted events held in memory: the plugin alone
//! (`AggregateRun`) and the same logic compiled natively (`WindowRun`).
//!
//! Long because the arm is three measurements of one result (the plugin
//! path, SQL, Spark) and the row-by-row comparison that makes the timings
//! mean something.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::Row as _;

use super::stats::ratio;
use super::{progress, Bench, State};
use clickstream::plugin::aggregate::{AggregateRun, LoadedAggregate};
use clickstream::plugin::Slot;
use clickstream::stages::aggregate::Aggregator;
use clickstream::stages::index::AggregateDoc;
use clickstream::stages::record::{AggregateParams, StoredEvent};

/// One aggregate row, as compared.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AggRow {
    /// Window start, epoch ms.
    pub window_start_ms: i64,
    /// Normalised URL.
    pub url: String,
    /// Country.
    pub country: String,
    /// Clicks.
    pub clicks: i64,
    /// Distinct users.
    pub unique_users: i64,
    /// Sum of time-spent samples, ms.
    pub time_spent_total_ms: i64,
    /// Number of samples.
    pub time_spent_samples: i64,
}

/// How two row sets differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// Rows present and equal in both.
    pub equal: usize,
    /// Keys only in the first set.
    pub only_left: usize,
    /// Keys only in the second set.
    pub only_right: usize,
    /// Keys in both with different figures.
    pub different: usize,
    /// Up to five differences, for the error message.
    pub examples: Vec<String>,
}

impl Comparison {
    /// Whether the sets are equal.
    pub fn matches(&self) -> bool {
        self.only_left == 0 && self.only_right == 0 && self.different == 0
    }
}

/// Compares two row sets keyed by (window, url, country); order and
/// duplicates of identical rows do not matter, a key twice with different
/// figures does (it counts as different).
pub fn compare(left: &[AggRow], right: &[AggRow]) -> Comparison {
    let key = |r: &AggRow| (r.window_start_ms, r.url.clone(), r.country.clone());
    let mut l: BTreeMap<_, Vec<&AggRow>> = BTreeMap::new();
    for r in left {
        l.entry(key(r)).or_default().push(r);
    }
    let mut rmap: BTreeMap<_, Vec<&AggRow>> = BTreeMap::new();
    for r in right {
        rmap.entry(key(r)).or_default().push(r);
    }
    let mut c = Comparison::default();
    let example = |c: &mut Comparison, s: String| {
        if c.examples.len() < 5 {
            c.examples.push(s);
        }
    };
    for (k, ls) in &l {
        match rmap.get(k) {
            None => {
                c.only_left += 1;
                example(&mut c, format!("only in the plugin's rows: {:?}", ls[0]));
            }
            Some(rs) => {
                let mut ls = ls.clone();
                let mut rs = rs.clone();
                ls.sort();
                ls.dedup();
                rs.sort();
                rs.dedup();
                if ls == rs && ls.len() == 1 {
                    c.equal += 1;
                } else {
                    c.different += 1;
                    example(&mut c, format!("{k:?}: plugin {ls:?} vs SQL {rs:?}"));
                }
            }
        }
    }
    for (k, rs) in &rmap {
        if !l.contains_key(k) {
            c.only_right += 1;
            example(&mut c, format!("only in SQL's rows: {:?}", rs[0]));
        }
    }
    c
}

/// The metrics of docs/aggregates.md in one query: `lead()` over each user's events by
/// (time, event id) gives the next event; its gap is a time-spent sample
/// when at most the session timeout. URL normalisation as the plugin's
/// `normalize_url` (keep_query = false): trim, cut at `#` then `?`, lower-case
/// scheme and host, an empty path becomes `/`.
pub const SQL: &str = "
WITH e AS (
    SELECT user_id, ts_ms, url, country,
           lead(ts_ms) OVER (PARTITION BY user_id ORDER BY ts_ms, event_id) AS next_ts
    FROM events
), n AS (
    SELECT ts_ms - ((ts_ms % $1) + $1) % $1 AS window_start_ms,
           CASE WHEN p = 0 THEN base
                ELSE lower(left(base, p - 1)) || '://' || lower(split_part(rest, '/', 1))
                     || CASE WHEN strpos(rest, '/') > 0 THEN substr(rest, strpos(rest, '/')) ELSE '/' END
           END AS url,
           CASE WHEN country = '' THEN 'unknown' ELSE country END AS country,
           user_id,
           CASE WHEN next_ts - ts_ms <= $2 THEN next_ts - ts_ms END AS spent
    FROM e
    CROSS JOIN LATERAL (SELECT split_part(split_part(btrim(e.url), '#', 1), '?', 1) AS base) b
    CROSS JOIN LATERAL (SELECT strpos(b.base, '://') AS p) q
    CROSS JOIN LATERAL (SELECT substr(b.base, q.p + 3) AS rest) r
)
SELECT window_start_ms, url, country, count(*)::bigint AS clicks, count(DISTINCT user_id)::bigint AS unique_users,
       coalesce(sum(spent), 0)::bigint AS time_spent_total_ms, count(spent)::bigint AS time_spent_samples
FROM n
GROUP BY window_start_ms, url, country";

fn agg_row(r: &sqlx::postgres::PgRow) -> AggRow {
    AggRow {
        window_start_ms: r.get(0),
        url: r.get(1),
        country: r.get(2),
        clicks: r.get(3),
        unique_users: r.get(4),
        time_spent_total_ms: r.get(5),
        time_spent_samples: r.get(6),
    }
}

fn from_plugin(rows: Vec<clickstream::stages::record::AggregateRow>) -> Vec<AggRow> {
    rows.into_iter()
        .map(|r| AggRow {
            window_start_ms: r.window_start_ms,
            url: r.url,
            country: r.country,
            clicks: r.clicks as i64,
            unique_users: r.unique_users as i64,
            time_spent_total_ms: r.time_spent_total_ms as i64,
            time_spent_samples: r.time_spent_samples as i64,
        })
        .collect()
}

/// Runs `aggregation`.
pub async fn run(bench: &Bench, state: &mut State) -> anyhow::Result<Value> {
    let (db, source) = match &state.ingest_db {
        Some(db) => (db.clone(), "the events `ingest` stored through the pipeline"),
        None => (copy_events(bench).await?, "events enriched natively and copied in (`ingest` did not run)"),
    };
    let pipeline = bench.write_pipeline("aggregate", "unused", &db, &bench.plugin("enrich")?)?;
    let config = bench.load_pipeline(&pipeline)?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect_with(super::ingest::options(&db)?).await?;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await?;
    let window_ms = config.aggregate.window_secs as i64 * 1000;
    let timeout_ms = config.aggregate.session_timeout_secs as i64 * 1000;
    let params = AggregateParams { window_ms, session_timeout_ms: timeout_ms, keep_query: config.aggregate.keep_query };
    let slot = Arc::new(Slot::new(LoadedAggregate::load(config.aggregate_spec())?));

    // 1. The host's path: windows in runs of up to 30, plugin, rows written.
    sqlx::query("DELETE FROM aggregates").execute(&pool).await?;
    let windows: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT ts_ms - ((ts_ms % $1) + $1) % $1 AS w FROM events ORDER BY w")
        .bind(window_ms)
        .fetch_all(&pool)
        .await?;
    let aggregator = Aggregator::new(
        pool.clone(),
        slot.clone(),
        tokio::sync::watch::channel(config.aggregate.clone()).1,
        config.source.topics.clone(),
        Arc::new(clickstream::stats::Stats::default()),
    );
    let t = Instant::now();
    let mut written = 0u64;
    for run in clickstream::stages::aggregate::contiguous_runs(&windows, window_ms, 30) {
        written += aggregator.aggregate_windows(&run, None).await?.unwrap_or(0);
    }
    let plugin_path_s = t.elapsed().as_secs_f64();
    let plugin_rows: Vec<AggRow> =
        sqlx::query("SELECT window_start_ms, url, country, clicks, unique_users, time_spent_total_ms, time_spent_samples FROM aggregates")
            .fetch_all(&pool)
            .await?
            .iter()
            .map(agg_row)
            .collect();
    progress(format_args!("  plugin path: {} windows → {written} rows in {plugin_path_s:.2} s", windows.len()));

    // 2. One SQL query.
    let t = Instant::now();
    let sql_rows: Vec<AggRow> = sqlx::query(SQL).bind(window_ms).bind(timeout_ms).fetch_all(&pool).await?.iter().map(agg_row).collect();
    let sql_s = t.elapsed().as_secs_f64();
    progress(format_args!("  SQL: {} rows in {sql_s:.2} s", sql_rows.len()));
    let host_vs_sql = compare(&plugin_rows, &sql_rows);

    // 3. Compute only: every event once, sorted, in memory; the plugin and the native logic.
    let (from, to) = (windows.first().copied().unwrap_or(0), windows.last().copied().unwrap_or(0) + window_ms);
    let clicks: Vec<StoredEvent> =
        sqlx::query("SELECT event_id, user_id, ts_ms, url, country FROM events ORDER BY user_id, ts_ms, event_id")
            .fetch(&pool)
            .map_ok(|r| StoredEvent { event_id: r.get(0), user_id: r.get(1), timestamp_ms: r.get(2), url: r.get(3), country: r.get(4) })
            .try_collect()
            .await?;
    let batch = config.aggregate.batch_size;
    let (wasm_rows, wasm_s) = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        let t = Instant::now();
        let mut run = AggregateRun::start(&slot, params, from, to)?;
        for chunk in clicks.chunks(batch) {
            run.push(chunk)?;
        }
        let rows = run.finish()?;
        Ok((from_plugin(rows), t.elapsed().as_secs_f64()))
    })?;
    let native_params = clickstream_aggregate::AggregateParams { window_ms, session_timeout_ms: timeout_ms, keep_query: params.keep_query };
    let native_clicks: Vec<clickstream_aggregate::StoredClick> = clicks
        .iter()
        .map(|c| clickstream_aggregate::StoredClick {
            event_id: c.event_id.clone(),
            user_id: c.user_id.clone(),
            timestamp_ms: c.timestamp_ms,
            url: c.url.clone(),
            country: c.country.clone(),
        })
        .collect();
    let t = Instant::now();
    let mut native = clickstream_aggregate::WindowRun::new(native_params, from, to);
    for chunk in native_clicks.chunks(batch) {
        native.push(chunk.to_vec()).map_err(|e| anyhow::anyhow!("native aggregate refused its input: {}", e.0))?;
    }
    let native_rows: Vec<AggRow> = native
        .finish()
        .into_iter()
        .map(|r| AggRow {
            window_start_ms: r.window_start_ms,
            url: r.url,
            country: r.country,
            clicks: r.clicks as i64,
            unique_users: r.unique_users as i64,
            time_spent_total_ms: r.time_spent_total_ms as i64,
            time_spent_samples: r.time_spent_samples as i64,
        })
        .collect();
    let native_s = t.elapsed().as_secs_f64();
    let wasm_vs_sql = compare(&wasm_rows, &sql_rows);
    let native_vs_sql = compare(&native_rows, &sql_rows);

    // 4. Spark local mode, when pyspark is installed.
    let spark = match run_spark(bench, &db, &sql_rows, window_ms, timeout_ms).await {
        Ok(v) => v,
        Err(e) => {
            progress(format_args!("  Spark FAILED: {e:#}"));
            json!({ "status": "failed", "error": format!("{e:#}") })
        }
    };
    anyhow::ensure!(spark["status"] != "failed", "Spark comparison failed: {}", spark["error"]);

    // Documents for `indexing`.
    let plugin = slot.current().info.clone();
    state.aggregates = plugin_rows
        .iter()
        .map(|r| AggregateDoc {
            window_start_ms: r.window_start_ms,
            window_end_ms: r.window_start_ms + window_ms,
            url: r.url.clone(),
            country: r.country.clone(),
            clicks: r.clicks as u64,
            unique_users: r.unique_users as u64,
            time_spent_total_ms: r.time_spent_total_ms as u64,
            time_spent_samples: r.time_spent_samples as u64,
            avg_time_spent_s: AggregateDoc::average_time_spent_s(r.time_spent_total_ms as u64, r.time_spent_samples as u64),
            is_final: true,
            plugin_name: plugin.name.clone(),
            plugin_version: plugin.version.clone(),
            aggregated_at_ms: chrono::Utc::now().timestamp_millis(),
        })
        .collect();
    pool.close().await;

    for (what, c) in
        [("the host's plugin path", &host_vs_sql), ("the plugin on all events", &wasm_vs_sql), ("the native logic", &native_vs_sql)]
    {
        anyhow::ensure!(
            c.matches(),
            "{what} and the SQL query disagree: {} equal, {} only in plugin, {} only in SQL, {} different; e.g. {}",
            c.equal,
            c.only_left,
            c.only_right,
            c.different,
            c.examples.join("; ")
        );
    }
    progress(format_args!("  rows match: {} (plugin path {:.2}× SQL time)", sql_rows.len(), plugin_path_s / sql_s));
    Ok(json!({
        "events": events,
        "source": source,
        "windows": windows.len(),
        "rows": sql_rows.len(),
        "match": { "host_path_vs_sql": host_vs_sql, "plugin_all_events_vs_sql": wasm_vs_sql, "native_vs_sql": native_vs_sql },
        "plugin_path_seconds": plugin_path_s,
        "sql_seconds": sql_s,
        "plugin_path_over_sql": ratio(Some(plugin_path_s), Some(sql_s)),
        "compute_only": {
            "wasm_plugin_seconds": wasm_s,
            "native_seconds": native_s,
            "wasm_over_native": ratio(Some(wasm_s), Some(native_s)),
            "measures": "all events sorted in memory, pushed in batches of aggregate.batch_size (one range); no database",
        },
        "spark": spark,
        "plugin_path_over_spark": ratio(Some(plugin_path_s), spark["aggregate_seconds"].as_f64()),
        "measures": "plugin path = Aggregator::aggregate_windows over every window in runs of 30 (read events + lookahead from PostgreSQL, plugin, delete/insert rows in aggregates, commit), no indexing; SQL = one query with lead() over (user_id ORDER BY ts_ms, event_id), rows fetched to the client",
    }))
}

/// The same metrics in Spark local mode (`bench/spark/aggregate.py`) over
/// the same rows, exported to CSV; start-up reported separately. Not run
/// (with the reason) when pyspark does not import.
async fn run_spark(bench: &Bench, db: &str, sql_rows: &[AggRow], window_ms: i64, timeout_ms: i64) -> anyhow::Result<Value> {
    use sqlx::Connection;
    use std::io::Write;
    let importable = std::process::Command::new("python3")
        .args(["-c", "import pyspark"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !importable {
        return Ok(json!({ "status": "not run", "reason": "pyspark does not import (pip install pyspark; Java 17 is needed)" }));
    }
    let script = bench.root.join("bench/spark/aggregate.py");
    anyhow::ensure!(script.exists(), "{} is missing", script.display());
    let dir = bench.work.join("spark");
    std::fs::create_dir_all(&dir)?;
    let (events_csv, out_csv) = (dir.join("events.csv"), dir.join("rows.csv"));
    let t = Instant::now();
    let mut conn = sqlx::PgConnection::connect(db).await?;
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&events_csv)?);
        let mut stream =
            conn.copy_out_raw("COPY (SELECT event_id, user_id, ts_ms, url, country FROM events) TO STDOUT (FORMAT csv)").await?;
        while let Some(chunk) = stream.try_next().await? {
            file.write_all(&chunk)?;
        }
        file.flush()?;
    }
    conn.close().await?;
    let export_s = t.elapsed().as_secs_f64();
    progress("  Spark local mode (start-up, then the aggregation)");
    let t = Instant::now();
    let output = tokio::process::Command::new("python3")
        .arg(&script)
        .arg(&events_csv)
        .arg(&out_csv)
        .arg(window_ms.to_string())
        .arg(timeout_ms.to_string())
        .output()
        .await?;
    let wall_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        output.status.success(),
        "Spark run failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).lines().rev().take(10).collect::<Vec<_>>().join(" | ")
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let timings: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}"))?;
    let rows: Vec<AggRow> =
        std::fs::read_to_string(&out_csv)?.lines().filter(|l| !l.is_empty()).map(parse_csv_row).collect::<anyhow::Result<_>>()?;
    let c = compare(&rows, sql_rows);
    anyhow::ensure!(
        c.matches(),
        "Spark and the SQL query disagree: {} equal, {} only in Spark, {} only in SQL, {} different; e.g. {}",
        c.equal,
        c.only_left,
        c.only_right,
        c.different,
        c.examples.join("; ")
    );
    let _ = std::fs::remove_file(&events_csv);
    Ok(json!({
        "status": "ok",
        "export_csv_seconds": export_s,
        "startup_seconds": timings["startup_seconds"],
        "aggregate_seconds": timings["aggregate_seconds"],
        "wall_seconds": wall_s,
        "match_vs_sql": c,
        "measures": "local[*] on this machine; aggregate = read the CSV, lead() over user, group, collect to the driver; start-up = SparkSession creation (JVM start)",
    }))
}

/// One line of the Spark CSV output (fields may be quoted).
fn parse_csv_row(line: &str) -> anyhow::Result<AggRow> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => fields.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    fields.push(field);
    anyhow::ensure!(fields.len() == 7, "bad Spark output line {line:?}");
    let n = |i: usize| fields[i].parse::<i64>().map_err(|e| anyhow::anyhow!("bad number in {line:?}: {e}"));
    Ok(AggRow {
        window_start_ms: n(0)?,
        url: fields[1].clone(),
        country: fields[2].clone(),
        clicks: n(3)?,
        unique_users: n(4)?,
        time_spent_total_ms: n(5)?,
        time_spent_samples: n(6)?,
    })
}

/// A fresh database holding the natively enriched events, for when `ingest` did not run.
async fn copy_events(bench: &Bench) -> anyhow::Result<String> {
    use sqlx::Connection;
    let geoip = bench.geoip()?;
    let rows = tokio::task::block_in_place(|| super::data::enriched_rows(bench, &geoip, bench.sizes.events));
    let (url, store) = super::copy::fresh_store(bench, "aggregate").await?;
    store.pool().close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    super::copy::copy_rows(bench, &mut conn, "events", &rows).await?;
    conn.close().await?;
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(w: i64, url: &str, clicks: i64) -> AggRow {
        AggRow {
            window_start_ms: w,
            url: url.into(),
            country: "DE".into(),
            clicks,
            unique_users: 1,
            time_spent_total_ms: 10,
            time_spent_samples: 1,
        }
    }

    #[test]
    fn equal_sets_match_in_any_order() {
        let a = vec![row(0, "/a", 1), row(60_000, "/b", 2)];
        let b = vec![row(60_000, "/b", 2), row(0, "/a", 1)];
        let c = compare(&a, &b);
        assert!(c.matches(), "{c:?}");
        assert_eq!(c.equal, 2);
    }

    #[test]
    fn missing_extra_and_different_rows_are_counted() {
        let a = vec![row(0, "/a", 1), row(0, "/b", 2), row(0, "/c", 3)];
        let b = vec![row(0, "/a", 1), row(0, "/b", 5), row(0, "/d", 3)];
        let c = compare(&a, &b);
        assert!(!c.matches());
        assert_eq!((c.equal, c.different, c.only_left, c.only_right), (1, 1, 1, 1));
        assert_eq!(c.examples.len(), 3);
        // A key twice with different figures is a difference, not a match.
        let c = compare(&[row(0, "/a", 1), row(0, "/a", 2)], &[row(0, "/a", 1)]);
        assert_eq!(c.different, 1);
    }

    #[test]
    fn spark_csv_lines_parse_with_quotes() {
        let r = parse_csv_row("60000,\"https://x/a,b\",DE,3,2,1500,1").unwrap();
        assert_eq!((r.window_start_ms, r.url.as_str(), r.clicks, r.time_spent_samples), (60000, "https://x/a,b", 3, 1));
        assert!(parse_csv_row("1,2").is_err());
    }

    #[test]
    fn window_runs_split_at_gaps_and_length() {
        assert_eq!(clickstream::stages::aggregate::contiguous_runs(&[0, 60, 120, 300], 60, 2), vec![vec![0, 60], vec![120], vec![300]]);
    }
}
