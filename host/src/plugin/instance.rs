//! Loading: a compiled component linked against a world's imports, and the
//! store each instance runs in.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::{InstancePre, Linker, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use super::compiled::{self, Origin, Tiering};
use super::engine::{baseline_engine, engine};
use super::error::call_error;
use super::geoip::GeoIp;
use super::limits::{CallClock, MemoryLimiter, PluginLimits, MAX_LIFT_BYTES};
use super::log::LogTap;
use super::stderr::StderrTail;
use super::wit::{self, Version, World};
use super::PluginError;

/// What identifies a loaded plugin version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The name pipeline.toml gives it: the transform's name, or `aggregate`.
    pub slot: String,
    /// The name the plugin reports.
    pub name: String,
    /// The version the plugin reports.
    pub version: String,
    /// The contract version it was built against (`0.2.0`).
    pub contract: String,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// SHA-256 of the component file, hex (for a `.cwasm`, of the component
    /// it was compiled from).
    pub content_hash: String,
    /// Where its compiled code came from; [`Origin::Baseline`] code is
    /// replaced by the optimised build once that is ready.
    pub origin: Origin,
    /// When it was loaded.
    pub loaded_at: SystemTime,
}

/// How a plugin is loaded: the file, its settings and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The name pipeline.toml gives it (a transform's name, or
    /// `aggregate`), used in errors and metrics.
    pub slot: String,
    /// The component file.
    pub path: PathBuf,
    /// Passed to the plugin's `configure`.
    pub settings: Vec<(String, String)>,
    /// Bounds on every call.
    pub limits: PluginLimits,
}

/// Per-store state: WASI (granting nothing unless configured), the memory
/// limiter, the current call's clock, and the host imports' data.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limiter: MemoryLimiter,
    pub(super) clock: CallClock,
    pub(super) stderr: StderrTail,
    pub(super) geoip: Option<Arc<GeoIp>>,
    pub(super) log: LogTap,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn new_store(info: &PluginInfo, limits: &PluginLimits, geoip: Option<Arc<GeoIp>>) -> Store<HostState> {
    let stderr = StderrTail::default();
    let mut wasi = WasiCtx::builder();
    wasi.stderr(stderr.clone());
    // wasmtime's defaults, stated: no network of any kind. The socket
    // constructors trap before reaching these (see `super::wasi`).
    wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
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
        limiter: MemoryLimiter::new(limits.memory_bytes),
        clock: CallClock::new(limits.deadline),
        stderr,
        geoip,
        log: LogTap::new(&info.slot),
    };
    let engine = if info.origin == Origin::Baseline { baseline_engine() } else { engine() };
    let mut store = Store::new(engine, state);
    store.limiter(|s| &mut s.limiter);
    store.epoch_deadline_trap();
    // What the host copies out of the guest per call (results, or an
    // import's arguments) is charged against this; past it the copy fails
    // (`error::call_error` names it).
    store.set_hostcall_fuel(MAX_LIFT_BYTES);
    store
}

/// Starts the clock of one call: the epoch deadline for guest code, and the
/// clock the host's waiting functions read.
pub(super) fn arm(store: &mut Store<HostState>, limits: &PluginLimits) {
    store.set_epoch_deadline(limits.deadline_ticks());
    store.data_mut().clock.restart();
}

/// Compiles a plugin file, checks it targets one of the `accepts` worlds in a contract version
/// this host loads, links it against the world's imports (WASI plus what
/// `add_imports` adds for that version) and types the pre-linked component
/// with `typed` (the version's bindings), returning it with the identity of
/// the build (name and version still empty: the caller asks the instance).
/// The shared part of loading either world.
pub(super) fn prelink<P>(
    spec: &PluginSpec,
    tiering: Tiering,
    accepts: &[World],
    add_imports: impl FnOnce(Version, &mut Linker<HostState>) -> wasmtime::Result<()>,
    typed: impl FnOnce(Version, InstancePre<HostState>) -> wasmtime::Result<P>,
) -> Result<(P, PluginInfo), PluginError> {
    let compiled = compiled::load(spec, tiering)?;
    let component = compiled.component;
    let refused =
        |reason: String| PluginError::WrongWorld { plugin: spec.slot.clone(), path: spec.path.clone(), world: accepts[0].name(), reason };
    let target = wit::target(&component).map_err(|e| refused(e.to_string()))?;
    if !accepts.contains(&target.world) {
        return Err(refused(format!("it implements the {} world", target.world.name())));
    }
    let link_error = |e: wasmtime::Error| refused(format!("{e:#}"));
    let mut linker: Linker<HostState> = Linker::new(component.engine());
    super::wasi::add_to_linker(&mut linker).map_err(link_error)?;
    add_imports(target.version, &mut linker).map_err(link_error)?;
    let pre = linker.instantiate_pre(&component).map_err(link_error)?;
    let pre = typed(target.version, pre).map_err(link_error)?;
    let info = PluginInfo {
        slot: spec.slot.clone(),
        name: String::new(),
        version: String::new(),
        contract: target.version.to_string(),
        path: spec.path.clone(),
        content_hash: compiled.hash,
        origin: compiled.origin,
        loaded_at: SystemTime::now(),
    };
    Ok((pre, info))
}

/// A fresh instance: a store with the spec's limits, on which `start`
/// instantiates the component and calls its `configure`; the error says
/// whether it trapped, ran out of time or memory, or refused its settings.
pub(super) fn start_instance<B>(
    spec: &PluginSpec,
    info: &PluginInfo,
    geoip: Option<Arc<GeoIp>>,
    start: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<(B, Result<(), String>)>,
) -> Result<(Store<HostState>, B), PluginError> {
    let mut store = new_store(info, &spec.limits, geoip);
    arm(&mut store, &spec.limits);
    match start(&mut store) {
        Ok((bindings, Ok(()))) => Ok((store, bindings)),
        Ok((_, Err(reason))) => Err(PluginError::Configure { plugin: spec.slot.clone(), reason }),
        Err(e) => Err(call_error(e, &mut store, info, &spec.limits)),
    }
}

/// Which contract version and world the component of `spec` targets
/// (compiling it through the cache, so loading it next costs nothing more).
pub fn target_of(spec: &PluginSpec) -> Result<wit::Target, PluginError> {
    let component = compiled::load(spec, Tiering::Optimized)?.component;
    wit::target(&component).map_err(|e| PluginError::NotAPlugin {
        plugin: spec.slot.clone(),
        path: spec.path.clone(),
        reason: e.to_string(),
    })
}

/// Fills in the name and version a fresh instance reports.
pub(super) fn identify(
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
    super::artifact::hex(&Sha256::digest(bytes))
}
