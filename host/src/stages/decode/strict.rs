//! JSON as `serde_json` reads it, except that a key repeated within one
//! object, at any depth, is an error naming its path (`user_id`,
//! `attributes.plan`, `items[1].id`) instead of the last value winning; the
//! decoder says why it refuses such a record. Apart from the decoder
//! because it is the one part written against serde's visitor API.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::map::Entry;
use serde_json::{Map, Number, Value};

/// Why bytes are not a JSON value the decoder takes.
pub(super) enum Malformed {
    /// A key appears twice in one object; the path names it.
    RepeatedKey(String),
    /// Not JSON, as the parser says.
    NotJson(serde_json::Error),
}

/// Parses `bytes` as one JSON value, refusing a key repeated within an object.
pub(super) fn parse(bytes: &[u8]) -> Result<Value, Malformed> {
    let repeated = Cell::new(None);
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let parsed = Strict { at: KeyPath::Root, repeated: &repeated }.deserialize(&mut json).and_then(|value| json.end().map(|()| value));
    parsed.map_err(|e| match repeated.take() {
        Some(key) => Malformed::RepeatedKey(key),
        None => Malformed::NotJson(e),
    })
}

/// Where a value sits in the record, to name a repeated key; built on the
/// stack as the parser descends, rendered only when a key repeats.
#[derive(Clone, Copy)]
enum KeyPath<'a> {
    Root,
    Key(&'a KeyPath<'a>, &'a str),
    Index(&'a KeyPath<'a>, usize),
}

impl fmt::Display for KeyPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPath::Root => Ok(()),
            KeyPath::Key(KeyPath::Root, key) => write!(f, "{key}"),
            KeyPath::Key(parent, key) => write!(f, "{parent}.{key}"),
            KeyPath::Index(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A [`Value`] as `serde_json` builds it, except that a repeated key is an
/// error (its path left in `repeated`) instead of replacing the first value.
struct Strict<'a> {
    at: KeyPath<'a>,
    repeated: &'a Cell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict { at: KeyPath::Index(&self.at, items.len()), repeated: self.repeated })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match object.entry(key) {
                Entry::Vacant(slot) => {
                    let value = map.next_value_seed(Strict { at: KeyPath::Key(&self.at, slot.key()), repeated: self.repeated })?;
                    slot.insert(value);
                }
                Entry::Occupied(first) => {
                    self.repeated.set(Some(KeyPath::Key(&self.at, first.key()).to_string()));
                    return Err(de::Error::custom(format_args!("key `{}` repeated", first.key())));
                }
            }
        }
        Ok(Value::Object(object))
    }
}
