//! Record bytes → [`RawEvent`]s, with a reason for every refusal. The
//! second stage: what it refuses becomes a dead letter of stage `decode`.
//!
//! The event format (docs/concepts.md, "Event format"): a JSON object with `user_id`
//! (string), `timestamp` (epoch milliseconds as an integer, or an RFC 3339
//! string) and `url` (string), all required; `event_id`, `ip`, `user_agent`,
//! `referrer` and `session_id` (strings) are optional. Other keys are ignored,
//! so trackers can send more than the pipeline reads.
//!
//! A key repeated within one object, at any depth, refuses the record:
//! parsers disagree on which value counts (this one kept the last), so a
//! tracker, a transform and a replay could each read another event.
//! `url` and `referrer` are kept without userinfo
//! (`https://user:pass@host/x` is stored as `https://host/x`).
//!
//! What is refused here would otherwise be refused later, one batch at a
//! time, by the plugin or by PostgreSQL: a NUL character (`text` cannot hold
//! one), a field longer than its [`limits`] (an id that long overflows a
//! btree row), a timestamp outside
//! [`DecodeLimits`]'s range (PostgreSQL's `timestamptz` ends in year 294276,
//! and a far-future event would finalise every aggregate window).

mod strict;

use serde_json::{Map, Value};

use crate::stages::record::limits::{check_text, FieldError, ID_MAX_BYTES};
use crate::stages::record::{Consumed, DeadLetter, Decoded, RawEvent, Stage, WriteBatch};

/// Why a record is not a click. The message is what a user sees in the
/// dead-letter list, so it says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum DecodeError {
    /// Larger than `source.max_record_bytes`; not parsed at all.
    #[error("record is {size} bytes, larger than source.max_record_bytes = {max}")]
    TooLarge {
        /// The record's size.
        size: usize,
        max: usize,
    },
    /// Not valid JSON, or not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// An object holds a key twice; the path names it (`user_id`,
    /// `attributes.plan`, `items[1].id`).
    #[error("key `{0}` appears twice in one object; JSON parsers disagree on which value counts, so the record is refused")]
    DuplicateKey(String),
    /// A required key is absent or null.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A key has the wrong JSON type.
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType { field: &'static str, expected: &'static str, got: String },
    /// The event time is before `source.min_event_time` or more than
    /// `source.max_future_secs` ahead of the host's clock.
    #[error("timestamp {timestamp_ms} ms ({shown}) is outside the accepted range {min_ms} .. {max_ms} ms (source.min_event_time, source.max_future_secs)")]
    TimestampOutOfRange {
        /// The event time, epoch milliseconds.
        timestamp_ms: i64,
        /// It as a date, when it is one.
        shown: String,
        min_ms: i64,
        /// The latest accepted (now plus the allowed skew).
        max_ms: i64,
    },
    /// The event time is more than `source.max_past_days` before the host's
    /// clock: each past day it reaches is a day partition to create.
    #[error("timestamp {timestamp_ms} ms ({shown}) is {age_days} days before the host's clock, more than source.max_past_days = {max_past_days}; raise it (0 turns the bound off) to accept older events")]
    TooOld {
        /// The event time, epoch milliseconds.
        timestamp_ms: i64,
        /// It as a date.
        shown: String,
        /// Whole days between it and the host's clock.
        age_days: i64,
        max_past_days: i64,
    },
    /// A string is over its limit or holds a NUL character.
    #[error(transparent)]
    Field(#[from] FieldError),
}

impl DecodeError {
    /// A short label for metrics (`dead_lettered{reason=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::DuplicateKey(_) => "duplicate_key",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::TimestampOutOfRange { .. } => "timestamp_out_of_range",
            DecodeError::TooOld { .. } => "too_old",
            DecodeError::Field(FieldError::Nul { .. }) => "nul_character",
            DecodeError::Field(FieldError::TooLong { .. }) => "field_too_long",
            DecodeError::Field(_) => "invalid_field",
        }
    }
}

/// What a record may be, from `[source]`; applied live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Larger records are not parsed.
    pub max_record_bytes: usize,
    /// The earliest event time accepted, epoch milliseconds.
    pub min_timestamp_ms: i64,
    /// How far ahead of the host's clock an event time may be, milliseconds.
    pub max_future_ms: i64,
    /// How far before the host's clock an event time may be, milliseconds
    /// (`i64::MAX`: no bound).
    pub max_past_ms: i64,
}

impl DecodeLimits {
    /// No size or time bound, for events a user hands to a tool (`plugin
    /// check`, the benchmark); the field limits still apply.
    pub const UNBOUNDED: DecodeLimits =
        DecodeLimits { max_record_bytes: usize::MAX, min_timestamp_ms: i64::MIN, max_future_ms: i64::MAX, max_past_ms: i64::MAX };
}

/// Decodes a batch at the host's clock: the clicks with the records they
/// came from, and a write batch holding the offsets of every record and a
/// dead letter for each refused one.
pub fn decode_batch(records: Vec<Consumed>, limits: &DecodeLimits) -> Decoded {
    let mut decoded =
        Decoded { batch: WriteBatch::default(), events: Vec::with_capacity(records.len()), origins: Vec::with_capacity(records.len()) };
    let now_ms = chrono::Utc::now().timestamp_millis();
    for record in records {
        decoded.batch.saw(&record.provenance);
        match decode(&record.payload, limits, now_ms, || record.derived_event_id()) {
            Ok(event) => {
                decoded.events.push(event);
                decoded.origins.push(record);
            }
            Err(e) => decoded.batch.dead_letters.push(DeadLetter {
                provenance: record.provenance,
                key: record.key,
                payload: record.payload,
                stage: Stage::Decode,
                kind: e.kind().into(),
                reason: e.to_string(),
                plugin_version: None,
            }),
        }
    }
    decoded
}

/// Decodes one record at `now_ms` (the host's clock, for the future bound).
/// `derived_event_id` supplies the id of a record that carries none (the
/// source derives it from topic, partition and offset, so a redelivery maps
/// to the same id).
pub fn decode(
    bytes: &[u8],
    limits: &DecodeLimits,
    now_ms: i64,
    derived_event_id: impl FnOnce() -> String,
) -> Result<RawEvent, DecodeError> {
    if bytes.len() > limits.max_record_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), max: limits.max_record_bytes });
    }
    let value = parse_strict(bytes)?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotJson(format!("got {}", describe(&value))));
    };
    let event_id = optional_string(&mut obj, "event_id")?.filter(|id| !id.is_empty());
    if let Some(id) = &event_id {
        check_text("event_id", id, ID_MAX_BYTES)?;
    }
    let event_id = event_id.unwrap_or_else(derived_event_id);
    let click = RawEvent {
        event_id,
        user_id: required_string(&mut obj, "user_id")?,
        timestamp_ms: timestamp(&mut obj)?,
        url: without_userinfo(required_string(&mut obj, "url")?),
        ip: optional_string(&mut obj, "ip")?.unwrap_or_default(),
        user_agent: optional_string(&mut obj, "user_agent")?.unwrap_or_default(),
        referrer: optional_string(&mut obj, "referrer")?.map(without_userinfo),
        session_id: optional_string(&mut obj, "session_id")?,
    };
    click.check_fields()?;
    let (min_ms, max_ms) = (limits.min_timestamp_ms, now_ms.saturating_add(limits.max_future_ms));
    if !(min_ms..=max_ms).contains(&click.timestamp_ms) {
        let shown = chrono::DateTime::from_timestamp_millis(click.timestamp_ms).map_or_else(|| "not a date".into(), |t| t.to_rfc3339());
        return Err(DecodeError::TimestampOutOfRange { timestamp_ms: click.timestamp_ms, shown, min_ms, max_ms });
    }
    let age_ms = now_ms.saturating_sub(click.timestamp_ms);
    if age_ms > limits.max_past_ms {
        let shown = chrono::DateTime::from_timestamp_millis(click.timestamp_ms).map_or_else(|| "not a date".into(), |t| t.to_rfc3339());
        const DAY_MS: i64 = 86_400_000;
        return Err(DecodeError::TooOld {
            timestamp_ms: click.timestamp_ms,
            shown,
            age_days: age_ms / DAY_MS,
            max_past_days: limits.max_past_ms / DAY_MS,
        });
    }
    Ok(click)
}

/// `url` without the userinfo of its authority: `https://user:pass@host/x`
/// becomes `https://host/x` (a password in a page's address is not the
/// pipeline's to store, nor the search index's to show). The userinfo ends
/// at the authority's last `@`, as browsers read it, so a password holding
/// `@` goes whole. Everything else is kept byte for byte; a string with no
/// authority (`/path`, `mailto:a@b`) is kept as it is.
fn without_userinfo(mut url: String) -> String {
    let start = if url.starts_with("//") {
        2
    } else {
        match url.split_once("://") {
            Some((scheme, _))
                if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')) =>
            {
                scheme.len() + 3
            }
            _ => return url,
        }
    };
    let end = url[start..].find(['/', '?', '#']).map_or(url.len(), |i| start + i);
    if let Some(at) = url[start..end].rfind('@') {
        url.replace_range(start..=start + at, "");
    }
    url
}

/// Parses a record as JSON, refusing a key repeated within an object.
fn parse_strict(bytes: &[u8]) -> Result<Value, DecodeError> {
    strict::parse(bytes).map_err(|malformed| match malformed {
        strict::Malformed::RepeatedKey(path) => DecodeError::DuplicateKey(path),
        strict::Malformed::NotJson(e) => DecodeError::NotJson(e.to_string()),
    })
}

fn describe(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    let mut shown = value.to_string();
    if shown.len() > 40 {
        shown.truncate(shown.floor_char_boundary(40));
        shown.push('…');
    }
    format!("{kind} ({shown})")
}

fn optional_string(obj: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>, DecodeError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(DecodeError::WrongType { field, expected: "a string", got: describe(&other) }),
    }
}

fn required_string(obj: &mut Map<String, Value>, field: &'static str) -> Result<String, DecodeError> {
    optional_string(obj, field)?.ok_or(DecodeError::MissingField(field))
}

fn timestamp(obj: &mut Map<String, Value>) -> Result<i64, DecodeError> {
    const EXPECTED: &str = "epoch milliseconds (an integer) or an RFC 3339 string";
    let wrong = |got: &Value| DecodeError::WrongType { field: "timestamp", expected: EXPECTED, got: describe(got) };
    match obj.remove("timestamp") {
        None | Some(Value::Null) => Err(DecodeError::MissingField("timestamp")),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| wrong(&Value::Number(n))),
        Some(Value::String(s)) => {
            chrono::DateTime::parse_from_rfc3339(&s).map(|t| t.timestamp_millis()).map_err(|_| wrong(&Value::String(s)))
        }
        Some(other) => Err(wrong(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-28T10:00:00Z, the tests' "now".
    const NOW_MS: i64 = 1_795_860_000_000;

    const LIMITS: DecodeLimits =
        DecodeLimits { max_record_bytes: 65536, min_timestamp_ms: 946_684_800_000, max_future_ms: 86_400_000, max_past_ms: i64::MAX };

    fn dec(json: &str) -> Result<RawEvent, DecodeError> {
        decode(json.as_bytes(), &LIMITS, NOW_MS, || "derived".into())
    }

    #[test]
    fn a_complete_event_decodes_and_rfc3339_means_the_same_instant() {
        let c = dec(r#"{"event_id":"e1","user_id":"u","timestamp":"2026-11-28T10:00:00.250+01:00","url":"/a","ip":"1.2.3.4","user_agent":"x","referrer":null,"extra":1}"#).unwrap();
        assert_eq!(c.event_id, "e1");
        assert_eq!(c.timestamp_ms, 1_795_856_400_250);
        let ms = dec(r#"{"user_id":"u","timestamp":1795856400250,"url":"/a"}"#).unwrap();
        assert_eq!(ms.timestamp_ms, c.timestamp_ms);
        assert_eq!((ms.event_id.as_str(), ms.ip.as_str()), ("derived", ""));
    }

    #[test]
    fn each_kind_of_bad_record_gets_its_reason() {
        assert_eq!(dec("{nope").unwrap_err().kind(), "not_json");
        assert_eq!(dec("[1,2]").unwrap_err().to_string(), "not a JSON object: got an array ([1,2])");
        assert_eq!(dec(r#"{"timestamp":1,"url":"/"}"#).unwrap_err(), DecodeError::MissingField("user_id"));
        let err = dec(r#"{"user_id":42,"timestamp":1,"url":"/"}"#).unwrap_err();
        assert_eq!(err.to_string(), "field `user_id` must be a string, got a number (42)");
        let err = dec(r#"{"user_id":"u","timestamp":"yesterday","url":"/"}"#).unwrap_err();
        assert!(err.to_string().contains("RFC 3339"), "{err}");
        let err = dec(r#"{"user_id":"u","timestamp":1.5,"url":"/"}"#).unwrap_err();
        assert_eq!(err.kind(), "wrong_type");
        let small = DecodeLimits { max_record_bytes: 256, ..LIMITS };
        let err = decode(&[b' '; 300], &small, NOW_MS, || unreachable!()).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { size: 300, max: 256 });
    }

    #[test]
    fn a_repeated_key_is_refused_with_its_own_kind_and_its_path() {
        let err = dec(r#"{"user_id":"a","user_id":"b","timestamp":1795856400250,"url":"/a"}"#).unwrap_err();
        assert_eq!(err, DecodeError::DuplicateKey("user_id".into()));
        assert_eq!(err.kind(), "duplicate_key");
        assert!(err.to_string().contains("`user_id` appears twice"), "{err}");
        // Nested objects (attributes a tracker sends along), in arrays too,
        // even where the pipeline reads nothing.
        let nested = dec(r#"{"user_id":"u","timestamp":1795856400250,"url":"/a","attributes":{"plan":"free","plan":"pro"}}"#);
        assert_eq!(nested.unwrap_err(), DecodeError::DuplicateKey("attributes.plan".into()));
        let listed = dec(r#"{"user_id":"u","timestamp":1795856400250,"url":"/a","items":[{"id":1},{"id":1,"id":2}]}"#);
        assert_eq!(listed.unwrap_err(), DecodeError::DuplicateKey("items[1].id".into()));
        // The same key in two objects is no repetition; nor is a key
        // differing in case.
        let fine = dec(r#"{"user_id":"u","timestamp":1795856400250,"url":"/a","a":{"id":1},"b":{"id":1},"USER_ID":"x"}"#).unwrap();
        assert_eq!(fine.user_id, "u");
        // A repeated key in broken JSON is still a repeated key; broken
        // JSON alone is still not JSON, with serde_json's own message.
        assert_eq!(dec(r#"{"a":1,"a":2"#).unwrap_err().kind(), "duplicate_key");
        assert_eq!(dec(r#"{"a":1,}"#).unwrap_err().to_string(), "not a JSON object: trailing comma at line 1 column 8");
    }

    #[test]
    fn a_repeated_key_becomes_a_dead_letter_of_its_own_kind() {
        let payload = br#"{"user_id":"a","timestamp":1795856400250,"url":"/a","user_id":"b"}"#.to_vec();
        let provenance = crate::stages::record::Provenance { topic: "t".into(), partition: 0, offset: 7, received_at: chrono::Utc::now() };
        let decoded = decode_batch(vec![Consumed { provenance, key: None, payload: payload.clone() }], &DecodeLimits::UNBOUNDED);
        assert!(decoded.events.is_empty());
        let dead = &decoded.batch.dead_letters[0];
        assert_eq!((dead.kind.as_str(), dead.stage, &dead.payload), ("duplicate_key", Stage::Decode, &payload));
        assert!(dead.reason.contains("`user_id`"), "{}", dead.reason);
    }

    #[test]
    fn an_event_url_is_stored_without_its_userinfo() {
        let with = |url: &str, referrer: &str| {
            let c = dec(&format!(r#"{{"user_id":"u","timestamp":1795856400250,"url":"{url}","referrer":"{referrer}"}}"#)).unwrap();
            (c.url, c.referrer.unwrap())
        };
        let (url, referrer) = with("https://user:pass@example.com/x", "http://me:secret@ref.example/");
        assert_eq!((url.as_str(), referrer.as_str()), ("https://example.com/x", "http://ref.example/"));
        for (sent, stored) in [
            ("https://u:p@ss@example.com:8443/x?q=1#f", "https://example.com:8443/x?q=1#f"),
            ("https://token@example.com", "https://example.com"),
            ("//u:p@cdn.example/x", "//cdn.example/x"),
            ("https://example.com/@handle?by=a@b#c@d", "https://example.com/@handle?by=a@b#c@d"),
            ("/cart?u=x@y", "/cart?u=x@y"),
            ("mailto:a@b.example", "mailto:a@b.example"),
            ("HTTPS://User@Example.com/Path", "HTTPS://Example.com/Path"),
        ] {
            assert_eq!(with(sent, "/").0, stored, "{sent}");
        }
    }

    #[test]
    fn a_nul_character_in_any_kept_string_is_refused_with_its_field() {
        for field in ["event_id", "user_id", "url", "ip", "user_agent", "referrer", "session_id"] {
            let mut json = serde_json::json!({"user_id": "u", "timestamp": 1795856400250i64, "url": "/a"});
            json[field] = "x\u{0}y".into();
            assert_eq!(dec(&json.to_string()).unwrap_err(), DecodeError::Field(FieldError::Nul { field, at: 1 }), "{field}");
        }
        // A key the pipeline does not keep may hold anything.
        assert!(dec(r#"{"user_id":"u","timestamp":1795856400250,"url":"/a","other":"\u0000"}"#).is_ok());
    }

    #[test]
    fn fields_longer_than_their_limit_are_refused_and_the_limit_itself_is_accepted() {
        let id = |n: usize| format!(r#"{{"event_id":"{}","user_id":"u","timestamp":1795856400250,"url":"/a"}}"#, "e".repeat(n));
        assert!(dec(&id(ID_MAX_BYTES)).is_ok());
        assert_eq!(
            dec(&id(ID_MAX_BYTES + 1)).unwrap_err(),
            DecodeError::Field(FieldError::TooLong { field: "event_id", len: 257, max: 256 })
        );
        let url = |n: usize| format!(r#"{{"user_id":"u","timestamp":1795856400250,"url":"/{}"}}"#, "p".repeat(n - 1));
        assert!(dec(&url(crate::stages::record::limits::TEXT_MAX_BYTES)).is_ok());
        assert_eq!(dec(&url(crate::stages::record::limits::TEXT_MAX_BYTES + 1)).unwrap_err().kind(), "field_too_long");
    }

    #[test]
    fn timestamps_outside_the_configured_range_are_refused() {
        let at = |ts: &str| dec(&format!(r#"{{"user_id":"u","timestamp":{ts},"url":"/a"}}"#));
        assert!(at("946684800000").is_ok(), "the lower bound itself");
        assert_eq!(at("946684799999").unwrap_err().kind(), "timestamp_out_of_range");
        assert!(at(&(NOW_MS + 86_400_000).to_string()).is_ok(), "a day ahead, the allowed skew");
        assert_eq!(at(&(NOW_MS + 86_400_001).to_string()).unwrap_err().kind(), "timestamp_out_of_range");
        // Beyond PostgreSQL's timestamptz (year 294276) and i64 itself.
        let err = at("9223372036854775807").unwrap_err();
        assert!(err.to_string().contains("outside the accepted range"), "{err}");
        assert_eq!(at(r#""0001-01-01T00:00:00Z""#).unwrap_err().kind(), "timestamp_out_of_range");
        assert_eq!(at("-62135596800000").unwrap_err().kind(), "timestamp_out_of_range");
    }

    #[test]
    fn an_event_older_than_max_past_days_is_too_old_and_the_bound_itself_is_accepted() {
        const DAY_MS: i64 = 86_400_000;
        let limits = DecodeLimits { max_past_ms: 400 * DAY_MS, ..LIMITS };
        let at = |ts: i64| decode(format!(r#"{{"user_id":"u","timestamp":{ts},"url":"/a"}}"#).as_bytes(), &limits, NOW_MS, || "d".into());
        assert!(at(NOW_MS - 400 * DAY_MS).is_ok(), "400 days back, the bound itself");
        let err = at(NOW_MS - 400 * DAY_MS - 1).unwrap_err();
        assert_eq!(err.kind(), "too_old");
        let text = err.to_string();
        assert!(text.contains("source.max_past_days = 400") && text.contains("400 days before"), "{text}");
        // Before min_event_time is still out of range, whatever its age.
        assert_eq!(at(946_684_799_999).unwrap_err().kind(), "timestamp_out_of_range");
        // Unbounded (max_past_days = 0): only min_event_time applies.
        assert!(decode(br#"{"user_id":"u","timestamp":946684800000,"url":"/a"}"#, &LIMITS, NOW_MS, || "d".into()).is_ok());
    }
}
