//! Record bytes → [`RawClick`], with a reason for every refusal.
//!
//! The event format (README, "Event format"): a JSON object with `user_id`
//! (string), `timestamp` (epoch milliseconds as an integer, or an RFC 3339
//! string) and `url` (string), all required; `event_id`, `ip`, `user_agent`,
//! `referrer` and `session_id` (strings) are optional. Other keys are ignored,
//! so trackers can send more than the pipeline reads.

use serde_json::{Map, Value};

use crate::plugin::enrich::RawClick;

/// Why a record is not a click. The message is what a user sees in the
/// dead-letter list, so it says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Larger than `source.max_record_bytes`; not parsed at all.
    #[error("record is {size} bytes, larger than source.max_record_bytes = {max}")]
    TooLarge {
        /// The record's size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Not valid JSON, or not a JSON object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A required key is absent or null.
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    /// A key has the wrong JSON type.
    #[error("field `{field}` must be {expected}, got {got}")]
    WrongType {
        /// The key.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
        /// What it was.
        got: String,
    },
}

impl DecodeError {
    /// A short label for metrics (`dead_lettered{reason=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson(_) => "not_json",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
        }
    }
}

/// Decodes one record. `derived_event_id` supplies the id of a record that
/// carries none (the source derives it from topic, partition and offset, so a
/// redelivery maps to the same id).
pub fn decode(bytes: &[u8], max_bytes: usize, derived_event_id: impl FnOnce() -> String) -> Result<RawClick, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            max: max_bytes,
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::NotJson(format!("got {}", describe(&value))));
    };
    let event_id = optional_string(&mut obj, "event_id")?
        .filter(|id| !id.is_empty())
        .unwrap_or_else(derived_event_id);
    Ok(RawClick {
        event_id,
        user_id: required_string(&mut obj, "user_id")?,
        timestamp_ms: timestamp(&mut obj)?,
        url: required_string(&mut obj, "url")?,
        ip: optional_string(&mut obj, "ip")?.unwrap_or_default(),
        user_agent: optional_string(&mut obj, "user_agent")?.unwrap_or_default(),
        referrer: optional_string(&mut obj, "referrer")?,
        session_id: optional_string(&mut obj, "session_id")?,
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
        Some(other) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
            got: describe(&other),
        }),
    }
}

fn required_string(obj: &mut Map<String, Value>, field: &'static str) -> Result<String, DecodeError> {
    optional_string(obj, field)?.ok_or(DecodeError::MissingField(field))
}

fn timestamp(obj: &mut Map<String, Value>) -> Result<i64, DecodeError> {
    const EXPECTED: &str = "epoch milliseconds (an integer) or an RFC 3339 string";
    let wrong = |got: &Value| DecodeError::WrongType {
        field: "timestamp",
        expected: EXPECTED,
        got: describe(got),
    };
    match obj.remove("timestamp") {
        None | Some(Value::Null) => Err(DecodeError::MissingField("timestamp")),
        Some(Value::Number(n)) => n.as_i64().ok_or_else(|| wrong(&Value::Number(n))),
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(&s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| wrong(&Value::String(s))),
        Some(other) => Err(wrong(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(json: &str) -> Result<RawClick, DecodeError> {
        decode(json.as_bytes(), 65536, || "derived".into())
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
        let err = decode(&[b' '; 300], 256, || unreachable!()).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { size: 300, max: 256 });
    }
}
