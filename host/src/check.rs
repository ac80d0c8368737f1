//! `clickstream plugin check`: load a component, find which world it
//! implements, and run it on sample events without Kafka — the loop a plugin
//! author runs before dropping a file in place.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{decode, DecodeLimits};
use crate::geoip::GeoIp;
use crate::plugin::aggregate::{AggregateParams, AggregateRun, LoadedAggregate, StoredClick};
use crate::plugin::enrich::{device_name, EnrichRunner, LoadedEnrich, RawClick};
use crate::plugin::{PluginError, PluginLimits, PluginSpec, Slot};

/// Sample clicks used when no events file is given, and as the golden batch
/// a reloaded enrich plugin must pass before it is swapped in.
pub fn golden_batch() -> Vec<RawClick> {
    let click = |id: &str, user: &str, ts: i64, url: &str, ip: &str, ua: &str| RawClick {
        event_id: id.into(),
        user_id: user.into(),
        timestamp_ms: ts,
        url: url.into(),
        ip: ip.into(),
        user_agent: ua.into(),
        referrer: None,
        session_id: None,
    };
    vec![
        click("golden-1", "golden-user-1", 1_764_000_000_000, "https://shop.example/", "81.2.69.142",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
        click("golden-2", "golden-user-1", 1_764_000_012_000, "https://shop.example/cart", "81.2.69.142",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
        click("golden-3", "golden-user-2", 1_764_000_005_000, "https://shop.example/", "2001:4860:4860::8888",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1"),
        click("golden-4", "golden-bot", 1_764_000_007_000, "https://shop.example/robots.txt", "66.249.66.1",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
        click("golden-5", "golden-user-3", 1_764_000_009_000, "https://shop.example/", "not-an-ip", ""),
    ]
}

/// Reads clicks from an NDJSON file, one event per line in the pipeline's
/// event format. A bad line is an error naming the line.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<RawClick>> {
    use anyhow::Context;
    let file = std::fs::File::open(path).with_context(|| format!("opening events file {}", path.display()))?;
    let mut clicks = Vec::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let click = decode(line.as_bytes(), &DecodeLimits::UNBOUNDED, 0, || format!("line-{}", n + 1))
            .with_context(|| format!("{}:{}: not a valid event", path.display(), n + 1))?;
        clicks.push(click);
    }
    Ok(clicks)
}

/// What `plugin check` found.
pub enum CheckReport {
    /// An enricher, with its output for each sample.
    Enricher {
        /// Name and version.
        name: String,
        /// Version.
        version: String,
        /// One line per input.
        lines: Vec<String>,
    },
    /// An aggregator, with the rows for the samples.
    Aggregator {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// One line per row.
        lines: Vec<String>,
    },
}

/// Loads `file` as an enricher, or failing that as an aggregator, and runs it
/// on `events`. An error says why it is neither.
pub fn check(file: &Path, settings: Vec<(String, String)>, limits: PluginLimits, geoip: Option<Arc<GeoIp>>, events: Vec<RawClick>) -> Result<CheckReport, PluginError> {
    let spec = |slot: &str| PluginSpec {
        slot: slot.into(),
        path: PathBuf::from(file),
        settings: settings.clone(),
        limits: limits.clone(),
    };
    let as_enricher = LoadedEnrich::load(spec("enrich"), geoip);
    let loaded = match as_enricher {
        Ok(loaded) => loaded,
        Err(PluginError::WrongWorld { .. }) => return check_aggregator(spec("aggregate"), events),
        Err(other) => return Err(other),
    };
    let (name, version) = (loaded.info.name.clone(), loaded.info.version.clone());
    let mut runner = EnrichRunner::new(Arc::new(Slot::new(loaded)));
    let (_, results) = runner.enrich(&events)?;
    let lines = events
        .iter()
        .zip(results)
        .map(|(input, result)| match result {
            Ok(c) => format!(
                "{}  ok     country={} city={} browser={} os={} device={} version={}",
                input.event_id, c.country, c.city, c.browser, c.os, device_name(c.device), c.plugin_version
            ),
            Err(e) => format!(
                "{}  error  {}{}",
                input.event_id,
                e.field.map(|f| format!("{f}: ")).unwrap_or_default(),
                e.reason
            ),
        })
        .collect();
    Ok(CheckReport::Enricher { name, version, lines })
}

/// Sample clicks as an aggregator sees them (country unknown), in the
/// (user, time, event id) order it requires.
pub fn as_stored_clicks(events: Vec<RawClick>) -> Vec<StoredClick> {
    let mut clicks: Vec<StoredClick> = events
        .into_iter()
        .map(|c| StoredClick {
            event_id: c.event_id,
            user_id: c.user_id,
            timestamp_ms: c.timestamp_ms,
            url: c.url,
            country: "unknown".into(),
        })
        .collect();
    clicks.sort_by(|a, b| (&a.user_id, a.timestamp_ms, &a.event_id).cmp(&(&b.user_id, b.timestamp_ms, &b.event_id)));
    clicks
}

/// The default metric parameters (60 s windows, 30 min session timeout).
pub const SAMPLE_PARAMS: AggregateParams = AggregateParams {
    window_ms: 60_000,
    session_timeout_ms: 30 * 60_000,
    keep_query: false,
};

fn check_aggregator(spec: PluginSpec, events: Vec<RawClick>) -> Result<CheckReport, PluginError> {
    let loaded = LoadedAggregate::load(spec)?;
    let (name, version) = (loaded.info.name.clone(), loaded.info.version.clone());
    let clicks = as_stored_clicks(events);
    let params = SAMPLE_PARAMS;
    let from = clicks.iter().map(|c| c.timestamp_ms).min().unwrap_or(0).div_euclid(60_000) * 60_000;
    let to = (clicks.iter().map(|c| c.timestamp_ms).max().unwrap_or(0).div_euclid(60_000) + 1) * 60_000;
    let mut run = AggregateRun::start(&Slot::new(loaded), params, from, to)?;
    run.push(&clicks)?;
    let lines = run
        .finish()?
        .into_iter()
        .map(|r| {
            format!(
                "window={} url={} country={} clicks={} unique_users={} time_spent_total_ms={} time_spent_samples={}",
                r.window_start_ms, r.url, r.country, r.clicks, r.unique_users, r.time_spent_total_ms, r.time_spent_samples
            )
        })
        .collect();
    Ok(CheckReport::Aggregator { name, version, lines })
}
