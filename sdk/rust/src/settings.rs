//! A plugin's `settings` table, typed. pipeline.toml gives every value as
//! text (`settings = { ipv4_prefix = "24", markers = "curl/,wget/" }`);
//! [`from_pairs`] reads it into the plugin's own serde type, parsing
//! numbers, `true`/`false`, comma-separated lists and unit enum variants
//! from the text.
//!
//! Declare the type with `#[serde(default, deny_unknown_fields)]`: a key
//! left out takes its default, and a mistyped one is refused by name
//! (`unknown field \`prefix\`, expected one of ...`), so a typo never goes
//! unnoticed.

use std::fmt;

use serde::de::value::{SeqDeserializer, StringDeserializer};
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

/// Settings for a plugin that takes none: any key is refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// `configure`: the instance `new` makes from the settings, kept in `slot`,
/// or why not.
#[doc(hidden)]
pub fn configure<S: DeserializeOwned, T>(
    slot: &std::cell::RefCell<Option<T>>,
    pairs: Vec<(String, String)>,
    new: fn(S) -> Result<T, String>,
) -> Result<(), String> {
    let instance = new(from_pairs(pairs)?)?;
    *slot.borrow_mut() = Some(instance);
    Ok(())
}

/// The instance in `slot`. The host configures one before any call; one
/// that was not is made with no settings.
#[doc(hidden)]
pub fn instance<'a, S: DeserializeOwned, T>(
    slot: &'a std::cell::RefCell<Option<T>>,
    new: fn(S) -> Result<T, String>,
    name: &str,
) -> std::cell::RefMut<'a, T> {
    let mut slot = slot.borrow_mut();
    if slot.is_none() {
        let made = from_pairs(Vec::new()).and_then(new);
        *slot = Some(made.unwrap_or_else(|e| panic!("{name} was not configured and cannot start without settings: {e}")));
    }
    std::cell::RefMut::map(slot, |slot| slot.as_mut().expect("made above"))
}

/// Reads `pairs` (key, text) into `T`; the error names the key at fault.
pub fn from_pairs<T: DeserializeOwned>(pairs: Vec<(String, String)>) -> Result<T, String> {
    T::deserialize(Pairs(pairs)).map_err(|e| e.0)
}

/// Why the settings were refused.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }

    /// Without what was found: the caller quotes the text already, and
    /// formatting serde's `Unexpected` would link float formatting into
    /// every plugin (a third of a small component).
    fn invalid_type(_found: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Error(format!("expected {expected}"))
    }

    fn invalid_value(_found: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Error(format!("expected {expected}"))
    }
}

/// The whole table, as a map.
struct Pairs(Vec<(String, String)>);

impl<'de> de::Deserializer<'de> for Pairs {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(Entries { pairs: self.0.into_iter(), value: None })
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct Entries {
    pairs: std::vec::IntoIter<(String, String)>,
    value: Option<(String, String)>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.pairs.next() else { return Ok(None) };
        let read = seed.deserialize(StringDeserializer::<Error>::new(key.clone()))?;
        self.value = Some((key, value));
        Ok(Some(read))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (key, value) = self.value.take().ok_or_else(|| Error("a value without its key".into()))?;
        seed.deserialize(Text(value.clone())).map_err(|e| Error(format!("{key} = `{value}`: {e}")))
    }
}

/// One value's text, parsed as what the plugin's type asks for.
struct Text(String);

impl Text {
    fn parse<T: std::str::FromStr>(&self, expected: &str) -> Result<T, Error> {
        self.0.trim().parse().map_err(|_| Error(format!("expected {expected}")))
    }
}

macro_rules! numbers {
    ($($method:ident $visit:ident $ty:ty, $expected:expr;)*) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit(self.parse::<$ty>(&$expected)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Text {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_string(self.0)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0.trim() {
            "true" => visitor.visit_bool(true),
            "false" => visitor.visit_bool(false),
            _ => Err(Error("expected `true` or `false`".into())),
        }
    }

    numbers! {
        deserialize_i8 visit_i8 i8, format!("a whole number from {} to {}", i8::MIN, i8::MAX);
        deserialize_i16 visit_i16 i16, format!("a whole number from {} to {}", i16::MIN, i16::MAX);
        deserialize_i32 visit_i32 i32, format!("a whole number from {} to {}", i32::MIN, i32::MAX);
        deserialize_i64 visit_i64 i64, format!("a whole number from {} to {}", i64::MIN, i64::MAX);
        deserialize_u8 visit_u8 u8, format!("a whole number from 0 to {}", u8::MAX);
        deserialize_u16 visit_u16 u16, format!("a whole number from 0 to {}", u16::MAX);
        deserialize_u32 visit_u32 u32, format!("a whole number from 0 to {}", u32::MAX);
        deserialize_u64 visit_u64 u64, format!("a whole number from 0 to {}", u64::MAX);
        deserialize_f32 visit_f32 f32, "a number";
        deserialize_f64 visit_f64 f64, "a number";
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    /// A list is comma-separated; blanks around items and empty items are dropped.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items: Vec<Text> = self.0.split(',').map(str::trim).filter(|item| !item.is_empty()).map(|item| Text(item.into())).collect();
        visitor.visit_seq(SeqDeserializer::new(items.into_iter()))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        StringDeserializer::<Error>::new(self.0.trim().to_string()).deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct tuple tuple_struct map struct identifier ignored_any
    }
}

impl<'de> IntoDeserializer<'de, Error> for Text {
    type Deserializer = Text;

    fn into_deserializer(self) -> Text {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Invalid {
        Clear,
        Keep,
    }

    #[derive(Debug, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        prefix: u8,
        markers: Vec<String>,
        strict: bool,
        ratio: f64,
        invalid: Invalid,
        label: Option<String>,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings { prefix: 24, markers: vec!["bot".into()], strict: false, ratio: 0.5, invalid: Invalid::Clear, label: None }
        }
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        from_pairs(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn keys_left_out_take_their_defaults() {
        assert_eq!(read(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn each_kind_of_value_is_read_from_its_text() {
        let s = read(&[
            ("prefix", " 16 "),
            ("markers", "curl/, wget/,,"),
            ("strict", "true"),
            ("ratio", "0.25"),
            ("invalid", "keep"),
            ("label", "x"),
        ])
        .unwrap();
        assert_eq!(
            s,
            Settings {
                prefix: 16,
                markers: vec!["curl/".into(), "wget/".into()],
                strict: true,
                ratio: 0.25,
                invalid: Invalid::Keep,
                label: Some("x".into())
            }
        );
    }

    #[test]
    fn an_unknown_key_is_refused_by_name_with_the_keys_accepted() {
        let e = read(&[("prefx", "8")]).unwrap_err();
        assert!(e.contains("`prefx`") && e.contains("`prefix`") && e.contains("`markers`"), "{e}");
    }

    #[test]
    fn a_bad_value_is_refused_naming_its_key_its_text_and_what_was_expected() {
        assert_eq!(read(&[("prefix", "300")]).unwrap_err(), "prefix = `300`: expected a whole number from 0 to 255");
        assert_eq!(read(&[("strict", "yes")]).unwrap_err(), "strict = `yes`: expected `true` or `false`");
        let e = read(&[("invalid", "drop")]).unwrap_err();
        assert!(e.starts_with("invalid = `drop`: unknown variant `drop`") && e.contains("`clear`"), "{e}");
    }

    #[test]
    fn a_plugin_that_takes_no_settings_refuses_any() {
        assert!(from_pairs::<NoSettings>(Vec::new()).is_ok());
        assert!(from_pairs::<NoSettings>(vec![("x".into(), "1".into())]).unwrap_err().contains("unknown field `x`"));
    }
}
