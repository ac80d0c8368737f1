//! The bench's input: the load generator's events (same seed for every arm),
//! produced to a fresh topic, or decoded and enriched natively into the rows
//! the store writes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use super::{progress, Bench};
use clickstream::plugin::geoip::GeoIp;
use clickstream::produce::{Generator, GeneratorConfig};

/// A produced topic.
#[derive(Debug, Clone)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Records in it.
    pub records: u64,
    /// Payload bytes in it.
    pub bytes: u64,
    /// Partitions.
    pub partitions: i32,
    /// How fast the producer wrote it (records/s), for the record.
    pub produce_rate: f64,
}

/// Partitions of the bench topics (as `clickstream produce` creates by default).
pub const PARTITIONS: i32 = 4;

/// Event time of the first generated click: a fixed instant, so every run
/// generates the same events.
pub const START_MS: i64 = 1_764_000_000_000;

/// The generator of the bench's events.
pub fn generator(bench: &Bench, events: u64) -> Generator {
    Generator::new(GeneratorConfig {
        events,
        users: bench.sizes.users,
        urls: bench.sizes.urls,
        seed: bench.sizes.seed,
        start_ms: START_MS,
        span_secs: bench.sizes.span_secs,
        bad_fraction: 0.0,
        ..GeneratorConfig::default()
    })
}

/// Produces `events` generated events to a fresh topic at most `rate` per second.
pub async fn produce(bench: &Bench, topic: &str, events: u64, rate: Option<u64>) -> anyhow::Result<clickstream::produce::Summary> {
    clickstream::kafka::ensure_topic(&bench.services.brokers, topic, PARTITIONS)
        .await
        .with_context(|| format!("creating topic {topic} on {} (is the broker up? scripts/services up)", bench.services.brokers))?;
    let progress_bar = indicatif::ProgressBar::hidden();
    let summary =
        clickstream::produce::to_kafka(generator(bench, events), &bench.services.brokers, topic, rate, &BTreeMap::new(), &progress_bar)
            .await
            .with_context(|| format!("producing to {topic}"))?;
    Ok(summary)
}

/// Produces the ingest topic that arms 0 and 1 consume.
pub async fn produce_topic(bench: &Bench) -> anyhow::Result<Topic> {
    let name = format!("bench-{}-ingest", bench.unique);
    progress(format_args!("producing {} events to {name}", bench.sizes.events));
    let summary = produce(bench, &name, bench.sizes.events, None).await?;
    progress(format_args!("produced: {summary}"));
    Ok(Topic {
        name,
        records: summary.records,
        bytes: summary.bytes,
        partitions: PARTITIONS,
        produce_rate: summary.records as f64 / summary.elapsed.as_secs_f64().max(1e-9),
    })
}

/// Deletes a bench topic; a broker that cannot is left alone.
pub async fn delete_topic(bench: &Bench, topic: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: Result<AdminClient<DefaultClientContext>, _> =
        clickstream::kafka::client_config(&bench.services.brokers, &BTreeMap::new()).create();
    if let Ok(admin) = admin {
        let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
        if let Err(e) = admin.delete_topics(&[topic], &options).await {
            progress(format_args!("could not delete topic {topic}: {e}"));
        }
    }
}

/// Decoded clicks of the first `events` generated events (the same events
/// the topic holds), in host types.
pub fn raw_clicks(bench: &Bench, events: u64) -> Vec<clickstream::stages::record::RawEvent> {
    generator(bench, events)
        .map(|r| {
            clickstream::stages::decode::decode(&r.payload, &clickstream::stages::decode::DecodeLimits::UNBOUNDED, 0, || {
                unreachable!("generated events carry ids")
            })
            .expect("generated events decode")
        })
        .collect()
}

/// A row of the `events` table, as the store writes it.
#[derive(Debug, Clone)]
pub struct Row {
    /// Columns in table order (text ones).
    pub event_id: String,
    #[allow(missing_docs)]
    pub user_id: String,
    #[allow(missing_docs)]
    pub ts_ms: i64,
    #[allow(missing_docs)]
    pub url: String,
    #[allow(missing_docs)]
    pub ip: String,
    #[allow(missing_docs)]
    pub user_agent: String,
    #[allow(missing_docs)]
    pub referrer: Option<String>,
    #[allow(missing_docs)]
    pub session_id: Option<String>,
    #[allow(missing_docs)]
    pub country: String,
    #[allow(missing_docs)]
    pub city: String,
    #[allow(missing_docs)]
    pub browser: String,
    #[allow(missing_docs)]
    pub os: String,
    #[allow(missing_docs)]
    pub device: &'static str,
    #[allow(missing_docs)]
    pub plugin_name: String,
    #[allow(missing_docs)]
    pub plugin_version: String,
    #[allow(missing_docs)]
    pub topic: String,
    #[allow(missing_docs)]
    pub partition: i32,
    #[allow(missing_docs)]
    pub offset: i64,
    #[allow(missing_docs)]
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl Row {
    /// The row as the store's COPY encoder takes it.
    pub fn as_copy(&self) -> clickstream::stages::store::CopyRow<'_> {
        clickstream::stages::store::CopyRow {
            event_id: &self.event_id,
            user_id: &self.user_id,
            ts_ms: self.ts_ms,
            url: &self.url,
            ip: &self.ip,
            user_agent: &self.user_agent,
            referrer: self.referrer.as_deref(),
            session_id: self.session_id.as_deref(),
            country: &self.country,
            city: &self.city,
            browser: &self.browser,
            os: &self.os,
            device: self.device,
            plugin_name: &self.plugin_name,
            plugin_version: &self.plugin_version,
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            received_at: self.received_at,
        }
    }
}

/// Native enrich of host clicks: the plugin crate's logic compiled into the
/// host, with the host's GeoIP. Converts types at the edges.
pub fn to_native(click: &clickstream::stages::record::RawEvent) -> clickstream_enrich::RawClick {
    clickstream_enrich::RawClick {
        event_id: click.event_id.clone(),
        user_id: click.user_id.clone(),
        timestamp_ms: click.timestamp_ms,
        url: click.url.clone(),
        ip: click.ip.clone(),
        user_agent: click.user_agent.clone(),
        referrer: click.referrer.clone(),
        session_id: click.session_id.clone(),
    }
}

/// The GeoIP lookup the native enrich calls, as the host serves the WASM one.
pub fn native_geoip(geoip: &GeoIp) -> impl Fn(&str) -> Option<clickstream_enrich::Location> + '_ {
    move |ip: &str| geoip.lookup(ip).map(|l| clickstream_enrich::Location { country: l.country, city: l.city })
}

/// The enrich plugin's settings in the bench pipeline file.
pub fn native_settings() -> clickstream_enrich::Settings {
    clickstream_enrich::Settings::parse(&[("extra_bot_markers".into(), "uptimerobot,pingdom".into())]).expect("valid settings")
}

fn device(d: clickstream_enrich::DeviceClass) -> &'static str {
    use clickstream_enrich::DeviceClass as D;
    match d {
        D::Desktop => "desktop",
        D::Mobile => "mobile",
        D::Tablet => "tablet",
        D::Bot => "bot",
        D::Unknown => "unknown",
    }
}

/// The enriched rows of the first `events` generated events, enriched
/// natively (what the WASM plugin computes, without the WASM), with
/// provenance as if read from `PARTITIONS` partitions.
pub fn enriched_rows(bench: &Bench, geoip: &Arc<GeoIp>, events: u64) -> Vec<Row> {
    let t = Instant::now();
    let settings = native_settings();
    let lookup = native_geoip(geoip);
    let clicks: Vec<clickstream_enrich::RawClick> = raw_clicks(bench, events).iter().map(to_native).collect();
    let now = chrono::Utc::now();
    let mut offsets = [0i64; PARTITIONS as usize];
    let rows: Vec<Row> = clickstream_enrich::enrich_batch(clicks, &settings, lookup)
        .into_iter()
        .map(|r| r.expect("generated good events are never refused"))
        .map(|e| {
            let partition = (e.raw.user_id.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
            let offset = offsets[partition as usize];
            offsets[partition as usize] += 1;
            Row {
                event_id: e.raw.event_id,
                user_id: e.raw.user_id,
                ts_ms: e.raw.timestamp_ms,
                url: e.raw.url,
                ip: e.raw.ip,
                user_agent: e.raw.user_agent,
                referrer: e.raw.referrer,
                session_id: e.raw.session_id,
                country: e.country,
                city: e.city,
                browser: e.browser,
                os: e.os,
                device: device(e.device),
                plugin_name: clickstream_enrich::NAME.into(),
                plugin_version: e.plugin_version,
                topic: "bench".into(),
                partition,
                offset,
                received_at: now,
            }
        })
        .collect();
    progress(format_args!("enriched {} rows natively in {:.1} s", rows.len(), t.elapsed().as_secs_f64()));
    rows
}
