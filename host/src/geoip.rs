//! IP → country and city, from an MMDB database the host owns.
//!
//! The enrich plugin reaches this through the `geoip` WIT import, so a plugin
//! swap never reloads the database. Two record layouts are read: the flat one
//! of the `@ip-location-db` packages (`country_code`, `city`) and MaxMind's
//! nested GeoIP2 one (`country.iso_code`, `city.names.en`).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// Where an IP address is, as far as the database knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GeoLocation {
    /// ISO 3166-1 alpha-2 country code.
    pub country: Option<String>,
    /// City name in English.
    pub city: Option<String>,
}

/// Errors opening a GeoIP database.
#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    /// The file is missing or is not an MMDB database.
    #[error("cannot open GeoIP database {path}: {source} (run `scripts/services up` to download one, or set [geoip] city_db in pipeline.toml)")]
    Open {
        /// The file that was opened.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: maxminddb::MaxMindDbError,
    },
}

/// One or more MMDB databases, memory-mapped so their pages are shared and
/// only the ones touched stay resident. A lookup takes the country from the
/// first database that has one, and the city likewise, so a city database
/// can be backed by a country one.
pub struct GeoIp {
    readers: Vec<(PathBuf, maxminddb::Reader<maxminddb::Mmap>)>,
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.readers.iter().map(|(p, _)| p)).finish()
    }
}

impl GeoIp {
    /// Opens MMDB files, to be consulted in the given order.
    pub fn open(paths: &[PathBuf]) -> Result<GeoIp, GeoIpError> {
        let readers = paths
            .iter()
            .map(|path| {
                maxminddb::Reader::open_mmap(path)
                    .map(|reader| (path.clone(), reader))
                    .map_err(|source| GeoIpError::Open {
                        path: path.clone(),
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(GeoIp { readers })
    }

    /// The files, in lookup order, with each one's database type (e.g. `GeoLite2-City`).
    pub fn databases(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.readers
            .iter()
            .map(|(p, r)| (p.as_path(), r.metadata.database_type.as_str()))
    }

    /// Looks up an address in text form. `None` for text that is not an IP
    /// address and for addresses no database has a record of (private and
    /// loopback ranges among them).
    pub fn lookup(&self, ip: &str) -> Option<GeoLocation> {
        let ip: IpAddr = ip.trim().parse().ok()?;
        let mut found = GeoLocation::default();
        for (_, reader) in &self.readers {
            // A v4-only database answers a v6 lookup with an error: not found.
            let Ok(Some(record)) = reader.lookup::<Record>(ip) else {
                continue;
            };
            if found.country.is_none() {
                found.country = record
                    .country_code
                    .or(record.country.and_then(|c| c.0))
                    .filter(|c| !c.is_empty());
            }
            if found.city.is_none() {
                found.city = record.city.and_then(|c| c.0).filter(|c| !c.is_empty());
            }
            if found.country.is_some() && found.city.is_some() {
                break;
            }
        }
        (found != GeoLocation::default()).then_some(found)
    }
}

/// The fields of either layout; `country` and `city` are a string in one and
/// a map in the other, so they go through [`NameOrNames`].
#[derive(Deserialize)]
struct Record {
    country_code: Option<String>,
    country: Option<NameOrNames>,
    city: Option<NameOrNames>,
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
