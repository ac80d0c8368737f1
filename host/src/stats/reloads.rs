//! The reload history: every attempt to change what serves (a plugin build,
//! pipeline.toml, a GeoIP file) and what came of it, counted for Prometheus
//! and kept, with its detail, for the dashboard. Apart from the other
//! metrics because the reloader, the canary and the GeoIP refresh record
//! here and the API reads it back, all by one [`ReloadOutcome`].

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// What came of a reload attempt, or of a step of a rollout. Its
/// [`as_str`](ReloadOutcome::as_str) is the `outcome` label of
/// `clickstream_reloads` and the `outcome` of the history's JSON, which
/// alerts and the dashboard match on: a variant's string never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadOutcome {
    /// The new build, pipeline.toml or GeoIP file serves.
    Accepted,
    /// Refused; what served keeps serving.
    Rejected,
    /// A swap served a baseline build first; the optimised one replaced it.
    Optimized,
    /// The optimised build did not replace the baseline one, which keeps serving.
    NotOptimized,
    /// A settings edit reached the builds a transform holds, its rollout's included.
    Settings,
    /// A candidate put beside the serving version, compared, never stored.
    Shadowing,
    /// A candidate put to serve a share of the batches.
    Canary,
    /// A candidate serves every batch now (a canary is still watched).
    Promoted,
    /// A canary judged worse than the serving version, or aborted through the API.
    RolledBack,
    /// A candidate dropped through the API, or replaced by a newer one.
    Aborted,
    /// A promoted canary is no longer watched; it keeps serving.
    WatchEnded,
}

impl ReloadOutcome {
    /// Every outcome, for a reader that shows them all.
    pub const ALL: [ReloadOutcome; 11] = [
        ReloadOutcome::Accepted,
        ReloadOutcome::Rejected,
        ReloadOutcome::Optimized,
        ReloadOutcome::NotOptimized,
        ReloadOutcome::Settings,
        ReloadOutcome::Shadowing,
        ReloadOutcome::Canary,
        ReloadOutcome::Promoted,
        ReloadOutcome::RolledBack,
        ReloadOutcome::Aborted,
        ReloadOutcome::WatchEnded,
    ];

    /// The label value and the history's JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadOutcome::Accepted => "accepted",
            ReloadOutcome::Rejected => "rejected",
            ReloadOutcome::Optimized => "optimized",
            ReloadOutcome::NotOptimized => "not_optimized",
            ReloadOutcome::Settings => "settings",
            ReloadOutcome::Shadowing => "shadowing",
            ReloadOutcome::Canary => "canary",
            ReloadOutcome::Promoted => "promoted",
            ReloadOutcome::RolledBack => "rolled_back",
            ReloadOutcome::Aborted => "aborted",
            ReloadOutcome::WatchEnded => "watch_ended",
        }
    }
}

/// Compares with a label as the metrics and the JSON show it.
impl PartialEq<&str> for ReloadOutcome {
    fn eq(&self, label: &&str) -> bool {
        self.as_str() == *label
    }
}

impl serde::Serialize for ReloadOutcome {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One reload attempt, for the dashboard's history.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadRecord {
    /// When, Unix milliseconds.
    pub at_ms: i64,
    /// A plugin slot (`enrich`, `aggregate`), `pipeline.toml` or `geoip:<file>`.
    pub what: String,
    /// What came of it.
    pub outcome: ReloadOutcome,
    /// The version now serving, or why it was rejected.
    pub detail: String,
}

/// How many reload attempts the history keeps.
pub(super) const RELOAD_HISTORY: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(super) struct ReloadLabels {
    what: String,
    outcome: String,
}

impl ReloadLabels {
    fn of(what: &str, outcome: &str) -> ReloadLabels {
        ReloadLabels { what: what.to_string(), outcome: outcome.to_string() }
    }
}

/// The counts by (what, outcome) and the latest attempts, oldest first.
#[derive(Debug, Default)]
pub(super) struct Reloads {
    /// Registered as `clickstream_reloads`.
    pub(super) counts: Family<ReloadLabels, Counter>,
    history: Mutex<VecDeque<ReloadRecord>>,
}

impl Reloads {
    /// Counts an attempt and keeps it; `detail` is already redacted.
    pub(super) fn record(&self, what: &str, outcome: ReloadOutcome, detail: String) {
        self.counts.get_or_create(&ReloadLabels::of(what, outcome.as_str())).inc();
        let mut history = super::lock(&self.history);
        if history.len() == RELOAD_HISTORY {
            history.pop_front();
        }
        history.push_back(ReloadRecord { at_ms: chrono::Utc::now().timestamp_millis(), what: what.to_string(), outcome, detail });
    }

    pub(super) fn count_of(&self, what: &str, outcome: &str) -> u64 {
        self.counts.get(&ReloadLabels::of(what, outcome)).map_or(0, |c| c.get())
    }

    /// Makes `outcome`'s count for `what` visible at 0.
    pub(super) fn expose(&self, what: &str, outcome: ReloadOutcome) {
        drop(self.counts.get_or_create(&ReloadLabels::of(what, outcome.as_str())));
    }

    pub(super) fn history(&self) -> Vec<ReloadRecord> {
        super::lock(&self.history).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The strings every outcome had when they were loose strings: label
    /// values in dashboards and alerts, and the history's JSON.
    #[test]
    fn each_outcome_reads_as_it_always_has() {
        let labels: Vec<&str> = ReloadOutcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            labels,
            [
                "accepted",
                "rejected",
                "optimized",
                "not_optimized",
                "settings",
                "shadowing",
                "canary",
                "promoted",
                "rolled_back",
                "aborted",
                "watch_ended"
            ]
        );
        for outcome in ReloadOutcome::ALL {
            assert_eq!(serde_json::to_value(outcome).unwrap(), serde_json::json!(outcome.as_str()));
        }
    }
}
