//! Where the services' programs are on this machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `name` in a folder of `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|file| is_executable(file))
}

fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    file.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The nisshi broker: on `PATH`, else where `cargo install` puts it.
pub fn nisshi_bin() -> Option<PathBuf> {
    on_path("nisshi").or_else(|| {
        let installed = PathBuf::from(std::env::var_os("HOME")?).join(".cargo/bin/nisshi");
        is_executable(&installed).then_some(installed)
    })
}

/// The folder of the `osmem_server` Python package, when python3 can import it.
pub fn osmem_dir() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import osmem_server,os;print(os.path.dirname(osmem_server.__file__))"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !dir.trim().is_empty()).then(|| PathBuf::from(dir.trim()))
}

/// The `osmem-server` program the Python package ships.
pub fn osmem_bin() -> Option<PathBuf> {
    Some(osmem_dir()?.join("bin/osmem-server")).filter(|bin| is_executable(bin))
}

/// The folder holding PostgreSQL's `initdb` and `pg_ctl`: `PATH`'s first,
/// else the newest `/usr/lib/postgresql/VERSION/bin`.
pub fn pg_bindir() -> Option<PathBuf> {
    let has_both = |dir: &Path| is_executable(&dir.join("initdb")) && is_executable(&dir.join("pg_ctl"));
    if let Some(dir) = on_path("pg_ctl").and_then(|f| f.canonicalize().ok()).and_then(|f| f.parent().map(Path::to_path_buf)) {
        if has_both(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.split('.').map(|n| n.parse().ok()).collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// This process runs as root (initdb and postgres refuse to).
pub fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\tsaved\tfs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| status.lines().find_map(|l| l.strip_prefix("Uid:")).map(|ids| ids.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// A `major.minor` version at least `min`, from a version such as `1.96.0-nightly`.
pub fn version_at_least(version: &str, min: (u32, u32)) -> bool {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= min,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_as_numbers_not_as_text() {
        assert!(version_at_least("1.96.0", (1, 96)));
        assert!(version_at_least("1.100.0-nightly", (1, 96)));
        assert!(version_at_least("2.0.0", (1, 96)));
        assert!(!version_at_least("1.95.0", (1, 96)));
        assert!(!version_at_least("1.9", (1, 96)));
        assert!(!version_at_least("nightly", (1, 96)));
    }
}
