//! Whether an MMDB file may serve lookups: the same check at start and for
//! a file replaced while the pipeline runs, callable on its own (as
//! `clickstream validate` and the tests do). It reads the file, touches
//! nothing else, and answers with the open database or the reason it is
//! refused.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::panic::AssertUnwindSafe;
use std::path::Path;

use maxminddb::{MaxMindDbError, Metadata, Mmap, Reader};

use super::record::Record;
use super::stamp::FileStamp;
use super::GeoIpError;

/// Addresses every complete database places in a country: the anycast
/// resolvers of Google, Cloudflare, Quad9 and OpenDNS, whose networks have
/// not moved in a decade. Each record must decode, and a country the
/// serving file gives one of them must not vanish from its replacement: a
/// file cut short or built from the wrong source loses them first.
pub const PROBES: [IpAddr; 7] = [
    IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)),
    IpAddr::V4(Ipv4Addr::new(1, 1, 1, 1)),
    IpAddr::V4(Ipv4Addr::new(9, 9, 9, 9)),
    IpAddr::V4(Ipv4Addr::new(208, 67, 222, 222)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888)),
    IpAddr::V6(Ipv6Addr::new(0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1111)),
    IpAddr::V6(Ipv6Addr::new(0x2620, 0xfe, 0, 0, 0, 0, 0, 0xfe)),
];

/// Zero bytes between the search tree and the data section (MMDB spec).
const DATA_SECTION_SEPARATOR: u64 = 16;

/// A file that passed [`check`]: open, with what the probes answered.
pub struct Checked {
    pub(super) reader: Reader<Mmap>,
    /// maxminddb does not refuse an IPv6 lookup in an IPv4-only database:
    /// it walks the 32-bit tree with the address's first 32 bits and answers
    /// with an unrelated IPv4 network's record (`2001:4860::` reads as
    /// `32.1.72.96`), so lookups skip such databases for IPv6 addresses.
    pub(super) holds_ipv6: bool,
    /// The country of each probe this database could be asked about.
    countries: Vec<(IpAddr, Option<String>)>,
    /// The version of the file that was checked, to tell a later one by.
    pub(super) stamp: FileStamp,
}

impl Checked {
    /// The file's metadata: database type, IP version, build date.
    pub fn metadata(&self) -> &Metadata {
        &self.reader.metadata
    }

    /// What each [`PROBES`] address this database holds (IPv6 ones only in
    /// an IPv6 database) answered: its country, if any.
    pub fn probe_countries(&self) -> &[(IpAddr, Option<String>)] {
        &self.countries
    }
}

/// Opens `path` and checks it may serve: metadata sane (a database type,
/// IP version 4 or 6, a build date, a search tree that fits in the file)
/// and every [`PROBES`] address decoding. With `serving`, the file it
/// would replace, every probe `serving` places in a country must have one
/// in the new file too.
pub fn check(path: &Path, serving: Option<&Checked>) -> Result<Checked, GeoIpError> {
    // maxminddb indexes the file's bytes without bounds checks in places;
    // a hostile or damaged file must be refused, not take the host down.
    std::panic::catch_unwind(AssertUnwindSafe(|| check_unguarded(path, serving))).unwrap_or_else(|panic| {
        let reason = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
        Err(GeoIpError::Unreadable { path: path.to_path_buf(), reason: reason.unwrap_or_else(|| "the reader panicked".into()) })
    })
}

fn check_unguarded(path: &Path, serving: Option<&Checked>) -> Result<Checked, GeoIpError> {
    let (reader, stamp, file_bytes) = open(path)?;
    sane_metadata(path, &reader.metadata, file_bytes)?;
    let holds_ipv6 = reader.metadata.ip_version == 6;
    let countries = PROBES
        .into_iter()
        .filter(|ip| holds_ipv6 || ip.is_ipv4())
        .map(|ip| match reader.lookup::<Record>(ip) {
            Ok(record) => Ok((ip, record.and_then(|r| r.location().country))),
            Err(e) => Err(GeoIpError::Lookup { path: path.to_path_buf(), ip, reason: e.to_string() }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(serving) = serving {
        for (ip, country) in &serving.countries {
            let kept = countries.iter().any(|(new_ip, new_country)| new_ip == ip && new_country.is_some());
            if let (Some(country), false) = (country, kept) {
                return Err(GeoIpError::LostCountry { path: path.to_path_buf(), ip: *ip, country: country.clone() });
            }
        }
    }
    Ok(Checked { reader, holds_ipv6, countries, stamp })
}

/// Maps the file, and says which version it is and how long it was when
/// mapped: the layout check must measure the very file the reader reads,
/// not one renamed over it since.
fn open(path: &Path) -> Result<(Reader<Mmap>, FileStamp, u64), GeoIpError> {
    let failed = |source| GeoIpError::Open { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(|e| failed(MaxMindDbError::Io(e)))?;
    let metadata = file.metadata().map_err(|e| failed(MaxMindDbError::Io(e)))?;
    // SAFETY: as in maxminddb's own `open_mmap`: the mapping stays sound as
    // long as nobody writes this file in place. Databases are replaced by
    // renaming a new file over the old one (docs/operations.md, "Live GeoIP refresh"),
    // which leaves this mapping on the old file.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| failed(MaxMindDbError::Mmap(e)))?;
    Ok((Reader::from_source(map).map_err(failed)?, FileStamp::from(&metadata), metadata.len()))
}

/// Metadata a database that answers lookups must have; the search tree's
/// size is checked against the file so that walking it stays inside.
fn sane_metadata(path: &Path, metadata: &Metadata, file_bytes: u64) -> Result<(), GeoIpError> {
    let path = path.to_path_buf();
    if metadata.database_type.trim().is_empty() {
        return Err(GeoIpError::NoDatabaseType { path });
    }
    if !matches!(metadata.ip_version, 4 | 6) {
        return Err(GeoIpError::IpVersion { path, ip_version: metadata.ip_version });
    }
    if metadata.build_epoch == 0 {
        return Err(GeoIpError::NoBuildEpoch { path });
    }
    if !matches!(metadata.record_size, 24 | 28 | 32) {
        return Err(GeoIpError::RecordSize { path, record_size: metadata.record_size });
    }
    // Each node holds two records.
    let tree_bytes = u64::from(metadata.node_count) * u64::from(metadata.record_size) / 4;
    if tree_bytes + DATA_SECTION_SEPARATOR > file_bytes {
        return Err(GeoIpError::Layout {
            path,
            node_count: metadata.node_count,
            record_size: metadata.record_size,
            tree_bytes,
            file_bytes,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(node_count: u32, record_size: u16) -> Metadata {
        Metadata {
            binary_format_major_version: 2,
            binary_format_minor_version: 0,
            build_epoch: 1_700_000_000,
            database_type: "test".into(),
            description: Default::default(),
            ip_version: 6,
            languages: vec![],
            node_count,
            record_size,
        }
    }

    #[test]
    fn a_search_tree_longer_than_the_file_is_refused() {
        let path = Path::new("x.mmdb");
        // 100 nodes of two 24-bit records: 600 bytes, then 16 zero bytes.
        assert!(sane_metadata(path, &metadata(100, 24), 616).is_ok());
        assert!(matches!(sane_metadata(path, &metadata(100, 24), 615), Err(GeoIpError::Layout { tree_bytes: 600, file_bytes: 615, .. })));
        assert!(matches!(sane_metadata(path, &metadata(100, 28), 715), Err(GeoIpError::Layout { tree_bytes: 700, .. })));
        assert!(matches!(sane_metadata(path, &metadata(u32::MAX, 32), u64::MAX / 2), Ok(())));
        assert!(matches!(sane_metadata(path, &metadata(100, 20), 10_000), Err(GeoIpError::RecordSize { record_size: 20, .. })));
    }

    #[test]
    fn metadata_without_a_type_a_build_date_or_a_known_ip_version_is_refused() {
        let path = Path::new("x.mmdb");
        let with = |change: fn(&mut Metadata)| {
            let mut m = metadata(1, 24);
            change(&mut m);
            sane_metadata(path, &m, 1 << 20)
        };
        assert!(matches!(with(|m| m.database_type = " ".into()), Err(GeoIpError::NoDatabaseType { .. })));
        assert!(matches!(with(|m| m.ip_version = 5), Err(GeoIpError::IpVersion { ip_version: 5, .. })));
        assert!(matches!(with(|m| m.build_epoch = 0), Err(GeoIpError::NoBuildEpoch { .. })));
        assert!(with(|m| m.ip_version = 4).is_ok());
    }

    #[test]
    fn garbage_an_empty_file_and_a_missing_file_are_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.mmdb");
        std::fs::write(&garbage, b"not an mmdb file at all, just text".repeat(100)).unwrap();
        let empty = dir.path().join("empty.mmdb");
        std::fs::write(&empty, b"").unwrap();
        for path in [garbage, empty, dir.path().join("missing.mmdb")] {
            let refused = check(&path, None).err();
            assert!(matches!(&refused, Some(GeoIpError::Open { path: p, .. }) if *p == path), "{}: {refused:?}", path.display());
        }
    }
}
