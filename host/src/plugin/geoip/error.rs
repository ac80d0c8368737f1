//! Why a GeoIP database was not opened, or a new version of one was refused.

use std::net::IpAddr;
use std::path::PathBuf;

/// Why an MMDB file may not serve lookups. At start this stops the
/// pipeline; for a file replaced while running, it refuses the new file
/// and the loaded one keeps serving.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum GeoIpError {
    /// The file is missing or is not an MMDB database.
    #[error("cannot open GeoIP database {path}: {source} (a missing file: run `scripts/services up geoip` to download the default ones, or list other files in `geoip.databases` in pipeline.toml; a damaged one: write it again, e.g. `scripts/services geoip-update`)")]
    Open {
        path: PathBuf,
        #[source]
        source: maxminddb::MaxMindDbError,
    },
    /// The reader gave up on the file's bytes (it panicked on them).
    #[error("GeoIP database {path}: unreadable ({reason}): a damaged or truncated MMDB file; write it again")]
    Unreadable { path: PathBuf, reason: String },
    /// The metadata names no database type.
    #[error("GeoIP database {path}: its metadata has an empty database_type; not an MMDB file made for lookups (rebuild it with a writer that sets one)")]
    NoDatabaseType { path: PathBuf },
    /// The metadata's `ip_version` is neither 4 nor 6.
    #[error("GeoIP database {path}: its metadata says ip_version {ip_version}; an MMDB file holds 4 or 6")]
    IpVersion { path: PathBuf, ip_version: u16 },
    /// The metadata does not say when the file was built.
    #[error("GeoIP database {path}: its metadata has build_epoch 0; an MMDB file says when it was built (rebuild it with a writer that sets it)")]
    NoBuildEpoch { path: PathBuf },
    /// Records of a size the format does not have.
    #[error("GeoIP database {path}: its metadata says record_size {record_size}; MMDB records are 24, 28 or 32 bits")]
    RecordSize { path: PathBuf, record_size: u16 },
    /// The search tree the metadata announces is longer than the file.
    #[error("GeoIP database {path}: its search tree ({node_count} nodes of {record_size}-bit records, {tree_bytes} bytes and a 16-byte separator) does not fit in the file ({file_bytes} bytes): truncated or damaged")]
    Layout { path: PathBuf, node_count: u32, record_size: u16, tree_bytes: u64, file_bytes: u64 },
    /// A known address's record does not decode.
    #[error("GeoIP database {path}: the record of {ip} does not decode ({reason}): a damaged file, or records in a layout the host does not read (flat `country_code`/`city`, or GeoIP2 `country.iso_code`/`city.names.en`)")]
    Lookup { path: PathBuf, ip: IpAddr, reason: String },
    /// A known address the serving file places in a country has none in the new file.
    #[error("GeoIP database {path}: has no country for {ip}, which the serving file places in {country}: a partial or wrong file")]
    LostCountry { path: PathBuf, ip: IpAddr, country: String },
}
