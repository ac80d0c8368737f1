//! The WASM plugins as the tests load them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::root;

/// Builds the WASM plugins once per test process (cargo skips what is up to
/// date) and returns the path of an installed one, e.g. `plugin("enrich")`.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(root().join("scripts/build-plugins")).status().expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed: {status}");
    });
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} missing after scripts/build-plugins", path.display());
    path
}

/// The version the built enrich plugin reports (what it stamps on events).
pub fn enrich_version() -> String {
    let spec =
        clickstream::plugin::PluginSpec { slot: "enrich".into(), path: plugin("enrich"), settings: vec![], limits: Default::default() };
    clickstream::plugin::transform::LoadedTransform::load(spec, None).unwrap().info.version.clone()
}
