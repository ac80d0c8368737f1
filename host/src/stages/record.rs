//! What flows between the stages, in the host's own types. The plugin
//! contract's generated types stay in `plugin/` and are converted at its
//! boundary, so a new contract version changes one module, not every stage.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

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

/// One transaction's worth of work.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Events to store.
    pub events: Vec<Event>,
    /// Records to dead-letter.
    pub dead_letters: Vec<DeadLetter>,
    /// Records a transform dropped.
    pub dropped: Vec<Dropped>,
    /// Per (topic, partition): the offset after the last record in the batch.
    pub next_offsets: BTreeMap<(String, i32), i64>,
    /// Per (topic, partition): the first offset in the batch.
    pub first_offsets: BTreeMap<(String, i32), i64>,
}

impl WriteBatch {
    /// Notes that `provenance`'s record is part of this batch.
    pub fn saw(&mut self, provenance: &Provenance) {
        let next = self.next_offsets.entry((provenance.topic.clone(), provenance.partition)).or_insert(0);
        *next = (*next).max(provenance.offset + 1);
        let first = self.first_offsets.entry((provenance.topic.clone(), provenance.partition)).or_insert(i64::MAX);
        *first = (*first).min(provenance.offset);
    }

    /// Records in the batch.
    pub fn len(&self) -> usize {
        self.events.len() + self.dead_letters.len() + self.dropped.len()
    }

    /// Where each record of the batch came from: events, dead letters,
    /// then drops.
    pub fn provenances(&self) -> impl Iterator<Item = &Provenance> {
        let events = self.events.iter().map(|e| &e.provenance);
        events.chain(self.dead_letters.iter().map(|d| &d.provenance)).chain(self.dropped.iter().map(|d| &d.provenance))
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a later batch: its records after this one's, offsets widened.
    pub fn merge(&mut self, later: WriteBatch) {
        self.events.extend(later.events);
        self.dead_letters.extend(later.dead_letters);
        self.dropped.extend(later.dropped);
        for (key, next) in later.next_offsets {
            let n = self.next_offsets.entry(key).or_insert(next);
            *n = (*n).max(next);
        }
        for (key, first) in later.first_offsets {
            let f = self.first_offsets.entry(key).or_insert(first);
            *f = (*f).min(first);
        }
    }

    /// Takes out the records a write left for later ([`deferred`]: per
    /// partition, the offset from which nothing was written) into a batch
    /// of their own, in order, with its own offsets; this batch keeps what
    /// was written, its next offsets cut back to match.
    ///
    /// [`deferred`]: crate::stages::store::WriteOutcome::deferred
    pub fn split_off_deferred(&mut self, deferred: &BTreeMap<(String, i32), i64>) -> WriteBatch {
        let mut rest = WriteBatch::default();
        if deferred.is_empty() {
            return rest;
        }
        let later = |p: &Provenance| deferred.get(&(p.topic.clone(), p.partition)).is_some_and(|cut| p.offset >= *cut);
        (rest.events, self.events) = std::mem::take(&mut self.events).into_iter().partition(|e| later(&e.provenance));
        (rest.dead_letters, self.dead_letters) = std::mem::take(&mut self.dead_letters).into_iter().partition(|d| later(&d.provenance));
        (rest.dropped, self.dropped) = std::mem::take(&mut self.dropped).into_iter().partition(|d| later(&d.provenance));
        for (key, cut) in deferred {
            if let Some(next) = self.next_offsets.get_mut(key) {
                rest.next_offsets.insert(key.clone(), *next);
                rest.first_offsets.insert(key.clone(), *cut);
                *next = (*next).min(*cut);
            }
        }
        rest
    }

    /// Splits the batch into `n` by partition: every record and offset of a
    /// (topic, partition) goes to part [`part_of`]`(topic, partition, n)`, in
    /// the batch's order. Parts with no partition are empty.
    pub fn split(self, n: usize) -> Vec<WriteBatch> {
        let mut parts: Vec<WriteBatch> = (0..n).map(|_| WriteBatch::default()).collect();
        let of = |p: &Provenance| part_of(&p.topic, p.partition, n);
        for e in self.events {
            parts[of(&e.provenance)].events.push(e);
        }
        for d in self.dead_letters {
            parts[of(&d.provenance)].dead_letters.push(d);
        }
        for d in self.dropped {
            parts[of(&d.provenance)].dropped.push(d);
        }
        for ((topic, partition), next) in self.next_offsets {
            let i = part_of(&topic, partition, n);
            parts[i].next_offsets.insert((topic, partition), next);
        }
        for ((topic, partition), first) in self.first_offsets {
            let i = part_of(&topic, partition, n);
            parts[i].first_offsets.insert((topic, partition), first);
        }
        parts
    }
}

/// Which of `n` parts a (topic, partition) belongs to: always the same one,
/// so one writer stores a partition's batches in order. Partitions of a
/// topic go round-robin; the topic's name shifts where it starts.
pub fn part_of(topic: &str, partition: i32, n: usize) -> usize {
    let shift = topic.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (shift as usize).wrapping_add(partition.max(0) as usize) % n.max(1)
}

/// A batch after decoding: the clicks with the records they came from, and
/// the write batch so far (a dead letter per refused record, the offsets of
/// every record).
#[derive(Debug, Default)]
pub struct Decoded {
    /// What the later stages fill in and the store writes.
    pub batch: WriteBatch,
    /// The decoded clicks.
    pub events: Vec<RawEvent>,
    /// The record each click came from, in the same order.
    pub origins: Vec<Consumed>,
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

/// The limits every string of an event is held to, at decode and again on
/// what a plugin returns: PostgreSQL's `text` cannot hold a NUL character,
/// and an index row must stay under ~2.7 kB.
pub mod limits {
    /// Longest `event_id`, `user_id`, `session_id` and `ip`, in bytes: ids are
    /// keys of btree indexes.
    pub const ID_MAX_BYTES: usize = 256;

    /// Longest `url`, `user_agent` and `referrer`, in bytes: real ones stay
    /// under 2 kB; 8 KiB leaves room for long tracking query strings.
    pub const TEXT_MAX_BYTES: usize = 8 * 1024;

    /// Longest country, city, browser, OS or plugin version, in bytes: labels,
    /// stored in every row and used as index keys.
    pub const LABEL_MAX_BYTES: usize = 256;

    /// Longest attribute key, in bytes.
    pub const ATTRIBUTE_KEY_MAX_BYTES: usize = 128;

    /// Most attributes an event may carry: each is stored in every row.
    pub const MAX_ATTRIBUTES: usize = 64;

    /// A string over its limit or holding a NUL character.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum FieldError {
        /// Longer than its limit.
        #[error("field `{field}` is {len} bytes, longer than its limit of {max}")]
        TooLong {
            /// The field.
            field: &'static str,
            /// Its length in bytes.
            len: usize,
            /// The limit.
            max: usize,
        },
        /// More attributes than an event may carry.
        #[error("{count} attributes, more than the {max} an event may carry")]
        TooMany {
            /// How many.
            count: usize,
            /// The limit.
            max: usize,
        },
        /// An empty or repeated attribute key.
        #[error("attribute key {key:?} is empty or given twice")]
        BadKey {
            /// The key.
            key: String,
        },
        /// A float attribute that JSON cannot hold.
        #[error("attribute {key:?} is not a finite number")]
        NotFinite {
            /// The key.
            key: String,
        },
        /// Holds a NUL character.
        #[error("field `{field}` contains a NUL character (\\u0000) at byte {at}")]
        Nul {
            /// The field.
            field: &'static str,
            /// Where, in bytes.
            at: usize,
        },
    }

    /// One string within `max` bytes and free of NUL characters.
    pub fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), FieldError> {
        if value.len() > max {
            return Err(FieldError::TooLong { field, len: value.len(), max });
        }
        match value.bytes().position(|b| b == 0) {
            Some(at) => Err(FieldError::Nul { field, at }),
            None => Ok(()),
        }
    }
}

impl RawEvent {
    /// Every string but the event id (checked before one is derived) within
    /// its limit and free of NUL characters.
    pub fn check_fields(&self) -> Result<(), limits::FieldError> {
        use limits::{check_text, ID_MAX_BYTES, TEXT_MAX_BYTES};
        let fields: [(&'static str, Option<&str>, usize); 6] = [
            ("user_id", Some(&self.user_id), ID_MAX_BYTES),
            ("url", Some(&self.url), TEXT_MAX_BYTES),
            ("ip", Some(&self.ip), ID_MAX_BYTES),
            ("user_agent", Some(&self.user_agent), TEXT_MAX_BYTES),
            ("referrer", self.referrer.as_deref(), TEXT_MAX_BYTES),
            ("session_id", self.session_id.as_deref(), ID_MAX_BYTES),
        ];
        for (field, value, max) in fields {
            check_text(field, value.unwrap_or_default(), max)?;
        }
        Ok(())
    }
}

impl Enrichment {
    /// Every label within [`limits::LABEL_MAX_BYTES`] and free of NUL characters.
    pub fn check_fields(&self) -> Result<(), limits::FieldError> {
        for (field, value) in [("country", &self.country), ("city", &self.city), ("browser", &self.browser), ("os", &self.os)] {
            limits::check_text(field, value.as_deref().unwrap_or_default(), limits::LABEL_MAX_BYTES)?;
        }
        Ok(())
    }
}

impl TransformEvent {
    /// Every string within its limit and free of NUL characters; attribute
    /// keys unique, at most [`limits::MAX_ATTRIBUTES`] of them, floats finite.
    pub fn check_fields(&self) -> Result<(), limits::FieldError> {
        use limits::{check_text, FieldError, ATTRIBUTE_KEY_MAX_BYTES, MAX_ATTRIBUTES, TEXT_MAX_BYTES};
        self.raw.check_fields()?;
        self.enrichment.check_fields()?;
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(FieldError::TooMany { count: self.attributes.len(), max: MAX_ATTRIBUTES });
        }
        let mut keys = std::collections::HashSet::with_capacity(self.attributes.len());
        for a in &self.attributes {
            check_text("attribute key", &a.key, ATTRIBUTE_KEY_MAX_BYTES)?;
            if a.key.is_empty() || !keys.insert(a.key.as_str()) {
                return Err(FieldError::BadKey { key: a.key.clone() });
            }
            match &a.value {
                Value::Str(text) => check_text("attribute value", text, TEXT_MAX_BYTES)?,
                Value::Float(f) if !f.is_finite() => return Err(FieldError::NotFinite { key: a.key.clone() }),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dropped(topic: &str, partition: i32, offset: i64) -> Dropped {
        Dropped {
            provenance: Provenance { topic: topic.into(), partition, offset, received_at: Utc::now() },
            transform: "t".into(),
            reason: "r".into(),
        }
    }

    #[test]
    fn a_batch_splits_by_partition_keeping_each_partitions_records_and_offsets_together_in_order() {
        let mut batch = WriteBatch::default();
        for (partition, offset) in [(0, 10), (1, 20), (2, 30), (0, 11), (3, 40), (1, 21)] {
            let d = dropped("clicks", partition, offset);
            batch.saw(&d.provenance);
            batch.dropped.push(d);
        }
        let parts = batch.split(2);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.iter().map(WriteBatch::len).sum::<usize>(), 6);
        for part in &parts {
            for d in &part.dropped {
                let key = (d.provenance.topic.clone(), d.provenance.partition);
                assert!(part.next_offsets.contains_key(&key) && part.first_offsets.contains_key(&key));
                assert_eq!(part_of("clicks", d.provenance.partition, 2), parts.iter().position(|p| std::ptr::eq(p, part)).unwrap());
            }
            let offsets: Vec<i64> = part.dropped.iter().filter(|d| d.provenance.partition == 0).map(|d| d.provenance.offset).collect();
            assert!(offsets.is_empty() || offsets == [10, 11], "{offsets:?}");
            assert!(part.next_offsets.keys().all(|(t, p)| part_of(t, *p, 2) == part_of("clicks", *p, 2)));
        }
        assert_ne!(part_of("clicks", 0, 2), part_of("clicks", 1, 2), "neighbouring partitions go to different parts");
        assert_eq!(WriteBatch::default().split(1).len(), 1);
    }

    #[test]
    fn merged_batches_keep_their_order_and_span_both_offset_ranges() {
        let part = |offsets: &[(i32, i64)]| {
            let mut b = WriteBatch::default();
            for &(p, o) in offsets {
                let d = dropped("clicks", p, o);
                b.saw(&d.provenance);
                b.dropped.push(d);
            }
            b
        };
        let mut first = part(&[(0, 10), (0, 11), (1, 5)]);
        first.merge(part(&[(0, 12), (2, 7)]));
        let offsets: Vec<(i32, i64)> = first.dropped.iter().map(|d| (d.provenance.partition, d.provenance.offset)).collect();
        assert_eq!(offsets, [(0, 10), (0, 11), (1, 5), (0, 12), (2, 7)]);
        let key = |p: i32| ("clicks".to_string(), p);
        assert_eq!((first.first_offsets[&key(0)], first.next_offsets[&key(0)]), (10, 13));
        assert_eq!((first.first_offsets[&key(1)], first.next_offsets[&key(1)]), (5, 6));
        assert_eq!((first.first_offsets[&key(2)], first.next_offsets[&key(2)]), (7, 8));
    }
}
