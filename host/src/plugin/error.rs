//! What can go wrong loading or calling a plugin.

use std::path::PathBuf;

use wasmtime::{Store, Trap};

use super::instance::{HostState, PluginInfo};
use super::limits::{PluginLimits, Tripped, MAX_LIFT_BYTES};

/// Everything that can go wrong loading or calling a plugin. Each names the
/// plugin, so a log line says which one to fix.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum PluginError {
    /// The file could not be read.
    #[error("plugin `{plugin}`: cannot read {path}: {source}")]
    Read {
        /// Plugin name from pipeline.toml.
        plugin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than any plugin the host loads.
    #[error("plugin `{plugin}`: {path} is {bytes} bytes, past the cap of {cap} bytes for a plugin file")]
    TooLarge { plugin: String, path: PathBuf, bytes: u64, cap: u64 },
    /// The file is not a valid WebAssembly component.
    #[error(
        "plugin `{plugin}`: {path} is not a WebAssembly component ({reason}); build plugins with `cargo build --target wasm32-wasip2`"
    )]
    NotAComponent {
        /// Plugin name from pipeline.toml.
        plugin: String,
        path: PathBuf,
        /// The compiler's message.
        reason: String,
    },
    /// A precompiled artifact named in pipeline.toml was refused, and no
    /// `.wasm` beside it could be compiled instead.
    #[error("plugin `{plugin}`: precompiled artifact {path} refused: {reason}")]
    Artifact { plugin: String, path: PathBuf, reason: String },
    /// The component implements no world of a contract version this host
    /// loads.
    #[error("plugin `{plugin}`: {path}: {reason}")]
    NotAPlugin {
        /// Plugin name from pipeline.toml.
        plugin: String,
        path: PathBuf,
        reason: String,
    },
    /// The component does not implement the world this slot needs in a
    /// contract version this host loads.
    #[error("plugin `{plugin}`: {path} cannot serve as an `{world}`: {reason}")]
    WrongWorld {
        /// Plugin name from pipeline.toml.
        plugin: String,
        path: PathBuf,
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
        deadline_ms: u128,
    },
    /// The plugin called a WASI function plugins are denied (sockets, name
    /// lookups).
    #[error("plugin `{plugin}` ({version}) called {call}, which plugins are denied: a plugin reaches no network")]
    Denied { plugin: String, version: String, call: &'static str },
    /// A call tried to grow memory past the cap.
    #[error("plugin `{plugin}` ({version}) asked for {requested} bytes of memory, past its cap of {cap} bytes")]
    MemoryExceeded {
        /// Plugin name.
        plugin: String,
        /// Plugin version.
        version: String,
        /// Bytes the guest asked for.
        requested: usize,
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
        reason: String,
    },
}

impl PluginError {
    /// A short label for metrics and dead-letter reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginError::Read { .. } => "read",
            PluginError::TooLarge { .. } => "too_large",
            PluginError::NotAComponent { .. } => "not_a_component",
            PluginError::Artifact { .. } => "artifact",
            PluginError::NotAPlugin { .. } => "not_a_plugin",
            PluginError::WrongWorld { .. } => "wrong_world",
            PluginError::Configure { .. } => "configure",
            PluginError::Deadline { .. } => "deadline",
            PluginError::Denied { .. } => "denied",
            PluginError::MemoryExceeded { .. } => "memory",
            PluginError::Trap { .. } => "trap",
            PluginError::Contract { .. } => "contract",
        }
    }
}

/// Turns a failed call into the error that says what happened.
pub(super) fn call_error(err: wasmtime::Error, store: &mut Store<HostState>, info: &PluginInfo, limits: &PluginLimits) -> PluginError {
    let (plugin, version) = (info.slot.clone(), info.version.clone());
    if let Some(requested) = store.data_mut().limiter.refused.take() {
        return PluginError::MemoryExceeded { plugin, version, requested, cap: limits.memory_bytes };
    }
    let deadline = || PluginError::Deadline { plugin: plugin.clone(), version: version.clone(), deadline_ms: limits.deadline.as_millis() };
    match store.data_mut().clock.tripped.take() {
        Some(Tripped::Waited(_)) => return deadline(),
        Some(Tripped::Denied(call)) => return PluginError::Denied { plugin, version, call },
        None => {}
    }
    if err.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return deadline();
    }
    if lift_exhausted(&err) {
        let reason = format!("it passed the host more than {MAX_LIFT_BYTES} bytes in one call (results, or one import's arguments)");
        return PluginError::Contract { plugin, version, reason };
    }
    let stderr = store.data().stderr.take();
    let message = if stderr.is_empty() { format!("{err:?}") } else { format!("{stderr}\n{err:?}") };
    PluginError::Trap { plugin, version, message }
}

/// Whether wasmtime stopped copying data out of the guest because the
/// store's hostcall fuel ([`MAX_LIFT_BYTES`]) ran out. wasmtime's error type
/// for it is private, so its message is matched; `tests/sandbox.rs` pins it.
fn lift_exhausted(err: &wasmtime::Error) -> bool {
    err.chain().any(|cause| cause.to_string().contains("fuel allocated for hostcalls has been exhausted"))
}
