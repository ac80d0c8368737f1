//! From a plugin file to a compiled component, as fast as it can be had:
//! this process's memory cache, the on-disk cache, a precompiled `.cwasm`
//! beside the file, the baseline compiler (for a hot swap to a build never
//! seen before), or Cranelift.
//!
//! Settings (environment, read once):
//! - `CLICKSTREAM_COMPILE_CACHE=off`: no memory or disk cache (every load
//!   compiles, or reads a `.cwasm`); the benchmark measures swaps both ways.
//! - `CLICKSTREAM_CACHE_DIR`: where the disk cache and the default artifact
//!   key live [default: `$XDG_CACHE_HOME/clickstream`, else `~/.cache/clickstream`].
//! - `CLICKSTREAM_COMPILE_CACHE_MIB`: the disk cache's bound [default: 512].
//! - `CLICKSTREAM_ARTIFACT_KEY`: the artifact key's file [default: `artifact.key` in the cache dir].
//! - `CLICKSTREAM_BASELINE_TIER=off`: hot swaps compile with Cranelift before serving.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

use wasmtime::component::Component;

use super::artifact::{self, ArtifactError, ArtifactKey};
use super::engine::{baseline_engine, engine};
use super::instance::content_hash;
use super::{PluginError, PluginSpec};

/// How a load may compile a component it has no compiled code for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tiering {
    /// With Cranelift, before returning (start-up, `plugin check`, benchmarks).
    Optimized,
    /// With the baseline compiler, when enabled (hot swaps): the caller
    /// swaps the optimised build in later ([`Origin::Baseline`]).
    BaselineFirst,
    /// Always with the baseline compiler, caches bypassed (to measure it).
    BaselineOnly,
}

/// Where a loaded component's code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Compiled earlier by this process.
    MemoryCache,
    /// The on-disk cache: compiled earlier by this or another host.
    DiskCache,
    /// A precompiled `.cwasm`.
    Precompiled,
    /// Compiled now by Cranelift.
    Compiled,
    /// Compiled now by the baseline compiler: slower code, to be replaced.
    Baseline,
}

impl Origin {
    /// The name in logs and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::MemoryCache => "memory_cache",
            Origin::DiskCache => "disk_cache",
            Origin::Precompiled => "precompiled",
            Origin::Compiled => "compiled",
            Origin::Baseline => "baseline",
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compiled component and what it took.
pub struct Compiled {
    /// The component, of [`engine`] or, for [`Origin::Baseline`], of [`baseline_engine`].
    pub component: Component,
    /// SHA-256 of the component file, hex.
    pub hash: String,
    /// Where its code came from.
    pub origin: Origin,
    /// Why a `.cwasm` beside the file was not used, if one was there.
    pub refused_artifact: Option<ArtifactError>,
}

struct Settings {
    caches: bool,
    dir: Option<PathBuf>,
    cache_bytes: u64,
    key: Option<PathBuf>,
    baseline: bool,
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let off = |name: &str| std::env::var(name).is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "false"));
        let dir = std::env::var_os("CLICKSTREAM_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("clickstream")))
            .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/clickstream")));
        let key = std::env::var_os("CLICKSTREAM_ARTIFACT_KEY").map(PathBuf::from).or_else(|| dir.as_ref().map(|d| d.join("artifact.key")));
        let mib = std::env::var("CLICKSTREAM_COMPILE_CACHE_MIB").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(512);
        Settings {
            caches: !off("CLICKSTREAM_COMPILE_CACHE"),
            dir,
            cache_bytes: mib << 20,
            key,
            baseline: !off("CLICKSTREAM_BASELINE_TIER"),
        }
    })
}

/// The file of the host's artifact key (see [`artifact`]'s trust model).
pub fn artifact_key_path() -> Option<&'static Path> {
    settings().key.as_deref()
}

/// The host's artifact key, created on first use. A key that cannot be
/// had, or is refused (another user's, readable by others, cut short), is
/// logged once as an error, and then every precompiled artifact is refused
/// and the disk cache is off: a `.wasm` still loads by compiling, a `.cwasm`
/// named alone fails its load with the key's reason.
fn artifact_key() -> Result<&'static ArtifactKey, ArtifactError> {
    static KEY: OnceLock<Result<ArtifactKey, ArtifactError>> = OnceLock::new();
    let path = artifact_key_path().ok_or_else(|| ArtifactError::NoKey(PathBuf::from("(no CLICKSTREAM_ARTIFACT_KEY, no cache dir)")))?;
    KEY.get_or_init(|| {
        ArtifactKey::load_or_create(path).map_err(|e| {
            tracing::error!(path = %path.display(), error = %e, "artifact key refused: precompiled plugins and the disk cache are off");
            ArtifactError::KeyRefused(e.to_string())
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// How many compiled components the memory cache keeps.
const COMPILED_KEPT: usize = 4;

/// Compiled components by content hash, most recent last: loading a file
/// whose bytes this process compiled before (a rollback, a restart of the
/// pipeline after a config change) skips compiling.
type Recent = Mutex<VecDeque<(String, Component)>>;

fn memory() -> Option<&'static Recent> {
    static CACHE: OnceLock<Option<Recent>> = OnceLock::new();
    CACHE.get_or_init(|| settings().caches.then(|| Mutex::new(VecDeque::new()))).as_ref()
}

fn remember(hash: &str, component: &Component) {
    if let Some(cache) = memory() {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|(h, _)| h != hash);
        cache.push_back((hash.to_string(), component.clone()));
        while cache.len() > COMPILED_KEPT {
            cache.pop_front();
        }
    }
}

fn recall(hash: &str) -> Option<Component> {
    let cache = memory()?.lock().unwrap_or_else(|e| e.into_inner());
    cache.iter().find(|(h, _)| h == hash).map(|(_, c)| c.clone())
}

/// Compiled components on disk, one sealed artifact per component hash, in
/// a folder per engine fingerprint: a restart or a second host on the
/// machine does not compile again. Bounded: past the bound the least
/// recently used files go.
pub struct DiskCache {
    dir: PathBuf,
    key: ArtifactKey,
    max_bytes: u64,
}

impl DiskCache {
    /// A cache under `root` for the optimising engine.
    pub fn new(root: &Path, key: ArtifactKey, max_bytes: u64) -> DiskCache {
        let dir = root.join("compiled").join(&artifact::hex(&artifact::fingerprint(engine()))[..16]);
        DiskCache { dir, key, max_bytes }
    }

    fn file(&self, hash: &str) -> PathBuf {
        self.dir.join(format!("{hash}.cwasm"))
    }

    /// The component compiled from the file whose SHA-256 is `hash`, if cached.
    pub fn get(&self, hash: &str) -> Option<Component> {
        let path = self.file(hash);
        let bytes = std::fs::read(&path).ok()?;
        match artifact::open(engine(), &self.key, &bytes, Some(hash)) {
            Ok((component, _)) => {
                // Recently used: eviction goes by modification time.
                let _ = std::fs::File::options().append(true).open(&path).and_then(|f| f.set_modified(SystemTime::now()));
                Some(component)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "compile cache entry refused; removing it");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Stores `component`, compiled from the file whose SHA-256 is `hash`,
    /// then evicts past the bound. Failures only cost a later compile.
    pub fn put(&self, hash: &str, component: &Component) {
        let result = (|| -> anyhow::Result<()> {
            let source: Vec<u8> = (0..hash.len() / 2).map(|i| u8::from_str_radix(&hash[2 * i..2 * i + 2], 16)).collect::<Result<_, _>>()?;
            let source: [u8; 32] = source.try_into().map_err(|_| anyhow::anyhow!("not a SHA-256: {hash}"))?;
            let payload = component.serialize().map_err(|e| anyhow::anyhow!("{e:#}"))?;
            let sealed = artifact::seal(engine(), &self.key, &source, &payload);
            std::fs::create_dir_all(&self.dir)?;
            let tmp = self.dir.join(format!(".{hash}.{}.tmp", std::process::id()));
            std::fs::write(&tmp, &sealed)?;
            std::fs::rename(&tmp, self.file(hash))?;
            self.evict()
        })();
        if let Err(e) = result {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot write the compile cache");
        }
    }

    fn evict(&self) -> anyhow::Result<()> {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if entry.path().extension().is_some_and(|e| e == "cwasm") {
                files.push((meta.modified()?, meta.len(), entry.path()));
            }
        }
        files.sort();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            std::fs::remove_file(&path)?;
            total -= len;
        }
        Ok(())
    }
}

fn disk() -> Option<&'static DiskCache> {
    static DISK: OnceLock<Option<DiskCache>> = OnceLock::new();
    DISK.get_or_init(|| {
        let s = settings();
        let dir = s.dir.as_ref().filter(|_| s.caches)?;
        Some(DiskCache::new(dir, artifact_key().ok()?.clone(), s.cache_bytes))
    })
    .as_ref()
}

/// Reads `spec.path` and returns its compiled component, by the fastest
/// way there is (the module's order).
pub fn load(spec: &PluginSpec, tiering: Tiering) -> Result<Compiled, PluginError> {
    let bytes = read_capped(&spec.path).map_err(|e| e.of(spec, &spec.path))?;
    if artifact::is_artifact(&bytes) {
        let opened = artifact_key().and_then(|key| artifact::open(engine(), key, &bytes, None));
        let (component, hash) =
            opened.map_err(|e| PluginError::Artifact { plugin: spec.slot.clone(), path: spec.path.clone(), reason: e.to_string() })?;
        return Ok(Compiled { component, hash, origin: Origin::Precompiled, refused_artifact: None });
    }
    let hash = content_hash(&bytes);
    let not_a_component =
        |e: wasmtime::Error| PluginError::NotAComponent { plugin: spec.slot.clone(), path: spec.path.clone(), reason: format!("{e:#}") };
    if tiering == Tiering::BaselineOnly {
        let component = Component::from_binary(baseline_engine(), &bytes).map_err(not_a_component)?;
        return Ok(Compiled { component, hash, origin: Origin::Baseline, refused_artifact: None });
    }
    let found = |component, origin| Compiled { component, hash: hash.clone(), origin, refused_artifact: None };
    if let Some(component) = recall(&hash) {
        return Ok(found(component, Origin::MemoryCache));
    }
    if let Some(component) = disk().and_then(|d| d.get(&hash)) {
        remember(&hash, &component);
        return Ok(found(component, Origin::DiskCache));
    }
    let beside = artifact::beside(&spec.path);
    let mut refused_artifact = None;
    if beside != spec.path {
        if let Ok(sealed) = read_capped(&beside) {
            match artifact_key().and_then(|key| artifact::open(engine(), key, &sealed, Some(&hash))) {
                Ok((component, _)) => {
                    remember(&hash, &component);
                    return Ok(found(component, Origin::Precompiled));
                }
                Err(e) => {
                    tracing::warn!(plugin = %spec.slot, artifact = %beside.display(), reason = %e, "precompiled artifact refused; compiling the .wasm instead");
                    refused_artifact = Some(e);
                }
            }
        }
    }
    if tiering == Tiering::BaselineFirst && settings().baseline {
        let component = Component::from_binary(baseline_engine(), &bytes).map_err(not_a_component)?;
        return Ok(Compiled { component, hash, origin: Origin::Baseline, refused_artifact });
    }
    let component = Component::from_binary(engine(), &bytes).map_err(not_a_component)?;
    remember(&hash, &component);
    if let Some(disk) = disk() {
        disk.put(&hash, &component);
    }
    Ok(Compiled { component, hash, origin: Origin::Compiled, refused_artifact })
}

/// Largest plugin file the host reads: a component, or a precompiled
/// artifact (the largest here, the JavaScript `utm` component, is 1.6 MiB).
/// A bigger file is refused before it is read.
pub const MAX_PLUGIN_FILE_BYTES: u64 = 128 << 20;

/// Why a plugin file was not read.
enum ReadError {
    Io(std::io::Error),
    TooLarge(u64),
}

impl ReadError {
    fn of(self, spec: &PluginSpec, path: &Path) -> PluginError {
        let (plugin, path) = (spec.slot.clone(), path.to_path_buf());
        match self {
            ReadError::Io(source) => PluginError::Read { plugin, path, source },
            ReadError::TooLarge(bytes) => PluginError::TooLarge { plugin, path, bytes, cap: MAX_PLUGIN_FILE_BYTES },
        }
    }
}

/// Reads a plugin file of at most [`MAX_PLUGIN_FILE_BYTES`]; the length is
/// checked on the open file, and the read stops past the cap in case the
/// file grows meanwhile.
fn read_capped(path: &Path) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let len = file.metadata().map_err(ReadError::Io)?.len();
    if len > MAX_PLUGIN_FILE_BYTES {
        return Err(ReadError::TooLarge(len));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_PLUGIN_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(ReadError::Io)?;
    match bytes.len() as u64 {
        n if n > MAX_PLUGIN_FILE_BYTES => Err(ReadError::TooLarge(n)),
        _ => Ok(bytes),
    }
}
