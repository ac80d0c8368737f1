//! What flows between the stages, in the host's own types. The plugin
//! contract's generated types stay in `plugin/` and are converted at its
//! boundary, so a new contract version changes one module, not every stage.

mod batch;
pub mod limits;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use batch::{part_of, Decoded, WriteBatch};

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Kafka topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// When the host received it.
    pub received_at: DateTime<Utc>,
}

impl Provenance {
    /// What identifies the record: its topic, partition and offset.
    pub fn key(&self) -> (&str, i32, i64) {
        (&self.topic, self.partition, self.offset)
    }
}

/// One record as read from Kafka.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Where it came from.
    pub provenance: Provenance,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its bytes (empty for a tombstone).
    pub payload: Vec<u8>,
}

impl Consumed {
    /// The event id of a record that carries none: stable across
    /// redeliveries because offsets are.
    pub fn derived_event_id(&self) -> String {
        let p = &self.provenance;
        format!("{}-{}-{}", p.topic, p.partition, p.offset)
    }
}

/// A click as decoded from a record, before enrichment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// The record's `event_id`, or one derived from its provenance.
    pub event_id: String,
    /// Who clicked.
    pub user_id: String,
    /// Event time, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The page viewed, as sent.
    pub url: String,
    /// Client address as sent, possibly invalid; empty when absent.
    pub ip: String,
    /// The client's `User-Agent`, possibly empty.
    pub user_agent: String,
    /// The referring page.
    pub referrer: Option<String>,
    /// The tracker's session id.
    pub session_id: Option<String>,
}

/// Class of device a user agent belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// A desktop or laptop computer.
    Desktop,
    /// A phone.
    Mobile,
    /// A tablet.
    Tablet,
    /// A crawler, monitor or other automated client.
    Bot,
    /// Not classified.
    Unknown,
}

impl Device {
    /// The name it is stored and indexed under.
    pub fn as_str(self) -> &'static str {
        match self {
            Device::Desktop => "desktop",
            Device::Mobile => "mobile",
            Device::Tablet => "tablet",
            Device::Bot => "bot",
            Device::Unknown => "unknown",
        }
    }
}

/// A user attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Str(String),
    /// A whole number.
    Int(i64),
    /// A floating-point number (finite: JSON has no NaN).
    Float(f64),
    /// True or false.
    Bool(bool),
}

/// A named value a transform attached to an event; stored in the
/// `attributes` JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// Unique within the event.
    pub key: String,
    /// The value.
    pub value: Value,
}

/// What transforms derived from a click; unset until one sets it, stored
/// as `unknown` when none did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enrichment {
    /// ISO country code.
    pub country: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Browser family.
    pub browser: Option<String>,
    /// Operating system.
    pub os: Option<String>,
    /// Device class.
    pub device: Option<Device>,
}

/// A click as it moves through the transform chain.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformEvent {
    /// The click (a transform may normalise its fields; the host restores
    /// the event id, user id and timestamp it decoded).
    pub raw: RawEvent,
    /// What transforms derived so far.
    pub enrichment: Enrichment,
    /// Attributes transforms attached so far.
    pub attributes: Vec<Attribute>,
}

impl From<RawEvent> for TransformEvent {
    fn from(raw: RawEvent) -> Self {
        TransformEvent { raw, enrichment: Enrichment::default(), attributes: Vec::new() }
    }
}

/// A transform's reason for refusing a click.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// Why, for a human.
    pub reason: String,
}

/// What a transform did with one event.
#[derive(Debug, Clone, PartialEq)]
// Keep is the common case: boxing it would cost an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    /// Pass it on, as returned.
    Keep(TransformEvent),
    /// Filtered out on purpose: not stored, counted with the reason.
    Drop(String),
    /// Refused as invalid: dead-lettered with the reason.
    Reject(Refusal),
}

/// One transform of the chain that produced an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The transform's name in pipeline.toml.
    pub name: String,
    /// The version the plugin reported.
    pub version: String,
}

/// The chain that produced an event, as stored: `enrich@0.2.0,bot-filter@1.0.0`.
pub fn chain_text(chain: &[Link]) -> String {
    chain.iter().map(|l| format!("{}@{}", l.name, l.version)).collect::<Vec<_>>().join(",")
}

/// The attributes as a JSON object (`{}` when there are none).
pub fn attributes_json(attributes: &[Attribute]) -> std::borrow::Cow<'static, str> {
    if attributes.is_empty() {
        return std::borrow::Cow::Borrowed("{}");
    }
    let object: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|a| {
            let value = match &a.value {
                Value::Str(s) => serde_json::Value::from(s.as_str()),
                Value::Int(i) => serde_json::Value::from(*i),
                // Checked finite before it got here; JSON has no NaN.
                Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, serde_json::Value::Number),
                Value::Bool(b) => serde_json::Value::from(*b),
            };
            (a.key.clone(), value)
        })
        .collect();
    std::borrow::Cow::Owned(serde_json::Value::Object(object).to_string())
}

/// A record a transform dropped: counted per transform and partition, in the
/// transaction that advances its offset, so consumed = stored +
/// dead-lettered + dropped reconciles from PostgreSQL.
#[derive(Debug, Clone)]
pub struct Dropped {
    /// Where it came from.
    pub provenance: Provenance,
    /// The transform that dropped it.
    pub transform: String,
    /// Why.
    pub reason: String,
}

/// An event ready to store: what came out of the end of the chain.
#[derive(Debug, Clone)]
pub struct Event {
    /// The click, with the identity the host decoded.
    pub raw: RawEvent,
    /// What the transforms derived.
    pub enrichment: Enrichment,
    /// What the transforms attached.
    pub attributes: Vec<Attribute>,
    /// The transforms it went through, in order.
    pub chain: Arc<[Link]>,
    /// Where it came from.
    pub provenance: Provenance,
    /// The record's key, kept so a refusal by PostgreSQL can dead-letter it.
    pub key: Option<Vec<u8>>,
    /// The record's bytes, as received, for the same reason.
    pub payload: Vec<u8>,
}

/// The stage at which a record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before enrichment: too large, not JSON, missing or mistyped fields,
    /// values out of range.
    Decode,
    /// A transform rejected it, trapped on it, or returned something the
    /// contract forbids for it.
    Transform,
    /// PostgreSQL refused to store it.
    Store,
}

impl Stage {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Transform => "transform",
            Stage::Store => "store",
        }
    }
}

/// A record that could not become an event.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it came from.
    pub provenance: Provenance,
    /// The record's key.
    pub key: Option<Vec<u8>>,
    /// The record's bytes, as received.
    pub payload: Vec<u8>,
    /// Where it was refused.
    pub stage: Stage,
    /// A short label (`not_json`, `missing_field`, `refused`, `trap`, ...).
    pub kind: String,
    /// Why, for a human.
    pub reason: String,
    /// The transform that refused it (`name@version`), for transform-stage
    /// refusals.
    pub plugin_version: Option<String>,
}

/// The windowing: which window an event falls in, and which neighbour's
/// time on page a new event can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    /// Window size in milliseconds.
    pub window_ms: i64,
    /// Session timeout in milliseconds: a new event changes the time spent of
    /// its user's previous event when it is at most this much later.
    pub session_timeout_ms: i64,
}

impl WindowSpec {
    /// Start of the epoch-aligned window holding `ts_ms`.
    pub fn window_start(&self, ts_ms: i64) -> i64 {
        ts_ms.div_euclid(self.window_ms) * self.window_ms
    }
}

/// A stored event reduced to what aggregation reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Orders events with equal timestamps.
    pub event_id: String,
    /// Who clicked.
    pub user_id: String,
    /// Event time, Unix milliseconds.
    pub timestamp_ms: i64,
    /// The page viewed, as stored.
    pub url: String,
    /// Country from enrichment, or `unknown`.
    pub country: String,
}

/// What defines the metrics; the same parameters give the same rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggregateParams {
    /// Window size, milliseconds.
    pub window_ms: i64,
    /// Largest gap that still counts as time spent, milliseconds.
    pub session_timeout_ms: i64,
    /// Keep the query string when normalising URLs.
    pub keep_query: bool,
}

/// The metrics of one (window, URL, country) group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregateRow {
    /// Window start, Unix milliseconds.
    pub window_start_ms: i64,
    /// Normalised URL.
    pub url: String,
    /// Country code, or `unknown`.
    pub country: String,
    /// Events in the group.
    pub clicks: u64,
    /// Distinct users in the group.
    pub unique_users: u64,
    /// Sum of the time-on-page samples, milliseconds.
    pub time_spent_total_ms: u64,
    /// Number of samples.
    pub time_spent_samples: u64,
}
