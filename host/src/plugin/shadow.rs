//! Shadowing: a candidate version of a transform runs beside the serving
//! one on a share of the batches, on the same input; its outcomes are
//! compared event by event and never stored. What it would change is counted
//! per field, with a bounded sample, until someone promotes or aborts it.
//!
//! The candidate runs on a thread of its own, fed by a queue of at most
//! [`QUEUE`] batches: the transform thread hands over a selected batch (the
//! events it no longer needs, and a copy of the serving outcomes) and goes
//! on at once. A candidate slower than the stream never holds up a batch;
//! when its queue is full the batch is skipped, and counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::candidate::{own_slot, Sampler};
use super::transform::{LoadedTransform, TransformRunner};
use super::{PluginInfo, Slot};
use crate::stages::record::{attributes_json, Outcome, TransformEvent};

/// Differences kept as examples, per shadow run.
pub const SAMPLE: usize = 20;

/// Longest value kept in a sampled difference, in bytes.
const VALUE_MAX: usize = 256;

/// Batches waiting for the candidate, at most: each holds a batch's events
/// and the serving outcomes, so this bounds what a shadow adds to memory.
pub const QUEUE: usize = 2;

/// One event on which the candidate answered otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[allow(missing_docs)] // named for what they hold
pub struct Difference {
    pub event_id: String,
    /// `outcome` (kept/dropped/rejected differ), or the field that differs.
    pub field: String,
    pub serving: String,
    pub candidate: String,
}

/// What a shadow run has seen so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[allow(missing_docs)] // named for what they hold
pub struct ShadowReport {
    /// Batches the candidate ran on.
    pub batches: u64,
    /// Events compared.
    pub events: u64,
    /// Events on which it differed in anything.
    pub differing_events: u64,
    /// Differences by field (`outcome`, `url`, `browser`, `attributes`, ...).
    pub by_field: BTreeMap<String, u64>,
    /// The first [`SAMPLE`] differences.
    pub sample: Vec<Difference>,
    /// Batches on which the candidate failed (trap, deadline, memory, contract).
    pub errors: u64,
    pub last_error: Option<String>,
    /// Batches selected but not run: the candidate was still busy with
    /// [`QUEUE`] earlier ones.
    pub skipped: u64,
}

/// A candidate in shadow beside a transform's serving version.
pub struct Shadow {
    /// The candidate, in a slot of its own (its own counters).
    pub candidate: Arc<Slot<LoadedTransform>>,
    /// The batches it runs on.
    sampler: Sampler,
    /// What the candidate's thread shares with the transform thread.
    shared: Arc<Shared>,
    /// The candidate's queue; its thread ends when this is dropped.
    queue: Option<SyncSender<Job>>,
}

/// A selected batch: the events, and the serving version's outcomes.
type Job = (Vec<TransformEvent>, Vec<Outcome>);

#[derive(Default)]
struct Shared {
    report: Mutex<ShadowReport>,
    /// Batches queued or running on the candidate's thread.
    queued: AtomicUsize,
    /// Batches skipped: counted apart, so that the transform thread never
    /// waits for the report's lock.
    skipped: AtomicU64,
}

impl Shadow {
    /// A shadow of `candidate` on `fraction` of the batches, with the
    /// candidate's thread started.
    pub fn new(candidate: Arc<LoadedTransform>, fraction: f64) -> Shadow {
        let (candidate, mut runner) = own_slot(candidate);
        let shared = Arc::new(Shared::default());
        let (queue, jobs) = sync_channel::<Job>(QUEUE);
        let name = format!("shadow {}", candidate.current().info.slot);
        let spawned = std::thread::Builder::new().name(name).spawn({
            let shared = shared.clone();
            move || {
                for (events, serving) in jobs {
                    shared.compare(&mut runner, &events, &serving);
                    shared.queued.fetch_sub(1, Ordering::Release);
                }
            }
        });
        let queue = match spawned {
            Ok(_) => Some(queue),
            Err(e) => {
                let mut report = shared.lock();
                report.last_error = Some(format!("cannot start the shadow's thread: {e}; every batch is skipped"));
                None
            }
        };
        Shadow { candidate, sampler: Sampler::new(fraction), shared, queue }
    }

    /// The candidate's identity.
    pub fn info(&self) -> PluginInfo {
        self.candidate.current().info.clone()
    }

    /// What it has seen so far.
    pub fn report(&self) -> ShadowReport {
        ShadowReport { skipped: self.shared.skipped.load(Ordering::Relaxed), ..self.shared.lock().clone() }
    }

    /// The share of batches it runs on, in (0, 1].
    pub fn fraction(&self) -> f64 {
        self.sampler.fraction()
    }

    /// Whether this batch is one for the candidate: selected, and with
    /// room in its queue (else skipped and counted). The caller then hands
    /// it over with [`Shadow::observe`]; asked first so a batch that is not
    /// taken costs no copy.
    pub fn takes_batch(&self) -> bool {
        if !self.sampler.selects() {
            return false;
        }
        if self.queue.is_none() || self.shared.queued.load(Ordering::Acquire) >= QUEUE {
            self.shared.skipped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Hands a batch [`Shadow::takes_batch`] took to the candidate's thread,
    /// which runs the candidate on `events` and compares its outcomes with
    /// the serving version's. Never waits.
    pub fn observe(&self, events: Vec<TransformEvent>, serving: Vec<Outcome>) {
        let Some(queue) = &self.queue else { return };
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if queue.try_send((events, serving)).is_err() {
            // Only this thread sends, and it asked for room first; a full
            // or closed queue still only skips.
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            self.shared.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, ShadowReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the candidate on one batch and counts where it differs. The
    /// batch is compared before the report's lock is taken, so a reader of
    /// the report (the API) waits for a merge, not a comparison.
    fn compare(&self, runner: &mut TransformRunner, events: &[TransformEvent], serving: &[Outcome]) {
        let (candidate, mut batch) = match runner.transform(events) {
            Ok((_, candidate)) => (candidate, ShadowReport { events: events.len() as u64, ..ShadowReport::default() }),
            Err(e) => {
                let mut report = self.lock();
                report.batches += 1;
                report.errors += 1;
                report.last_error = Some(e.to_string());
                return;
            }
        };
        let room = SAMPLE.saturating_sub(self.lock().sample.len());
        for ((event, s), c) in events.iter().zip(serving).zip(&candidate) {
            let differences = compare(s, c);
            if differences.is_empty() {
                continue;
            }
            batch.differing_events += 1;
            for (field, serving, candidate) in differences {
                *batch.by_field.entry(field.to_string()).or_default() += 1;
                if batch.sample.len() < room {
                    batch.sample.push(Difference {
                        event_id: event.raw.event_id.clone(),
                        field: field.to_string(),
                        serving: clip(serving),
                        candidate: clip(candidate),
                    });
                }
            }
        }
        let mut report = self.lock();
        report.batches += 1;
        report.events += batch.events;
        report.differing_events += batch.differing_events;
        for (field, n) in batch.by_field {
            *report.by_field.entry(field).or_default() += n;
        }
        let room = SAMPLE.saturating_sub(report.sample.len());
        report.sample.extend(batch.sample.into_iter().take(room));
    }
}

fn clip(mut value: String) -> String {
    if value.len() > VALUE_MAX {
        let mut end = VALUE_MAX;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
        value.push('…');
    }
    value
}

fn kind(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Keep(_) => "kept".into(),
        Outcome::Drop(reason) => format!("dropped: {reason}"),
        Outcome::Reject(r) => format!("rejected: {}{}", r.field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default(), r.reason),
    }
}

/// Where two outcomes for one event differ: (field, serving, candidate).
/// Compared by reference: only a difference is copied.
pub fn compare(serving: &Outcome, candidate: &Outcome) -> Vec<(&'static str, String, String)> {
    let (Outcome::Keep(s), Outcome::Keep(c)) = (serving, candidate) else {
        let (s, c) = (kind(serving), kind(candidate));
        return if s == c { Vec::new() } else { vec![("outcome", s, c)] };
    };
    fn text(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or_default()
    }
    let device = |e: &TransformEvent| e.enrichment.device.map(|d| d.as_str()).unwrap_or_default();
    let fields: [(&'static str, &str, &str); 9] = [
        ("url", &s.raw.url, &c.raw.url),
        ("ip", &s.raw.ip, &c.raw.ip),
        ("user_agent", &s.raw.user_agent, &c.raw.user_agent),
        ("referrer", text(&s.raw.referrer), text(&c.raw.referrer)),
        ("country", text(&s.enrichment.country), text(&c.enrichment.country)),
        ("city", text(&s.enrichment.city), text(&c.enrichment.city)),
        ("browser", text(&s.enrichment.browser), text(&c.enrichment.browser)),
        ("os", text(&s.enrichment.os), text(&c.enrichment.os)),
        ("device", device(s), device(c)),
    ];
    let mut differences: Vec<_> =
        fields.into_iter().filter(|(_, a, b)| a != b).map(|(field, a, b)| (field, a.to_string(), b.to_string())).collect();
    if s.attributes != c.attributes {
        let (a, b) = (attributes_json(&s.attributes), attributes_json(&c.attributes));
        if a != b {
            differences.push(("attributes", a.into_owned(), b.into_owned()));
        }
    }
    differences
}
