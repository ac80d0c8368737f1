//! Compiled code from elsewhere than a compile: precompiled `.cwasm`
//! artifacts (accepted only when sealed with the host's key, for this
//! engine, from the component beside them), and the baseline tier.

use clickstream_testkit as support;

use std::path::Path;
use std::sync::Arc;

use clickstream::plugin::artifact::{self, ArtifactError, ArtifactKey};
use clickstream::plugin::compiled::{self, Tiering};
use clickstream::plugin::golden;
use clickstream::plugin::transform::{LoadedTransform, TransformRunner};
use clickstream::plugin::{baseline_engine, content_hash, engine, Origin, PluginSpec, Slot};
use clickstream::stages::record::{Outcome, TransformEvent};

/// The key the host seals and checks artifacts with.
fn host_key() -> ArtifactKey {
    ArtifactKey::load_or_create(compiled::artifact_key_path().expect("a cache dir or CLICKSTREAM_ARTIFACT_KEY")).unwrap()
}

fn spec(path: &Path) -> PluginSpec {
    PluginSpec { slot: "enrich".into(), path: path.to_path_buf(), settings: vec![], limits: Default::default() }
}

/// Browsers the transform gives the golden batch's clicks.
fn browsers(loaded: Arc<LoadedTransform>) -> Vec<Option<String>> {
    let mut runner = TransformRunner::new(Arc::new(Slot::new(loaded)));
    let events: Vec<TransformEvent> = golden::batch().into_iter().map(Into::into).collect();
    let (_, outcomes) = runner.transform(&events).unwrap();
    outcomes
        .iter()
        .map(|o| match o {
            Outcome::Keep(e) => e.enrichment.browser.clone(),
            other => panic!("enrich kept nothing: {other:?}"),
        })
        .collect()
}

/// A build of enrich no cache has seen, written to `dir/enrich.wasm`.
fn unseen(dir: &Path, nonce: &str) -> (std::path::PathBuf, Vec<u8>) {
    let bytes = support::unseen_build("enrich", &format!("{nonce}-{}", support::unique("n")));
    let path = dir.join("enrich.wasm");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn a_precompiled_artifact_beside_or_instead_of_the_component_loads_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (wasm, source) = unseen(dir.path(), "beside");
    let expected = browsers(LoadedTransform::load(spec(&support::plugin("enrich")), None).unwrap());
    assert!(expected.iter().any(|b| b.as_deref() == Some("Chrome")), "{expected:?}");

    let sealed = artifact::compile(engine(), &host_key(), &source).unwrap();
    std::fs::write(artifact::beside(&wasm), &sealed).unwrap();
    let loaded = LoadedTransform::load(spec(&wasm), None).unwrap();
    assert_eq!(loaded.info.origin, Origin::Precompiled);
    assert_eq!(loaded.info.content_hash, content_hash(&source));
    assert_eq!(browsers(loaded), expected);

    // Named in pipeline.toml instead of the .wasm: the artifact says which
    // component it was compiled from.
    let only = dir.path().join("only.cwasm");
    std::fs::write(&only, &sealed).unwrap();
    let loaded = LoadedTransform::load(spec(&only), None).unwrap();
    assert_eq!((loaded.info.origin, loaded.info.content_hash.clone()), (Origin::Precompiled, content_hash(&source)));
    assert_eq!(browsers(loaded), expected);
}

#[test]
fn artifacts_for_another_engine_truncated_tampered_or_from_another_component_are_refused_with_reasons() {
    let key = host_key();
    let source = support::unseen_build("enrich", &support::unique("refused"));
    let hash = content_hash(&source);
    let sealed = artifact::compile(engine(), &key, &source).unwrap();
    assert!(artifact::open(engine(), &key, &sealed, Some(&hash)).is_ok(), "the good artifact loads");
    let refused = |bytes: &[u8], source: Option<&str>, key: &ArtifactKey| artifact::open(engine(), key, bytes, source).err();

    let other_engine = artifact::compile(baseline_engine(), &key, &source).unwrap();
    let err = refused(&other_engine, Some(&hash), &key).expect("another engine's artifact is refused");
    assert!(matches!(err, ArtifactError::OtherEngine { .. }), "{err}");
    assert!(err.to_string().contains("compiled for another engine"), "{err}");

    let err = refused(&sealed[..sealed.len() / 2], Some(&hash), &key).expect("a truncated artifact is refused");
    assert_eq!(err, ArtifactError::Truncated { len: (sealed.len() / 2) as u64, expected: sealed.len() as u64 });

    let mut tampered = sealed.clone();
    let at = tampered.len() - 1000;
    tampered[at] ^= 0x01;
    assert_eq!(refused(&tampered, Some(&hash), &key), Some(ArtifactError::Unauthenticated));
    assert_eq!(refused(&sealed, Some(&hash), &ArtifactKey::from_bytes([7; 32])), Some(ArtifactError::Unauthenticated));

    let other = content_hash(b"another component");
    let err = refused(&sealed, Some(&other), &key).expect("an artifact of another component is refused");
    assert_eq!(err, ArtifactError::OtherSource { found: hash.clone(), expected: other });

    assert_eq!(refused(&source, None, &key), Some(ArtifactError::NotAnArtifact));
}

#[test]
fn a_refused_artifact_beside_the_component_falls_back_to_compiling_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wasm, _) = unseen(dir.path(), "fallback");
    // An artifact of the original build beside this build: another source.
    let other = std::fs::read(support::plugin("enrich")).unwrap();
    std::fs::write(artifact::beside(&wasm), artifact::compile(engine(), &host_key(), &other).unwrap()).unwrap();
    let compiled = compiled::load(&spec(&wasm), Tiering::Optimized).unwrap();
    assert_eq!(compiled.origin, Origin::Compiled);
    let reason = compiled.refused_artifact.expect("the refusal is reported").to_string();
    assert!(reason.contains("compiled from another component"), "{reason}");

    // A tampered artifact named in pipeline.toml, with no .wasm to fall back on, fails the load.
    let only = dir.path().join("only.cwasm");
    let mut sealed = artifact::compile(engine(), &host_key(), &other).unwrap();
    let at = sealed.len() - 10;
    sealed[at] ^= 0xff;
    std::fs::write(&only, &sealed).unwrap();
    let err = LoadedTransform::load(spec(&only), None).unwrap_err().to_string();
    assert!(err.contains("precompiled artifact") && err.contains("not sealed with this host's artifact key"), "{err}");
}

#[test]
fn a_never_seen_component_serves_from_the_baseline_tier_with_the_same_results() {
    let dir = tempfile::tempdir().unwrap();
    let (wasm, _) = unseen(dir.path(), "baseline");
    let baseline = LoadedTransform::load_tiered(spec(&wasm), None, Tiering::BaselineFirst).unwrap();
    assert_eq!(baseline.info.origin, Origin::Baseline);
    let optimized = LoadedTransform::load_tiered(spec(&wasm), None, Tiering::Optimized).unwrap();
    assert_eq!(optimized.info.origin, Origin::Compiled);
    assert_eq!(browsers(baseline), browsers(optimized));
    // Compiled once, it is cached: the next swap to it needs no baseline.
    let again = LoadedTransform::load_tiered(spec(&wasm), None, Tiering::BaselineFirst).unwrap();
    assert!(matches!(again.info.origin, Origin::MemoryCache | Origin::DiskCache), "{:?}", again.info.origin);
}

/// A key file others may read or write is refused, and then no artifact
/// sealed with it is trusted: `plugin check` loads the `.wasm` by compiling
/// it (the error names the key file and the fix), and a `.cwasm` named
/// alone fails with that reason.
#[test]
fn under_a_key_others_may_write_no_artifact_is_trusted_and_the_wasm_compiles() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (wasm, source) = unseen(dir.path(), "planted");
    let key_file = dir.path().join("artifact.key");
    std::fs::write(&key_file, [9; artifact::KEY_BYTES]).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o666)).unwrap();
    // What anyone could seal with a key the whole machine may write.
    let sealed = artifact::compile(engine(), &ArtifactKey::from_bytes([9; artifact::KEY_BYTES]), &source).unwrap();
    std::fs::write(artifact::beside(&wasm), &sealed).unwrap();
    let check = |file: &Path| {
        let output = std::process::Command::new(support::host_binary().unwrap())
            .args(["plugin", "check"])
            .arg(file)
            .env("CLICKSTREAM_ARTIFACT_KEY", &key_file)
            .env("CLICKSTREAM_CACHE_DIR", dir.path().join("cache"))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (output.status.success(), format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    };

    let (ok, out) = check(&wasm);
    assert!(ok, "the .wasm loads by compiling: {out}");
    let key_named = format!("artifact key {} has mode 0666", key_file.display());
    assert!(out.contains("artifact key refused") && out.contains(&key_named) && out.contains("chmod 600"), "{out}");
    assert!(out.contains("precompiled artifact refused; compiling the .wasm instead"), "{out}");

    let only = dir.path().join("only.cwasm");
    std::fs::write(&only, &sealed).unwrap();
    let (ok, out) = check(&only);
    assert!(!ok && out.contains(&key_named), "a .cwasm alone fails with the key's reason: {out}");
}
