//! The WASM plugin host: one engine, compiled components, bounded calls.
//!
//! A plugin file is compiled once into a [`Loaded`] plugin (component,
//! pre-linked instance, name, version, content hash). The live version of each
//! plugin sits in a [`Slot`]; a runner (one per worker, never shared) owns a
//! store and instance of whatever the slot held when its batch started, and
//! re-instantiates when the slot changes or after a failed call. Hot reload
//! only ever replaces what a slot holds.

pub mod aggregate;
pub mod enrich;
mod stderr;

use std::path::PathBuf;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::geoip::GeoIp;
use crate::stats::Counter;
use stderr::StderrTail;

/// The epoch advances this often. Deadlines are counted in ticks, so this is
/// their resolution; 10 ms keeps the ticker's cost negligible while a 1 s
/// deadline overshoots by at most 1%.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Tables a guest may grow to. Rust guests use one small function table; a
/// guest that grows past this is broken, not busy.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The process's one engine: compiled code and the epoch are shared by every
/// plugin. A ticker thread advances the epoch; it holds only a weak reference
/// so it stops if the engine ever goes away.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        // `perf` names the plugins' compiled functions (a /tmp/perf-PID.map)
        // when asked to: docs/BENCHMARKS.md shows how it is used.
        if std::env::var_os("CLICKSTREAM_PERFMAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&config).expect("the engine configuration is valid");
        let weak = engine.weak();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .expect("spawn the epoch ticker");
        engine
    })
}

/// Bounds on every call into a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Most linear memory one instance may hold, in bytes.
    pub memory_bytes: usize,
    /// Longest one call (one batch) may run.
    pub deadline: Duration,
    /// A host directory the guest may read (mounted at `/data`); none by default.
    pub read_only_dir: Option<PathBuf>,
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits {
            memory_bytes: 256 << 20,
            deadline: Duration::from_secs(1),
            read_only_dir: None,
        }
    }
}

impl PluginLimits {
    fn deadline_ticks(&self) -> u64 {
        (self.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// Everything that can go wrong loading or calling a plugin. Each names the
/// plugin, so a log line says which one to fix.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file could not be read.
    #[error("plugin `{plugin}`: cannot read {path}: {source}")]
    Read {
        /// Plugin name from pipeline.toml.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid WebAssembly component.
    #[error("plugin `{plugin}`: {path} is not a WebAssembly component ({reason}); build plugins with `cargo build --target wasm32-wasip2`")]
    NotAComponent {
        /// Plugin name from pipeline.toml.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The compiler's message.
        reason: String,
    },
    /// The component does not implement the world this slot needs.
    #[error("plugin `{plugin}`: {path} does not implement world `{world}` of clickstream:pipeline@0.1.0: {reason}")]
    WrongWorld {
        /// Plugin name from pipeline.toml.
        plugin: String,
        /// The file.
        path: PathBuf,
        /// The expected world.
        world: &'static str,
        /// The linker's message.
        reason: String,
    },
    /// The plugin refused its settings.
    #[error("plugin `{plugin}` refused its settings: {reason}")]
    Configure {
        /// Plugin name.
        plugin: String,
        /// The plugin's message.
        reason: String,
    },
    /// A call ran past its deadline and was interrupted.
    #[error("plugin `{plugin}` ({version}) ran past its deadline of {deadline_ms} ms")]
    Deadline {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// The deadline.
        deadline_ms: u128,
    },
    /// A call tried to grow memory past the cap.
    #[error("plugin `{plugin}` ({version}) asked for {requested} bytes of memory, past its cap of {cap} bytes")]
    MemoryExceeded {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// Bytes the guest asked for.
        requested: usize,
        /// The cap.
        cap: usize,
    },
    /// The guest trapped (a panic, an out-of-bounds access, ...).
    #[error("plugin `{plugin}` ({version}) trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// The trap and its wasm backtrace.
        message: String,
    },
    /// The guest returned something the contract forbids.
    #[error("plugin `{plugin}` ({version}) broke the contract: {reason}")]
    Contract {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// What it did.
        reason: String,
    },
}

impl PluginError {
    /// A short label for metrics and dead-letter reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Read { .. } => "read",
            PluginError::NotAComponent { .. } => "not_a_component",
            PluginError::WrongWorld { .. } => "wrong_world",
            PluginError::Configure { .. } => "configure",
            PluginError::Deadline { .. } => "deadline",
            PluginError::MemoryExceeded { .. } => "memory",
            PluginError::Trap { .. } => "trap",
            PluginError::Contract { .. } => "contract",
        }
    }
}

/// What identifies a loaded plugin version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The slot name from pipeline.toml (`enrich`, `aggregate`).
    pub slot: String,
    /// The name the plugin reports.
    pub name: String,
    /// The version the plugin reports.
    pub version: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the file, hex.
    pub content_hash: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// How a plugin is loaded: the file, its settings and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The slot name (`enrich`, `aggregate`), used in errors and metrics.
    pub slot: String,
    /// The component file.
    pub path: PathBuf,
    /// Passed to the plugin's `configure`.
    pub settings: Vec<(String, String)>,
    /// Bounds on every call.
    pub limits: PluginLimits,
}

/// Per-store state: WASI (granting nothing unless configured), the memory
/// limiter, and the host imports' data.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    stderr: StderrTail,
    geoip: Option<Arc<GeoIp>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps linear memory and remembers the high-water mark and a refused growth,
/// so a blow-up is reported as such rather than as a generic trap.
struct MemoryLimiter {
    cap: usize,
    high_water: usize,
    refused: Option<usize>,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            // An error traps at once; returning false would let the guest's
            // allocator abort with a less telling message.
            wasmtime::bail!("memory cap of {} bytes exceeded", self.cap);
        }
        self.high_water = self.high_water.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

fn new_store(limits: &PluginLimits, geoip: Option<Arc<GeoIp>>) -> Store<HostState> {
    let stderr = StderrTail::default();
    let mut wasi = WasiCtx::builder();
    wasi.stderr(stderr.clone());
    if let Some(dir) = &limits.read_only_dir {
        // Checked by config validation; a directory that vanished since then
        // only leaves the guest without it.
        if let Err(e) = wasi.preopened_dir(dir, "/data", FsPerms::ReadOnly) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot grant plugin read-only directory");
        }
    }
    let state = HostState {
        wasi: wasi.build(),
        table: ResourceTable::new(),
        limiter: MemoryLimiter {
            cap: limits.memory_bytes,
            high_water: 0,
            refused: None,
        },
        stderr,
        geoip,
    };
    let mut store = Store::new(engine(), state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_trap();
    store
}

/// How many compiled components [`compile`] keeps by content hash.
const COMPILED_KEPT: usize = 4;

/// Compiled components by content hash, most recent last: loading a file
/// whose bytes this process compiled before (a rollback to the previous
/// version, a restart of the pipeline after a config change) skips
/// compiling, which is most of a swap's time. Bounded, so a long series of
/// deploys does not grow memory. `CLICKSTREAM_COMPILE_CACHE=off` turns it
/// off (the benchmarks measure swaps both ways).
fn compiled() -> Option<&'static Mutex<VecDeque<(String, Component)>>> {
    static CACHE: OnceLock<Option<Mutex<VecDeque<(String, Component)>>>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let off = std::env::var("CLICKSTREAM_COMPILE_CACHE").is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "false"));
            (!off).then(|| Mutex::new(VecDeque::new()))
        })
        .as_ref()
}

/// Reads and compiles a component file, returning it with its content hash.
fn compile(spec: &PluginSpec) -> Result<(Component, String), PluginError> {
    let bytes = std::fs::read(&spec.path).map_err(|source| PluginError::Read {
        plugin: spec.slot.clone(),
        path: spec.path.clone(),
        source,
    })?;
    let hash = content_hash(&bytes);
    let cache = compiled();
    if let Some(cache) = cache {
        let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, component)) = cache.iter().find(|(h, _)| *h == hash) {
            return Ok((component.clone(), hash));
        }
    }
    let component = Component::from_binary(engine(), &bytes).map_err(|e| PluginError::NotAComponent {
        plugin: spec.slot.clone(),
        path: spec.path.clone(),
        reason: format!("{e:#}"),
    })?;
    if let Some(cache) = cache {
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|(h, _)| *h != hash);
        cache.push_back((hash.clone(), component.clone()));
        while cache.len() > COMPILED_KEPT {
            cache.pop_front();
        }
    }
    Ok((component, hash))
}

/// Compiles a plugin file and links it against `world`'s imports (WASI plus
/// what `add_imports` adds), returning the pre-linked component and the
/// identity of the version (name and version still empty: the caller asks
/// the instance). The shared part of loading either world.
fn prelink(
    spec: &PluginSpec,
    world: &'static str,
    add_imports: impl FnOnce(&mut Linker<HostState>) -> wasmtime::Result<()>,
) -> Result<(InstancePre<HostState>, PluginInfo), PluginError> {
    let (component, content_hash) = compile(spec)?;
    let wrong_world = |e: wasmtime::Error| PluginError::WrongWorld {
        plugin: spec.slot.clone(),
        path: spec.path.clone(),
        world,
        reason: format!("{e:#}"),
    };
    let mut linker: Linker<HostState> = Linker::new(engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(wrong_world)?;
    add_imports(&mut linker).map_err(wrong_world)?;
    let pre = linker.instantiate_pre(&component).map_err(wrong_world)?;
    let info = PluginInfo {
        slot: spec.slot.clone(),
        name: String::new(),
        version: String::new(),
        path: spec.path.clone(),
        content_hash,
        loaded_at: SystemTime::now(),
    };
    Ok((pre, info))
}

/// Fills in the name and version a fresh instance reports.
fn identify(
    info: &mut PluginInfo,
    limits: &PluginLimits,
    store: &mut Store<HostState>,
    name: wasmtime::Result<String>,
    version: wasmtime::Result<String>,
) -> Result<(), PluginError> {
    match (name, version) {
        (Ok(name), Ok(version)) => {
            info.name = name;
            info.version = version;
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) => Err(call_error(e, store, info, limits)),
    }
}

/// SHA-256 of a plugin file, hex: what identifies a version in
/// [`PluginInfo::content_hash`] and in the compiled-component cache.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns a failed call into the error that says what happened.
fn call_error(err: wasmtime::Error, store: &mut Store<HostState>, info: &PluginInfo, limits: &PluginLimits) -> PluginError {
    let (plugin, version) = (info.slot.clone(), info.version.clone());
    if let Some(requested) = store.data_mut().limiter.refused.take() {
        return PluginError::MemoryExceeded {
            plugin,
            version,
            requested,
            cap: limits.memory_bytes,
        };
    }
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return PluginError::Deadline {
            plugin,
            version,
            deadline_ms: limits.deadline.as_millis(),
        };
    }
    let stderr = store.data().stderr.take();
    let message = if stderr.is_empty() {
        format!("{err:?}")
    } else {
        format!("{stderr}\n{err:?}")
    };
    PluginError::Trap { plugin, version, message }
}

/// What a plugin slot has done since start, across every version it held.
#[derive(Debug, Default)]
pub struct PluginCounters {
    /// Calls into the plugin (one per batch, or per aggregation step).
    pub calls: Counter,
    /// Failed calls by [`PluginError::kind`].
    errors: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Largest linear memory any instance reached, in bytes.
    memory_high_water: AtomicU64,
}

impl PluginCounters {
    /// Counts a failed call.
    pub fn failed(&self, error: &PluginError) {
        *self.errors.lock().unwrap_or_else(|e| e.into_inner()).entry(error.kind()).or_default() += 1;
    }

    /// Failed calls by kind (`trap`, `deadline`, `memory`, `contract`, ...).
    pub fn errors(&self) -> std::collections::BTreeMap<&'static str, u64> {
        self.errors.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Notes an instance's memory size.
    pub fn memory(&self, bytes: usize) {
        self.memory_high_water.fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// Largest linear memory any instance reached, in bytes.
    pub fn memory_high_water(&self) -> u64 {
        self.memory_high_water.load(Ordering::Relaxed)
    }
}

/// The live version of a plugin, swapped atomically by hot reload. Readers
/// take a cheap snapshot per batch, so a batch runs on one version throughout.
pub struct Slot<T> {
    live: ArcSwap<T>,
    counters: Arc<PluginCounters>,
}

impl<T> Slot<T> {
    /// A slot holding `initial`.
    pub fn new(initial: Arc<T>) -> Slot<T> {
        Slot {
            live: ArcSwap::new(initial),
            counters: Arc::default(),
        }
    }

    /// The version serving now.
    pub fn current(&self) -> Arc<T> {
        self.live.load_full()
    }

    /// Puts `next` in service and returns the version it replaced. Batches
    /// that already took a snapshot finish on the old one.
    pub fn swap(&self, next: Arc<T>) -> Arc<T> {
        self.live.swap(next)
    }

    /// Calls, errors and memory of this slot's plugin.
    pub fn counters(&self) -> &Arc<PluginCounters> {
        &self.counters
    }
}
