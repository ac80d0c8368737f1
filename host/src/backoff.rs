//! How the retry loops wait between attempts (store, offsets, indexer): one
//! `backon` exponential schedule, built here with each loop's first pause and
//! cap, so every loop doubles, caps and (where asked) jitters the same way.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::watch;

/// Pauses of `first`, doubling up to `max`, without end: the loops decide
/// themselves when to give up (a shutdown, a time budget).
pub fn pauses(first: Duration, max: Duration) -> Pauses {
    Pauses { schedule: schedule(first, max).build(), max }
}

/// [`pauses`] with up to as much again added at random to each, so that
/// retries for one outage from many hosts (or many items) spread out.
pub fn pauses_jittered(first: Duration, max: Duration) -> Pauses {
    Pauses { schedule: schedule(first, max).with_jitter().build(), max }
}

fn schedule(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default().with_min_delay(first).with_max_delay(max).with_factor(2.0).without_max_times()
}

/// An endless sequence of pauses.
#[derive(Debug)]
pub struct Pauses {
    schedule: ExponentialBackoff,
    max: Duration,
}

impl Pauses {
    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        // Built `without_max_times`, the schedule never ends; the cap is the
        // fallback should a later backon end it anyway.
        self.schedule.next().unwrap_or(self.max)
    }
}

/// Sleeps for `pause`, or less if `stop` turns true meanwhile: a retry loop
/// must never hold up a shutdown.
pub async fn pause_unless_stopped(pause: Duration, stop: &watch::Receiver<bool>) {
    let mut stop = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(pause) => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_cap_and_never_end() {
        let mut p = pauses(Duration::from_millis(100), Duration::from_millis(500));
        let seen: Vec<u128> = (0..6).map(|_| p.next_pause().as_millis()).collect();
        assert_eq!(seen, vec![100, 200, 400, 500, 500, 500]);
    }

    #[test]
    fn jitter_adds_at_most_the_pause_again() {
        let mut p = pauses_jittered(Duration::from_millis(100), Duration::from_millis(400));
        for nominal in [100, 200, 400, 400] {
            let pause = p.next_pause().as_millis();
            assert!((nominal..=2 * nominal).contains(&pause), "{pause} ms for a nominal {nominal} ms");
        }
    }
}
