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

/// The component of the built plugin `name` made a build no process has
/// seen: the same code with a custom section holding `nonce` appended (a
/// different SHA-256, so no cache knows it).
pub fn unseen_build(name: &str, nonce: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            out.push(if n == 0 { byte } else { byte | 0x80 });
            if n == 0 {
                break;
            }
        }
    }
    let mut bytes = std::fs::read(plugin(name)).expect("read the built plugin");
    let mut section = Vec::new();
    leb("clickstream-test-nonce".len(), &mut section);
    section.extend_from_slice(b"clickstream-test-nonce");
    section.extend_from_slice(nonce.as_bytes());
    bytes.push(0);
    leb(section.len(), &mut bytes);
    bytes.extend_from_slice(&section);
    bytes
}
