//! What one plugin instance may use: memory, time, tables, instances, and
//! the bytes the host copies out of it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;

use super::engine::EPOCH_TICK;

/// Table elements one instance may hold in all. Rust guests use one small
/// function table; a guest that grows past this is broken, not busy.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Linear memories one instance may create. A Rust component has one, a
/// JavaScript one (StarlingMonkey) two; wasmtime's default is 10,000.
pub const MAX_MEMORIES: usize = 4;

/// Tables one instance may create (wasmtime's default is 10,000). The
/// components this project builds use up to 4.
pub const MAX_TABLES: usize = 16;

/// Core instances one component instance may create (wasmtime's default is
/// 10,000). A component is its modules plus a few shims: under 10 here.
pub const MAX_INSTANCES: usize = 32;

/// Bytes the host copies out of a plugin in one call, in all: a call's
/// results, or the arguments of one host import it calls. A batch of 8,192
/// enriched events lifts about 5 MiB; a plugin can only go past this by
/// returning many strings that alias one buffer, or lists far longer than
/// its batch, and gets a contract error instead of exhausting the host.
pub const MAX_LIFT_BYTES: usize = 64 << 20;

/// Bounds on every call into a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLimits {
    /// Most linear memory one instance may hold, in bytes: all its memories
    /// together.
    pub memory_bytes: usize,
    /// Longest one call (one batch) may run, waiting in WASI included.
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

/// Caps the memory of all an instance's linear memories together and the
/// counts of memories, tables and core instances; remembers the high-water
/// mark and a refused growth, so a blow-up is reported as such rather than
/// as a generic trap.
pub(super) struct MemoryLimiter {
    pub(super) cap: usize,
    /// Bytes held by all the instance's memories.
    total: usize,
    pub(super) high_water: usize,
    pub(super) refused: Option<usize>,
}

impl MemoryLimiter {
    pub(super) fn new(cap: usize) -> MemoryLimiter {
        MemoryLimiter { cap, total: 0, high_water: 0, refused: None }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // A new memory arrives here with `current` 0, so the sum counts
        // every memory the instance creates.
        let total = (self.total - current.min(self.total)).saturating_add(desired);
        if total > self.cap {
            self.refused = Some(total);
            // An error traps at once; returning false would let the guest's
            // allocator abort with a less telling message.
            wasmtime::bail!("memory cap of {} bytes exceeded", self.cap);
        }
        self.total = total;
        self.high_water = self.high_water.max(total);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

/// Why the host stopped a call from inside one of its own functions (where
/// the epoch cannot interrupt), so the error says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tripped {
    /// The guest waited in WASI (`poll`, `block`) past its deadline.
    Waited(&'static str),
    /// The guest asked for a capability plugins are denied.
    Denied(&'static str),
}

/// The current call's clock, for the host functions that can wait.
pub(super) struct CallClock {
    started: Instant,
    deadline: Duration,
    pub(super) tripped: Option<Tripped>,
}

impl CallClock {
    pub(super) fn new(deadline: Duration) -> CallClock {
        CallClock { started: Instant::now(), deadline, tripped: None }
    }

    /// Called with each call's epoch deadline.
    pub(super) fn restart(&mut self) {
        self.started = Instant::now();
        self.tripped = None;
    }

    /// How long the call may still wait.
    pub(super) fn left(&self) -> Duration {
        self.deadline.saturating_sub(self.started.elapsed())
    }

    /// Records why the call is stopped and returns the trap that stops it.
    pub(super) fn trip(&mut self, why: Tripped) -> wasmtime::Error {
        self.tripped = Some(why);
        match why {
            Tripped::Waited(call) => wasmtime::format_err!("waited in {call} past the call's deadline"),
            Tripped::Denied(call) => wasmtime::format_err!("called {call}, which plugins are denied"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_counts_every_memory_of_the_instance_together() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        // A second memory of 60 would be under the cap alone, not with the first.
        assert!(limiter.memory_growing(0, 60, None).is_err());
        assert_eq!(limiter.refused, Some(120));
        // Growing the first memory counts only the growth.
        assert!(limiter.memory_growing(60, 90, None).unwrap());
        assert_eq!(limiter.high_water, 90);
    }
}
