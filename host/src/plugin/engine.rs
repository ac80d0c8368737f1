//! The process's one engine, and compiled components by content hash.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::Engine;

use super::instance::content_hash;
use super::{PluginError, PluginSpec};

/// The epoch advances this often. Deadlines are counted in ticks, so this is
/// their resolution; 10 ms keeps the ticker's cost negligible while a 1 s
/// deadline overshoots by at most 1%.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

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

/// How many compiled components [`compile`] keeps by content hash.
const COMPILED_KEPT: usize = 4;

/// (content hash, component), most recent last.
type Compiled = VecDeque<(String, Component)>;

/// Compiled components by content hash, most recent last: loading a file
/// whose bytes this process compiled before (a rollback to the previous
/// version, a restart of the pipeline after a config change) skips
/// compiling, which is most of a swap's time. Bounded, so a long series of
/// deploys does not grow memory. `CLICKSTREAM_COMPILE_CACHE=off` turns it
/// off (the benchmarks measure swaps both ways).
fn compiled() -> Option<&'static Mutex<Compiled>> {
    static CACHE: OnceLock<Option<Mutex<Compiled>>> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let off = std::env::var("CLICKSTREAM_COMPILE_CACHE").is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "false"));
            (!off).then(|| Mutex::new(VecDeque::new()))
        })
        .as_ref()
}

/// Reads and compiles a component file, returning it with its content hash.
pub(super) fn compile(spec: &PluginSpec) -> Result<(Component, String), PluginError> {
    let bytes =
        std::fs::read(&spec.path).map_err(|source| PluginError::Read { plugin: spec.slot.clone(), path: spec.path.clone(), source })?;
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
