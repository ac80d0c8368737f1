//! What a record of either MMDB layout says: the flat one of the
//! `@ip-location-db` packages (`country_code`, `city`) and MaxMind's nested
//! GeoIP2 one (`country.iso_code`, `city.names.en`).

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::GeoLocation;

/// The fields of either layout; `country` and `city` are a string in one and
/// a map in the other, so they go through [`NameOrNames`].
#[derive(Deserialize)]
pub(super) struct Record {
    country_code: Option<String>,
    country: Option<NameOrNames>,
    city: Option<NameOrNames>,
}

impl Record {
    /// The country and city it names; an empty name is no name.
    pub(super) fn location(self) -> GeoLocation {
        let non_empty = |name: Option<String>| name.filter(|n| !n.is_empty());
        GeoLocation {
            country: non_empty(self.country_code.or(self.country.and_then(|c| c.0))),
            city: non_empty(self.city.and_then(|c| c.0)),
        }
    }
}

/// A plain string, or a GeoIP2 map holding `iso_code` (countries) or
/// `names.en` (cities).
struct NameOrNames(Option<String>);

impl<'de> Deserialize<'de> for NameOrNames {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NameOrNames;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name or a GeoIP2 map with iso_code or names")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NameOrNames(Some(v.to_string())))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut iso_code = None;
                let mut english = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "iso_code" => iso_code = Some(map.next_value::<String>()?),
                        "names" => {
                            let names: std::collections::BTreeMap<String, String> = map.next_value()?;
                            english = names.get("en").cloned();
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(NameOrNames(iso_code.or(english)))
            }
        }
        deserializer.deserialize_any(V)
    }
}
