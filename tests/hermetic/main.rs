//! The integration tests that need no running services: the plugin host,
//! the sandbox and artifacts on the built plugins, GeoIP on MMDB files, and
//! the plugin author's loop through the real toolchains. Plain `cargo test`
//! runs them; `scripts/test` runs them with the stack's tests (`tests/stack/`).
//!
//! One binary with a module per area: linking the host once instead of once
//! per file is most of what a test build costs.

mod artifacts;
mod geoip;
mod plugin_author;
mod plugin_host;
mod sandbox;

/// A file in `tests/hermetic/` or `tests/stack/` that no `mod` line names
/// would compile into nothing and never run; this test notices it.
#[test]
fn every_test_file_is_a_module_of_its_binary() {
    let tests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests");
    let mut missing = Vec::new();
    for binary in ["hermetic", "stack"] {
        let dir = tests.join(binary);
        let main = std::fs::read_to_string(dir.join("main.rs")).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(module) = name.strip_suffix(".rs") else { continue };
            if module != "main" && !main.lines().any(|l| l.trim() == format!("mod {module};")) {
                missing.push(format!("tests/{binary}/{name}"));
            }
        }
    }
    assert!(missing.is_empty(), "test files no `mod` line names, so they never run: {missing:?}");
}
