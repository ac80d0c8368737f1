//! The process's engines: the optimising one and the baseline one.

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::Engine;

/// The epoch advances this often. Deadlines are counted in ticks, so this is
/// their resolution; 10 ms keeps the ticker's cost negligible while a 1 s
/// deadline overshoots by at most 1%.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The process's optimising engine (Cranelift): compiled code and the epoch
/// are shared by every plugin. A ticker thread advances the epoch; it holds
/// only a weak reference so it stops if the engine ever goes away.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| new_engine(wasmtime::Strategy::Cranelift))
}

/// The baseline engine (Winch): compiles a component in a fraction of
/// Cranelift's time into slower code. A swap to a component never compiled
/// before serves from it until the optimised build is ready. Components of
/// the two engines never mix: a store runs on its component's engine.
pub fn baseline_engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| new_engine(wasmtime::Strategy::Winch))
}

fn new_engine(strategy: wasmtime::Strategy) -> Engine {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.strategy(strategy);
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
}
