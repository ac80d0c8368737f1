//! What one plugin call may use: memory, time, tables.

use std::path::PathBuf;
use std::time::Duration;

use wasmtime::ResourceLimiter;

use super::engine::EPOCH_TICK;

/// Tables a guest may grow to. Rust guests use one small function table; a
/// guest that grows past this is broken, not busy.
const MAX_TABLE_ELEMENTS: usize = 100_000;

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
        PluginLimits { memory_bytes: 256 << 20, deadline: Duration::from_secs(1), read_only_dir: None }
    }
}

impl PluginLimits {
    pub(super) fn deadline_ticks(&self) -> u64 {
        (self.deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// Caps linear memory and remembers the high-water mark and a refused growth,
/// so a blow-up is reported as such rather than as a generic trap.
pub(super) struct MemoryLimiter {
    pub(super) cap: usize,
    pub(super) high_water: usize,
    pub(super) refused: Option<usize>,
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
