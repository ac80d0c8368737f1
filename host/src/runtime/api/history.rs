//! The recent past of the main counters, for the dashboard's throughput
//! chart (`GET /api/history`).
//!
//! A page sees the counters only from the moment it opens, so a freshly
//! opened dashboard would show an empty chart for its first seconds and
//! nothing of what happened before. The API therefore samples the counters
//! itself, every [`SAMPLE_INTERVAL`] over the last [`WINDOW`], into a ring
//! of fixed size: [`CAPACITY`] samples of 40 bytes, about 14 KiB whatever
//! the uptime. Samples hold the cumulative counters, not rates: a reader
//! takes the rate over any two of them, and a late tick (the API's thread
//! runs below ingest's priority) widens one interval without losing counts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::stats::Stats;

/// How often the counters are sampled: fine enough for a chart of half an
/// hour (360 points), coarse enough to cost nothing.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How far back the history reaches: what an operator opening the page
/// after an alert wants to see, at a memory cost that does not grow.
pub const WINDOW: Duration = Duration::from_secs(30 * 60);

/// Samples kept: the window over the interval.
pub const CAPACITY: usize = (WINDOW.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize;

/// A sample younger than this is not added at request time: the rate over
/// a shorter interval than this would be mostly noise.
const MIN_LIVE_GAP_MS: i64 = 1000;

/// The main counters at one moment (cumulative since the process started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Sample {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// Records read from Kafka.
    pub consumed: u64,
    /// Events stored in PostgreSQL.
    pub stored: u64,
    /// Records a transform dropped.
    pub dropped: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
}

impl Sample {
    /// The counters of `stats` now.
    pub fn of(stats: &Stats) -> Sample {
        Sample {
            at_ms: chrono::Utc::now().timestamp_millis(),
            consumed: stats.consumed.get(),
            stored: stats.stored.get(),
            dropped: stats.dropped.get(),
            dead_lettered: stats.dead_lettered.get(),
        }
    }
}

/// What `GET /api/history` answers.
#[derive(Debug, serde::Serialize)]
pub struct HistoryAnswer {
    /// [`SAMPLE_INTERVAL`] in milliseconds.
    pub interval_ms: u64,
    /// [`WINDOW`] in milliseconds.
    pub window_ms: u64,
    /// Oldest first; the last one is taken when the request is answered
    /// (unless a sample was taken less than a second before).
    pub samples: Vec<Sample>,
}

/// The ring of samples, shared by the sampler and the handler.
#[derive(Debug)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl Default for History {
    fn default() -> History {
        History { samples: Mutex::new(VecDeque::with_capacity(CAPACITY)) }
    }
}

impl History {
    /// Adds a sample, forgetting the oldest when the ring is full.
    pub fn record(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("never poisoned");
        if samples.len() == CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples kept, oldest first, and `now` after them when it is at
    /// least a second newer than the last (not kept: the ring stays evenly
    /// spaced).
    pub fn answer(&self, now: Sample) -> HistoryAnswer {
        let mut samples: Vec<Sample> = self.samples.lock().expect("never poisoned").iter().copied().collect();
        if samples.last().is_none_or(|last| now.at_ms - last.at_ms >= MIN_LIVE_GAP_MS) {
            samples.push(now);
        }
        HistoryAnswer { interval_ms: SAMPLE_INTERVAL.as_millis() as u64, window_ms: WINDOW.as_millis() as u64, samples }
    }

    /// Samples `stats` at once and then every [`SAMPLE_INTERVAL`] until
    /// `shutdown` turns true.
    pub async fn sample_until(self: Arc<Self>, stats: Arc<Stats>, mut shutdown: watch::Receiver<bool>) {
        let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => self.record(Sample::of(&stats)),
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at_ms: i64, consumed: u64) -> Sample {
        Sample { at_ms, consumed, stored: consumed, dropped: 0, dead_lettered: 0 }
    }

    #[test]
    fn the_ring_keeps_the_last_window_and_no_more() {
        assert_eq!(CAPACITY, 360);
        let history = History::default();
        let allocated = history.samples.lock().unwrap().capacity();
        for i in 0..CAPACITY as i64 + 10 {
            history.record(at(i * 5000, i as u64));
        }
        let answer = history.answer(at((CAPACITY as i64 + 10) * 5000, 0));
        assert_eq!(answer.samples.len(), CAPACITY + 1, "the ring, then the sample taken now");
        assert_eq!(answer.samples[0].consumed, 10, "the oldest ten were forgotten");
        assert!(answer.samples.windows(2).all(|w| w[0].at_ms < w[1].at_ms), "oldest first");
        assert_eq!(history.samples.lock().unwrap().capacity(), allocated, "never grown");
    }

    #[test]
    fn a_sample_taken_now_is_added_only_a_second_after_the_last() {
        let history = History::default();
        assert_eq!(history.answer(at(0, 0)).samples.len(), 1, "an empty ring still answers the present");
        history.record(at(10_000, 5));
        assert_eq!(history.answer(at(10_400, 7)).samples.len(), 1);
        assert_eq!(history.answer(at(11_000, 7)).samples.len(), 2);
        assert_eq!(history.samples.lock().unwrap().len(), 1, "what is answered now is not kept");
    }
}
