//! The limits every string of an event is held to, at decode and again on
//! what a plugin returns: PostgreSQL's `text` cannot hold a NUL character,
//! and an index row must stay under ~2.7 kB.
//!
//! The checks of the events themselves are here too, beside the limits
//! they apply, so that a new limit and its check change one file.

use super::{Enrichment, RawEvent, TransformEvent, Value};

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

impl RawEvent {
    /// Every string but the event id (checked before one is derived) within
    /// its limit and free of NUL characters.
    pub fn check_fields(&self) -> Result<(), FieldError> {
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
    /// Every label within [`LABEL_MAX_BYTES`] and free of NUL characters.
    pub fn check_fields(&self) -> Result<(), FieldError> {
        for (field, value) in [("country", &self.country), ("city", &self.city), ("browser", &self.browser), ("os", &self.os)] {
            check_text(field, value.as_deref().unwrap_or_default(), LABEL_MAX_BYTES)?;
        }
        Ok(())
    }
}

impl TransformEvent {
    /// Every string within its limit and free of NUL characters; attribute
    /// keys unique, at most [`MAX_ATTRIBUTES`] of them, floats finite.
    pub fn check_fields(&self) -> Result<(), FieldError> {
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
