//! Canary: a candidate version of a transform serves a share of the batches
//! while the serving version keeps the rest, and the two versions' figures
//! on the same stream decide. After `batches` canary batches the candidate
//! is promoted if its error, reject and drop rates stay within `tolerance`
//! of the serving version's, and rolled back otherwise; after a promotion a
//! watch rolls back to the previous version on a rise in errors or rejects.
//!
//! A canary costs no events: what it keeps or drops is final (that is what
//! serving means), but the events it rejects, or a whole batch it fails on,
//! go on to the serving version, and only the serving version's verdict is
//! stored. Every decision is recorded in the reload history with its figures.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

use super::candidate::{own_slot, Sampler};
use super::transform::{LoadedTransform, TransformRunner};
use super::{PluginError, PluginInfo, Slot};
use crate::stages::record::{Outcome, TransformEvent};
use crate::stats::{ReloadOutcome, Stats};

/// What a canary must show, from the transform's table in pipeline.toml.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CanaryPolicy {
    /// The share of batches the candidate serves, in (0, 1).
    pub fraction: f64,
    /// Canary batches before the verdict; also the watch's window.
    pub batches: u64,
    /// How far its rates may exceed the serving version's (0.01: one point).
    pub tolerance: f64,
    /// Batches watched after a promotion; 0 for no watch.
    pub watch_batches: u64,
}

/// What one version did with the batches it served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // named for what they count
pub struct Rates {
    pub batches: u64,
    pub records: u64,
    pub kept: u64,
    pub dropped: u64,
    /// Events rejected, or returned in a form the host cannot store.
    pub rejected: u64,
    /// Batches the version failed on (trap, deadline, memory, contract).
    pub failed_batches: u64,
}

impl Rates {
    /// Counts a batch the version answered.
    pub fn outcomes(&mut self, outcomes: &[Outcome]) {
        self.batches += 1;
        self.records += outcomes.len() as u64;
        for outcome in outcomes {
            match outcome {
                Outcome::Keep(_) => self.kept += 1,
                Outcome::Drop(_) => self.dropped += 1,
                Outcome::Reject(_) => self.rejected += 1,
            }
        }
    }

    /// Counts a batch of `records` events the version failed on.
    pub fn failure(&mut self, records: usize) {
        self.batches += 1;
        self.records += records as u64;
        self.failed_batches += 1;
    }

    fn share(n: u64, of: u64) -> f64 {
        if of == 0 {
            0.0
        } else {
            n as f64 / of as f64
        }
    }

    /// Failed batches per batch.
    pub fn error_rate(&self) -> f64 {
        Self::share(self.failed_batches, self.batches)
    }

    /// Rejected events per event.
    pub fn reject_rate(&self) -> f64 {
        Self::share(self.rejected, self.records)
    }

    /// Dropped events per event.
    pub fn drop_rate(&self) -> f64 {
        Self::share(self.dropped, self.records)
    }
}

impl std::fmt::Display for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} batches, {} events: {:.1}% rejected, {:.1}% dropped, {} failed batches",
            self.batches,
            self.records,
            self.reject_rate() * 100.0,
            self.drop_rate() * 100.0,
            self.failed_batches
        )
    }
}

/// Whether `candidate` stays within `tolerance` of `baseline`: the first
/// rate beyond it, with both figures, if not. Drops are judged only during
/// the trial: after a promotion the old version's drop rate no longer
/// describes the stream the new one sees.
pub fn judge(candidate: &Rates, baseline: &Rates, tolerance: f64, drops: bool) -> Result<(), String> {
    let mut rates = vec![
        ("error rate", candidate.error_rate(), baseline.error_rate()),
        ("reject rate", candidate.reject_rate(), baseline.reject_rate()),
    ];
    if drops {
        rates.push(("drop rate", candidate.drop_rate(), baseline.drop_rate()));
    }
    for (what, c, b) in rates {
        if c > b + tolerance {
            return Err(format!(
                "{what} {:.1}% against {:.1}% for the serving version, beyond the tolerance of {:.1} points",
                c * 100.0,
                b * 100.0,
                tolerance * 100.0
            ));
        }
    }
    Ok(())
}

/// Where a canary is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Serving its share of batches, not yet judged.
    Trial,
    /// Promoted; watched for a rise in errors or rejects.
    Watch,
    /// Promoted for good, or rolled back.
    Done,
}

struct State {
    phase: Phase,
    /// The candidate's figures in the trial; the promoted version's since
    /// its promotion in the watch.
    candidate: Rates,
    /// The serving version's figures on the other batches of the trial.
    serving: Rates,
    /// The watch's window being filled.
    window: Rates,
    /// In the watch: the version a rollback restores.
    previous: Option<Arc<LoadedTransform>>,
}

/// What a canary has seen so far, for the API and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[allow(missing_docs)] // named for what they hold
pub struct CanaryReport {
    pub phase: Phase,
    pub policy: CanaryPolicy,
    /// The candidate's figures (since promotion, in the watch).
    pub candidate: Rates,
    /// The serving version's figures beside it during the trial.
    pub serving: Rates,
}

/// A candidate in canary on a transform's slot.
pub struct Canary {
    /// The candidate, in a slot of its own (its own counters).
    pub candidate: Arc<Slot<LoadedTransform>>,
    /// What it must show.
    pub policy: CanaryPolicy,
    /// The batches it serves in the trial.
    sampler: Sampler,
    /// The candidate's instance (the transform thread is its one user).
    runner: Mutex<TransformRunner>,
    state: Mutex<State>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Canary {
    /// A canary of `candidate` under `policy`.
    pub fn new(candidate: Arc<LoadedTransform>, policy: CanaryPolicy) -> Canary {
        let (candidate, runner) = own_slot(candidate);
        let sampler = Sampler::new(policy.fraction);
        Canary {
            candidate,
            policy: CanaryPolicy { fraction: sampler.fraction(), ..policy },
            sampler,
            runner: Mutex::new(runner),
            state: Mutex::new(State {
                phase: Phase::Trial,
                candidate: Rates::default(),
                serving: Rates::default(),
                window: Rates::default(),
                previous: None,
            }),
        }
    }

    /// The candidate's identity.
    pub fn info(&self) -> PluginInfo {
        self.candidate.current().info.clone()
    }

    /// What it has seen so far.
    pub fn report(&self) -> CanaryReport {
        let state = lock(&self.state);
        CanaryReport { phase: state.phase, policy: self.policy, candidate: state.candidate, serving: state.serving }
    }

    /// Whether the candidate serves the next batch: in the trial only, on
    /// `fraction` of the batches, evenly spread.
    pub fn takes_batch(&self) -> bool {
        lock(&self.state).phase == Phase::Trial && self.sampler.selects()
    }

    /// Runs the candidate on a batch it takes.
    pub fn run(&self, events: &[TransformEvent]) -> Result<(Arc<LoadedTransform>, Vec<Outcome>), PluginError> {
        lock(&self.runner).transform(events)
    }

    /// Counts what the candidate did with a batch it took.
    pub fn tally_candidate(&self, rates: Rates) {
        let mut state = lock(&self.state);
        if state.phase == Phase::Trial {
            add(&mut state.candidate, &rates);
        }
    }

    /// Counts a whole batch the serving version answered (`outcomes`) or
    /// failed on: the baseline in the trial, the promoted version in the watch.
    pub fn tally_serving(&self, records: usize, outcomes: Option<&[Outcome]>) {
        let mut rates = Rates::default();
        match outcomes {
            Some(outcomes) => rates.outcomes(outcomes),
            None => rates.failure(records),
        }
        let mut state = lock(&self.state);
        match state.phase {
            Phase::Trial => add(&mut state.serving, &rates),
            Phase::Watch => {
                add(&mut state.candidate, &rates);
                add(&mut state.window, &rates);
            }
            Phase::Done => {}
        }
    }

    /// Acts on the figures after a batch: promotes the candidate into
    /// `slot`, rolls it back, or ends the watch, recording why.
    pub fn settle(self: &Arc<Self>, slot: &Slot<LoadedTransform>, stats: &Stats) {
        let mut state = lock(&self.state);
        match state.phase {
            Phase::Trial if state.candidate.batches >= self.policy.batches => {
                match judge(&state.candidate, &state.serving, self.policy.tolerance, true) {
                    Ok(()) => self.promote(&mut state, slot, stats, "its figures stayed within bounds"),
                    Err(reason) => self.roll_back(&mut state, slot, stats, &reason),
                }
            }
            Phase::Watch if state.window.batches >= self.policy.batches => {
                match judge(&state.window, &state.serving, self.policy.tolerance, false) {
                    Err(reason) => self.roll_back(&mut state, slot, stats, &format!("in the watch after its promotion: {reason}")),
                    Ok(()) if state.candidate.batches >= self.policy.watch_batches => self.end_watch(&mut state, slot, stats, "passed"),
                    Ok(()) => state.window = Rates::default(),
                }
            }
            _ => {}
        }
    }

    /// The build a rollback in the watch would restore, if the canary is in
    /// its watch.
    pub fn previous(&self) -> Option<Arc<LoadedTransform>> {
        lock(&self.state).previous.clone()
    }

    /// Applies a settings edit to every build this rollout holds at once,
    /// under the lock a verdict takes, so no verdict sees half of it: the
    /// slot serves `serving`, the candidate is `candidate` (in the watch the
    /// two are the same build), and a rollback in the watch restores
    /// `previous`. The figures go on: both sides ran under the same
    /// settings at each moment.
    pub fn reconfigure(
        &self,
        slot: &Slot<LoadedTransform>,
        serving: Arc<LoadedTransform>,
        candidate: Arc<LoadedTransform>,
        previous: Option<Arc<LoadedTransform>>,
    ) {
        let mut state = lock(&self.state);
        self.candidate.swap(candidate);
        if state.phase == Phase::Watch {
            state.previous = previous;
        }
        slot.swap(serving);
    }

    /// Promotes now (`promote`) or rolls back now, on a request of the API.
    pub fn decide(self: &Arc<Self>, slot: &Slot<LoadedTransform>, promote: bool, stats: &Stats) -> Result<PluginInfo, String> {
        let mut state = lock(&self.state);
        match (state.phase, promote) {
            (Phase::Trial, true) => self.promote(&mut state, slot, stats, "promoted through the API"),
            (Phase::Watch, true) => self.end_watch(&mut state, slot, stats, "ended through the API"),
            (Phase::Trial | Phase::Watch, false) => self.roll_back(&mut state, slot, stats, "aborted through the API"),
            (Phase::Done, _) => return Err("the canary has already been decided".into()),
        }
        Ok(slot.current().info.clone())
    }

    fn figures(&self, state: &State) -> String {
        let info = self.info();
        format!("{} {}: candidate {}; serving version {}", info.name, info.version, state.candidate, state.serving)
    }

    fn promote(self: &Arc<Self>, state: &mut State, slot: &Slot<LoadedTransform>, stats: &Stats, why: &str) {
        let candidate = self.candidate.current();
        let previous = slot.swap(candidate.clone());
        let watch = self.policy.watch_batches;
        let detail = format!("{why}: {}; watching {watch} batches", self.figures(state));
        tracing::info!(transform = %candidate.info.slot, old = %previous.info.version, new = %candidate.info.version, %detail, "canary promoted");
        stats.reload_event(&candidate.info.slot, ReloadOutcome::Promoted, detail);
        if watch == 0 {
            state.phase = Phase::Done;
            slot.clear_canary(self);
        } else {
            state.phase = Phase::Watch;
            state.previous = Some(previous);
            state.candidate = Rates::default();
        }
    }

    fn roll_back(self: &Arc<Self>, state: &mut State, slot: &Slot<LoadedTransform>, stats: &Stats, reason: &str) {
        let name = slot.current().info.slot.clone();
        let figures = self.figures(state);
        if let Some(previous) = state.previous.take() {
            // Unless another version was swapped in meanwhile.
            slot.replace(&self.candidate.current(), previous);
        }
        state.phase = Phase::Done;
        slot.clear_canary(self);
        tracing::warn!(transform = %name, %reason, %figures, "canary rolled back");
        stats.reload_event(&name, ReloadOutcome::RolledBack, format!("{reason}: {figures}"));
    }

    fn end_watch(self: &Arc<Self>, state: &mut State, slot: &Slot<LoadedTransform>, stats: &Stats, how: &str) {
        state.phase = Phase::Done;
        state.previous = None;
        slot.clear_canary(self);
        let name = slot.current().info.slot.clone();
        stats.reload_event(&name, ReloadOutcome::WatchEnded, format!("watch {how}: {}", self.figures(state)));
    }
}

fn add(to: &mut Rates, rates: &Rates) {
    to.batches += rates.batches;
    to.records += rates.records;
    to.kept += rates.kept;
    to.dropped += rates.dropped;
    to.rejected += rates.rejected;
    to.failed_batches += rates.failed_batches;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(batches: u64, records: u64, rejected: u64, dropped: u64, failed_batches: u64) -> Rates {
        Rates { batches, records, kept: records - rejected - dropped, dropped, rejected, failed_batches }
    }

    #[test]
    fn a_candidate_within_tolerance_of_the_serving_version_passes() {
        let serving = rates(60, 6_000, 60, 300, 0);
        assert_eq!(judge(&rates(20, 2_000, 30, 110, 0), &serving, 0.01, true), Ok(()));
    }

    #[test]
    fn a_candidate_rejecting_a_fifth_of_the_events_fails_with_both_figures() {
        let serving = rates(60, 6_000, 6, 0, 0);
        let verdict = judge(&rates(20, 2_000, 400, 0, 0), &serving, 0.01, true).unwrap_err();
        assert_eq!(verdict, "reject rate 20.0% against 0.1% for the serving version, beyond the tolerance of 1.0 points");
    }

    #[test]
    fn failed_batches_and_drops_count_against_a_candidate() {
        let serving = rates(60, 6_000, 0, 0, 0);
        assert!(judge(&rates(20, 2_000, 0, 0, 1), &serving, 0.01, true).unwrap_err().starts_with("error rate 5.0%"));
        assert!(judge(&rates(20, 2_000, 0, 100, 0), &serving, 0.01, true).unwrap_err().starts_with("drop rate 5.0%"));
        // After a promotion drops are not judged.
        assert_eq!(judge(&rates(20, 2_000, 0, 100, 0), &serving, 0.01, false), Ok(()));
    }
}
