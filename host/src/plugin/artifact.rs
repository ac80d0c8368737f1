//! Precompiled plugins (`.cwasm`): native code the host loads without
//! compiling, sealed so that only code this host's operators compiled is
//! ever loaded.
//!
//! Trust model: `Component::deserialize` maps the bytes as executable code
//! and trusts them completely, so a `.cwasm` is as powerful as the host
//! binary. An artifact is therefore accepted only when it carries an
//! HMAC-SHA256 tag made with the host's artifact key (a 32-byte file, 0600,
//! [`ArtifactKey`]): whoever can read or write that key can make the host
//! run native code of their choosing, and must be trusted like whoever can
//! replace the binary. A key file another user owns, others may read or
//! write, or that is not whole is refused (`key`), and then no artifact is. Everything else about an artifact is checked before its payload
//! is touched: the format, its length, the tag, the engine it was compiled
//! for (a fingerprint of wasmtime's compatibility hash) and, when the source
//! `.wasm` is at hand, that the artifact names that file's SHA-256.
//!
//! Layout: `MAGIC`, the source component's SHA-256 (32 bytes), the engine
//! fingerprint (32), the payload length (u64, little endian), the tag (32),
//! then the payload (wasmtime's serialized component). The tag covers
//! everything but itself.

mod key;

use std::hash::Hasher;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Precompiled};

pub use key::{ArtifactKey, KeyError, KEY_BYTES};

/// The first bytes of every artifact (version 1 of the layout).
pub const MAGIC: &[u8; 16] = b"clickstream-aot1";

const HEADER: usize = MAGIC.len() + 32 + 32 + 8 + 32;

/// Why an artifact was refused. Each says what to do instead.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[allow(missing_docs)] // each #[error] says how it reads
pub enum ArtifactError {
    #[error("not a clickstream precompiled artifact (it does not start with {:?})", String::from_utf8_lossy(MAGIC))]
    NotAnArtifact,
    #[error("truncated: {len} bytes, the header says {expected}")]
    Truncated { len: u64, expected: u64 },
    #[error("not sealed with this host's artifact key (tampered with, or compiled with another key)")]
    Unauthenticated,
    #[error("compiled for another engine (fingerprint {found}, this host's {expected}): another wasmtime version or configuration; run `clickstream plugin compile` with this host's binary")]
    OtherEngine { found: String, expected: String },
    #[error("compiled from another component (sha256 {found}, the .wasm beside it is {expected}); compile the new .wasm again")]
    OtherSource { found: String, expected: String },
    #[error("wasmtime refused it: {0}")]
    Refused(String),
    #[error("no artifact key at {0}; `clickstream plugin compile` creates one")]
    NoKey(PathBuf),
    /// The key file is there but not trusted ([`KeyError`]'s message).
    #[error("{0}; until then no precompiled artifact is trusted and plugins are compiled from their .wasm")]
    KeyRefused(String),
}

impl ArtifactKey {
    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length")
    }
}

/// What identifies an engine's compiled code: wasmtime's precompile
/// compatibility hash (its version, target, compiler and settings), fed
/// into SHA-256 so that it is stable across processes.
pub fn fingerprint(engine: &Engine) -> [u8; 32] {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            unreachable!("only the digest is read")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut sha = Sha(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut sha);
    sha.0.finalize().into()
}

/// Hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compiles `source` (a component's bytes) with `engine` and seals it.
pub fn compile(engine: &Engine, key: &ArtifactKey, source: &[u8]) -> anyhow::Result<Vec<u8>> {
    let payload = engine.precompile_component(source).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(seal(engine, key, &Sha256::digest(source).into(), &payload))
}

/// Seals `payload` (wasmtime's serialized component, compiled by `engine`
/// from a component whose SHA-256 is `source`).
pub fn seal(engine: &Engine, key: &ArtifactKey, source: &[u8; 32], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(source);
    out.extend_from_slice(&fingerprint(engine));
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut mac = key.mac();
    mac.update(&out);
    mac.update(payload);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks an artifact and loads it into `engine`, returning the component
/// and the SHA-256 of the component it was compiled from. `source`, when
/// given, is the SHA-256 the artifact must name.
pub fn open(engine: &Engine, key: &ArtifactKey, bytes: &[u8], source: Option<&str>) -> Result<(Component, String), ArtifactError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(ArtifactError::NotAnArtifact);
    }
    if bytes.len() < HEADER {
        return Err(ArtifactError::Truncated { len: bytes.len() as u64, expected: HEADER as u64 });
    }
    let field = |at: usize, len: usize| &bytes[at..at + len];
    let named_source = hex(field(16, 32));
    let engine_print = field(48, 32);
    let len = u64::from_le_bytes(field(80, 8).try_into().expect("8 bytes"));
    let tag = field(88, 32);
    // The length is the file's to claim: any u64, so compared with what
    // follows the header rather than added to it.
    if (bytes.len() - HEADER) as u64 != len {
        return Err(ArtifactError::Truncated { len: bytes.len() as u64, expected: (HEADER as u64).saturating_add(len) });
    }
    let payload = &bytes[HEADER..];
    let mut mac = key.mac();
    mac.update(&bytes[..88]);
    mac.update(payload);
    mac.verify_slice(tag).map_err(|_| ArtifactError::Unauthenticated)?;
    let ours = fingerprint(engine);
    if engine_print != ours {
        return Err(ArtifactError::OtherEngine { found: hex(&engine_print[..8]), expected: hex(&ours[..8]) });
    }
    if let Some(expected) = source.filter(|s| **s != named_source) {
        return Err(ArtifactError::OtherSource { found: named_source, expected: expected.to_string() });
    }
    if Engine::detect_precompiled(payload) != Some(Precompiled::Component) {
        return Err(ArtifactError::Refused("the payload is not a precompiled component".into()));
    }
    // SAFETY: the payload is authenticated with the host's key (see the
    // trust model above) and was compiled for this engine's configuration;
    // wasmtime checks its own header again.
    let component = unsafe { Component::deserialize(engine, payload) }.map_err(|e| ArtifactError::Refused(format!("{e:#}")))?;
    Ok((component, named_source))
}

/// Where the precompiled artifact of the component file `wasm` sits: beside
/// it, with the extension `.cwasm`.
pub fn beside(wasm: &Path) -> PathBuf {
    wasm.with_extension("cwasm")
}

/// The SHA-256 (hex) of the component an artifact says it was compiled
/// from, unchecked: to tell whether a changed file is a new version.
pub fn named_source(bytes: &[u8]) -> Option<String> {
    (is_artifact(bytes) && bytes.len() >= HEADER).then(|| hex(&bytes[16..48]))
}

/// Whether `bytes` look like an artifact (rather than a component).
pub fn is_artifact(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `artifact` fuzz target: the header's length was added
    /// to the header's size, which overflowed (a panic in a debug build)
    /// for a length near `u64::MAX`.
    #[test]
    fn a_header_claiming_the_largest_length_is_refused_as_truncated() {
        let key = ArtifactKey::from_bytes([1; KEY_BYTES]);
        let mut bytes = seal(crate::plugin::engine(), &key, &[0; 32], b"payload");
        bytes[80..88].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = open(crate::plugin::engine(), &key, &bytes, None).err();
        assert_eq!(err, Some(ArtifactError::Truncated { len: bytes.len() as u64, expected: u64::MAX }));
    }
}
