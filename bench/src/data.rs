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
    generator_seeded(bench, events, bench.sizes.seed)
}

/// The bench's generator with another seed: other event ids, the same
/// users, URLs and hour.
pub fn generator_seeded(bench: &Bench, events: u64, seed: u64) -> Generator {
    Generator::new(GeneratorConfig {
        events,
        users: bench.sizes.users,
        urls: bench.sizes.urls,
        seed,
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

/// Produces the ingest topic that `broker` and `ingest` consume.
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
    raw_clicks_of(generator(bench, events))
}

/// The clicks of a generator's records.
fn raw_clicks_of(generator: Generator) -> Vec<clickstream::stages::record::RawEvent> {
    generator
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
    /// The chain that produced it, e.g. `enrich@0.2.0`.
    pub chain: String,
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
            attributes: std::borrow::Cow::Borrowed("{}"),
            chain: std::borrow::Cow::Borrowed(&self.chain),
        }
    }
}

/// Native enrich of host clicks: the plugin crate's logic compiled into the
/// host, with the host's GeoIP. Converts types at the edges.
pub fn to_native(click: &clickstream::stages::record::RawEvent) -> clickstream_enrich::Event {
    clickstream_enrich::Event {
        ip: click.ip.clone(),
        user_agent: click.user_agent.clone(),
        referrer: click.referrer.clone(),
        session_id: click.session_id.clone(),
        ..clickstream_enrich::Event::new(click.event_id.clone(), click.user_id.clone(), click.timestamp_ms, click.url.clone())
    }
}

/// The GeoIP batch lookup the native enrich calls, as the host serves the
/// WASM one.
pub fn native_geoip(geoip: &GeoIp) -> impl Fn(&[String]) -> Vec<Option<clickstream_enrich::Location>> + '_ {
    move |ips: &[String]| {
        ips.iter().map(|ip| geoip.lookup(ip).map(|l| clickstream_enrich::Location { country: l.country, city: l.city })).collect()
    }
}

/// The enrich plugin's settings in the bench pipeline file.
pub fn native_settings() -> clickstream_enrich::Settings {
    clickstream_enrich::Settings::parse(&[("extra_bot_markers".into(), "uptimerobot,pingdom".into())]).expect("valid settings")
}

/// A device class as stored.
pub fn device(d: Option<clickstream_enrich::DeviceClass>) -> &'static str {
    use clickstream_enrich::DeviceClass as D;
    match d {
        Some(D::Desktop) => "desktop",
        Some(D::Mobile) => "mobile",
        Some(D::Tablet) => "tablet",
        Some(D::Bot) => "bot",
        Some(D::Unknown) | None => "unknown",
    }
}

/// The row the store writes for an event the native enrich kept.
pub fn row_of(e: clickstream_enrich::Event, topic: &str, partition: i32, offset: i64, received_at: chrono::DateTime<chrono::Utc>) -> Row {
    let unknown = |v: Option<String>| v.unwrap_or_else(|| "unknown".into());
    Row {
        device: device(e.device),
        event_id: e.event_id,
        user_id: e.user_id,
        ts_ms: e.timestamp_ms,
        url: e.url,
        ip: e.ip,
        user_agent: e.user_agent,
        referrer: e.referrer,
        session_id: e.session_id,
        country: unknown(e.country),
        city: unknown(e.city),
        browser: unknown(e.browser),
        os: unknown(e.os),
        plugin_name: clickstream_enrich::NAME.into(),
        plugin_version: clickstream_enrich::VERSION.into(),
        topic: topic.into(),
        partition,
        offset,
        received_at,
        chain: format!("{}@{}", clickstream_enrich::NAME, clickstream_enrich::VERSION),
    }
}

/// The enriched rows of the first `events` generated events, enriched
/// natively (what the WASM plugin computes, without the WASM), with
/// provenance as if read from `PARTITIONS` partitions.
pub fn enriched_rows(bench: &Bench, geoip: &Arc<GeoIp>, events: u64) -> Vec<Row> {
    enriched_rows_of(generator(bench, events), geoip, "bench")
}

/// The enriched rows of a generator's events, as read from `topic`.
pub fn enriched_rows_of(generator: Generator, geoip: &Arc<GeoIp>, topic: &str) -> Vec<Row> {
    let t = Instant::now();
    let settings = native_settings();
    let lookup = native_geoip(geoip);
    let clicks: Vec<clickstream_enrich::Event> = raw_clicks_of(generator).iter().map(to_native).collect();
    let now = chrono::Utc::now();
    let mut offsets = [0i64; PARTITIONS as usize];
    let rows: Vec<Row> = clickstream_enrich::Enricher::new(settings)
        .transform_batch(clicks, lookup)
        .into_iter()
        .map(|outcome| match outcome {
            clickstream_enrich::Outcome::Keep(e) => e,
            other => panic!("generated good events are always kept: {other:?}"),
        })
        .map(|e| {
            let partition = (e.user_id.bytes().map(u32::from).sum::<u32>() % PARTITIONS as u32) as i32;
            let offset = offsets[partition as usize];
            offsets[partition as usize] += 1;
            row_of(e, topic, partition, offset, now)
        })
        .collect();
    progress(format_args!("enriched {} rows natively in {:.1} s", rows.len(), t.elapsed().as_secs_f64()));
    rows
}
