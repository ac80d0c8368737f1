//! `[source]`: the Kafka consumer, and what a record may be.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::section::{in_range, invalid, Apply, ConfigError};

/// librdkafka properties the pipeline sets itself because exactly-once
/// storage depends on them: offsets are stored and committed by the store
/// only after PostgreSQL has the records, partitions start where PostgreSQL
/// says, and only committed transactional records are read.
pub const RESERVED_KAFKA_KEYS: [&str; 8] = [
    "group.id",
    "bootstrap.servers",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "isolation.level",
    "enable.partition.eof",
    "auto.commit.interval.ms",
];

/// `[source]`. Brokers, topics, group and librdkafka properties need a
/// restart; batching and the record limits apply live.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Bootstrap brokers, comma-separated `host:port`. Env: `KAFKA_BROKERS`.
    #[serde(default = "default_brokers")]
    pub brokers: String,
    /// Topics to consume.
    #[serde(default = "default_topics")]
    pub topics: Vec<String>,
    /// Hosts sharing it split the partitions.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Records larger than this are dead-lettered unread.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Most clicks per enrich call and per database write.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest a partial batch waits for more records.
    #[serde(default = "default_batch_max_wait_ms")]
    pub batch_max_wait_ms: u64,
    /// Extra librdkafka consumer properties (e.g. `security.protocol`); the
    /// ones the effectively-once guarantee depends on are refused
    /// ([`RESERVED_KAFKA_KEYS`]).
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    /// Events timed more than this far ahead of the host's clock are
    /// dead-lettered (`timestamp_out_of_range`).
    #[serde(default = "default_max_future_secs")]
    pub max_future_secs: u64,
    /// Events timed before this instant (RFC 3339) are dead-lettered
    /// (`timestamp_out_of_range`).
    #[serde(default = "default_min_event_time")]
    pub min_event_time: String,
    /// Events timed more than this many days before the host's clock are
    /// dead-lettered (`too_old`): each past day an event reaches is a day
    /// partition created on demand, with a brief lock of the whole table,
    /// so a client sending one event per past day must not force thousands.
    /// 0 turns the bound off (`min_event_time` still applies).
    #[serde(default = "default_max_past_days")]
    pub max_past_days: u32,
}

fn default_brokers() -> String {
    "127.0.0.1:9092".into()
}
fn default_topics() -> Vec<String> {
    vec!["clicks".into()]
}
fn default_group() -> String {
    "clickstream".into()
}
const fn default_max_record_bytes() -> usize {
    64 * 1024
}
const fn default_batch_size() -> usize {
    4096
}
const fn default_batch_max_wait_ms() -> u64 {
    200
}
const fn default_max_future_secs() -> u64 {
    86_400
}
const fn default_max_past_days() -> u32 {
    400
}
fn default_min_event_time() -> String {
    "2000-01-01T00:00:00Z".into()
}

impl SourceConfig {
    /// Checks ranges and relations; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(invalid(file, "source.brokers", "is empty".into(), "list at least one broker as host:port"));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(file, "source.topics", format!("is {:?}", self.topics), "list one or more non-empty topic names"));
        }
        if self.group_id.trim().is_empty() {
            return Err(invalid(file, "source.group_id", "is empty".into(), "name the consumer group"));
        }
        in_range(file, "source.batch_size", self.batch_size, 1..=100_000, default_batch_size())?;
        in_range(file, "source.batch_max_wait_ms", self.batch_max_wait_ms, 1..=60_000, default_batch_max_wait_ms())?;
        in_range(file, "source.max_record_bytes", self.max_record_bytes, 256..=16 << 20, default_max_record_bytes())?;
        if let Some(key) = self.kafka.keys().find(|k| RESERVED_KAFKA_KEYS.contains(&k.trim())) {
            return Err(invalid(
                file,
                &format!("source.kafka.\"{key}\""),
                "is set by the pipeline itself: exactly-once storage depends on it".into(),
                "remove it (offsets live in PostgreSQL; brokers and group are source.brokers and source.group_id)",
            ));
        }
        if !(1..=31_536_000).contains(&self.max_future_secs) {
            return Err(invalid(
                file,
                "source.max_future_secs",
                format!("is {}", self.max_future_secs),
                "use 1 to 31536000 (a year; default 86400)",
            ));
        }
        in_range(file, "source.max_past_days", self.max_past_days, 0..=36_500, default_max_past_days())?;
        if chrono::DateTime::parse_from_rfc3339(&self.min_event_time).is_err() {
            return Err(invalid(
                file,
                "source.min_event_time",
                format!("is {:?}", self.min_event_time),
                "use an RFC 3339 instant such as \"2000-01-01T00:00:00Z\" (the default)",
            ));
        }
        Ok(())
    }

    /// `min_event_time` in epoch milliseconds (validated to parse).
    pub fn min_event_time_ms(&self) -> i64 {
        chrono::DateTime::parse_from_rfc3339(&self.min_event_time).map_or(i64::MIN, |t| t.timestamp_millis())
    }

    /// `max_past_days` in milliseconds; `i64::MAX` when it is 0 (off).
    pub fn max_past_ms(&self) -> i64 {
        match self.max_past_days {
            0 => i64::MAX,
            days => i64::from(days) * 86_400_000,
        }
    }

    /// How a change to this section applies.
    pub fn change(&self, next: &SourceConfig) -> Apply {
        if (&self.brokers, &self.topics, &self.group_id, &self.kafka) != (&next.brokers, &next.topics, &next.group_id, &next.kafka) {
            Apply::Restart
        } else if self != next {
            Apply::Live
        } else {
            Apply::Unchanged
        }
    }
}

/// Debug shows no secret client property (`sasl.password`, ...).
impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SourceConfig {
            brokers,
            topics,
            group_id,
            max_record_bytes,
            batch_size,
            batch_max_wait_ms,
            kafka,
            max_future_secs,
            min_event_time,
            max_past_days,
        } = self;
        f.debug_struct("SourceConfig")
            .field("brokers", &crate::redact::in_text(brokers))
            .field("topics", topics)
            .field("group_id", group_id)
            .field("max_record_bytes", max_record_bytes)
            .field("batch_size", batch_size)
            .field("batch_max_wait_ms", batch_max_wait_ms)
            .field("kafka", &crate::redact::settings(kafka))
            .field("max_future_secs", max_future_secs)
            .field("min_event_time", min_event_time)
            .field("max_past_days", max_past_days)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::section::Apply;

    fn source(text: &str) -> SourceConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn max_past_days_defaults_to_400_is_checked_by_its_key_and_applies_live() {
        let file = Path::new("pipeline.toml");
        let default = source("");
        assert_eq!((default.max_past_days, default.max_past_ms()), (400, 400 * 86_400_000));
        assert_eq!(source("max_past_days = 0").max_past_ms(), i64::MAX, "0 is off");
        let err = source("max_past_days = 40000").validate(file).unwrap_err().to_string();
        assert!(err.contains("source.max_past_days") && err.contains("0 to 36500") && err.contains("default 400"), "{err}");
        assert_eq!(default.change(&source("max_past_days = 30")), Apply::Live);
    }
}
