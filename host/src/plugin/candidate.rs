//! What a shadow and a canary share: the candidate build in a slot of its
//! own, the runner that calls it, and which batches it sees. One place, so
//! that the two kinds of rollout select batches and count the candidate's
//! calls the same way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::transform::{LoadedTransform, TransformRunner};
use super::Slot;

/// Which batches a candidate sees: `fraction` of them, evenly spread rather
/// than drawn at random, so that even a short trial sees its share.
#[derive(Debug)]
pub struct Sampler {
    fraction: f64,
    /// Batches offered so far.
    offered: AtomicU64,
}

impl Sampler {
    /// `fraction` clamped to (0, 1]: pipeline.toml allows no other, and a
    /// share read back (the API shows it) must be the one applied.
    pub fn new(fraction: f64) -> Sampler {
        Sampler { fraction: fraction.clamp(f64::MIN_POSITIVE, 1.0), offered: AtomicU64::new(0) }
    }

    /// The share of batches selected.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Whether the batch offered now is one of the share. Each call is one
    /// batch: ask once per batch.
    pub fn selects(&self) -> bool {
        let n = self.offered.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.fraction).floor() > (n * self.fraction).floor()
    }
}

/// `build` in a slot of its own, and a runner over that slot: the
/// candidate's calls, errors and memory are counted apart from the serving
/// version's, and a settings edit swaps the candidate's build in its slot.
pub fn own_slot(build: Arc<LoadedTransform>) -> (Arc<Slot<LoadedTransform>>, TransformRunner) {
    let slot = Arc::new(Slot::new(build));
    (slot.clone(), TransformRunner::new(slot))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selected(fraction: f64, batches: usize) -> Vec<usize> {
        let sampler = Sampler::new(fraction);
        (0..batches).filter(|_| sampler.selects()).collect()
    }

    #[test]
    fn a_share_of_batches_is_selected_evenly_spread() {
        assert_eq!(selected(0.25, 12), [3, 7, 11]);
        assert_eq!(selected(1.0, 4), [0, 1, 2, 3]);
        assert_eq!(selected(0.5, 6).len(), 3);
    }

    #[test]
    fn a_share_outside_zero_to_one_reads_as_the_nearest_one_applied() {
        assert_eq!(Sampler::new(2.0).fraction(), 1.0);
        assert!(Sampler::new(0.0).fraction() > 0.0);
        assert_eq!(selected(2.0, 3), [0, 1, 2]);
    }
}
