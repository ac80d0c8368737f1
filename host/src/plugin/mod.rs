//! The WASM plugin host: one engine, compiled components, bounded calls.
//!
//! A plugin file is compiled once ([`engine`]) into a loaded plugin
//! (component, pre-linked instance, name, version, content hash;
//! [`instance`]). Which contract version and world a component targets is
//! read from its imports and exports before linking ([`wit`]); the contract's
//! generated types never leave [`wit`]: the runners take and return the
//! host's own records. The live version of each plugin sits in a [`Slot`]; a
//! runner (one per worker, never shared) owns a store and instance of
//! whatever the slot held when its batch started, and re-instantiates when
//! the slot changes or after a failed call. Hot reload only ever replaces
//! what a slot holds, after the new version passed the [`golden`] batch.

pub mod aggregate;
pub mod artifact;
pub mod canary;
mod candidate;
pub mod compiled;
pub mod config;
pub mod engine;
pub mod error;
pub mod geoip;
pub mod golden;
pub mod instance;
pub mod limits;
pub mod log;
pub mod shadow;
pub mod slot;
mod stderr;
pub mod transform;
mod wasi;
pub mod wit;

pub use compiled::{Origin, Tiering};
pub use engine::{baseline_engine, engine, EPOCH_TICK};
pub use error::PluginError;
pub use instance::{content_hash, HostState, PluginInfo, PluginSpec};
pub use limits::PluginLimits;
pub use slot::{PluginCounters, Slot};
