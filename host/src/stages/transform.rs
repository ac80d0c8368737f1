//! Decoded clicks → events, through the chain of transforms. The third
//! stage: every batch goes through one snapshot of the chain (a change to
//! the chain applies at a batch boundary), each transform called once per
//! batch with the events the previous ones kept. An outcome keeps an event
//! for the next transform, drops it (counted, not stored) or rejects it
//! (dead-lettered). A transform that fails on a batch is retried event by
//! event, so only the events it fails on are dead-lettered. Plugin calls
//! block, so this runs on a thread of its own (`runtime::pipeline`).
//!
//! The host, not a transform, owns an event's identity: the event id, user
//! id and timestamp are the decoded ones whatever a transform returns, and
//! every string a transform returns is held to the input's limits (an event
//! that breaks them is dead-lettered, kind `contract`).

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::plugin::canary::{Canary, Rates};
use crate::plugin::geoip::GeoIp;
use crate::plugin::transform::{LoadedTransform, TransformRunner};
use crate::plugin::{PluginCounters, PluginError, PluginSpec, Slot};
use crate::stages::record::limits::{self, FieldError};
use crate::stages::record::{Consumed, DeadLetter, Decoded, Dropped, Event, Link, Outcome, Stage, TransformEvent, WriteBatch};
use crate::stats::Stats;

/// The transforms, in order; swapped whole when pipeline.toml changes it.
pub type Chain = Vec<Arc<Slot<LoadedTransform>>>;

/// Loads every transform of `specs`, in order.
pub fn load_chain(specs: Vec<PluginSpec>, geoip: &Arc<GeoIp>) -> Result<Chain, PluginError> {
    specs.into_iter().map(|spec| LoadedTransform::load(spec, Some(geoip.clone())).map(|loaded| Arc::new(Slot::new(loaded)))).collect()
}

/// `enrich 0.2.0 → bot-filter 1.0.0`, for the log and the tools.
pub fn describe_chain(chain: &Chain) -> String {
    if chain.is_empty() {
        return "(no transforms)".into();
    }
    chain.iter().map(|slot| format!("{} {}", slot.current().info.slot, slot.current().info.version)).collect::<Vec<_>>().join(" → ")
}

/// What the host keeps beside an event in flight through the chain.
struct InFlight {
    origin: Consumed,
    /// The identity the host decoded: restored after every transform.
    identity: (String, String, i64),
    /// The transforms it went through so far.
    chain: Links,
}

/// The events in flight and, at the same index, what the host keeps of
/// each: the events are handed to a transform as they are, without a copy.
#[derive(Default)]
struct Live {
    events: Vec<TransformEvent>,
    flights: Vec<InFlight>,
}

/// Runs the chain for one worker, keeping one runner (one instance) per
/// transform across batches.
pub struct ChainRunner {
    chain: Arc<ArcSwap<Chain>>,
    runners: Vec<TransformRunner>,
}

impl ChainRunner {
    /// A runner over the live chain.
    pub fn new(chain: Arc<ArcSwap<Chain>>) -> ChainRunner {
        ChainRunner { chain, runners: Vec::new() }
    }

    /// A runner over a chain nothing swaps (replay, `plugin check`).
    pub fn fixed(chain: Chain) -> ChainRunner {
        ChainRunner::new(Arc::new(ArcSwap::from_pointee(chain)))
    }

    /// Runners for `chain`, in its order, reusing the ones whose slot is
    /// still in it (their instances stay warm).
    fn align(&mut self, chain: &Chain) {
        if self.runners.len() == chain.len() && self.runners.iter().zip(chain).all(|(r, s)| Arc::ptr_eq(r.slot(), s)) {
            return;
        }
        let mut old = std::mem::take(&mut self.runners);
        for slot in chain {
            let runner = match old.iter().position(|r| Arc::ptr_eq(r.slot(), slot)) {
                Some(i) => old.swap_remove(i),
                None => TransformRunner::new(slot.clone()),
            };
            self.runners.push(runner);
        }
    }

    /// Runs a decoded batch through the chain. Every record ends up in
    /// exactly one of the returned batch's `events`, `dead_letters` and
    /// `dropped`.
    pub fn process(&mut self, decoded: Decoded, stats: &Stats) -> WriteBatch {
        let Decoded { mut batch, events, origins } = decoded;
        let chain = self.chain.load_full();
        self.align(&chain);
        let empty: Links = Arc::from(Vec::new());
        let flights = events
            .iter()
            .zip(origins)
            .map(|(raw, origin)| InFlight {
                identity: (raw.event_id.clone(), raw.user_id.clone(), raw.timestamp_ms),
                origin,
                chain: empty.clone(),
            })
            .collect();
        let mut live = Live { events: events.into_iter().map(TransformEvent::from).collect(), flights };
        for runner in &mut self.runners {
            if live.events.is_empty() {
                break;
            }
            live = step(runner, live, &mut batch, stats);
        }
        batch.events.extend(live.events.into_iter().zip(live.flights).map(|(event, f)| Event {
            raw: event.raw,
            enrichment: event.enrichment,
            attributes: event.attributes,
            chain: f.chain,
            provenance: f.origin.provenance,
            key: f.origin.key,
            payload: f.origin.payload,
        }));
        batch
    }
}

/// One transform over the events in flight; returns those it kept. A
/// batch the transform's canary takes goes to the candidate first, and on
/// to the serving version only for what the candidate rejected or failed on.
fn step(runner: &mut TransformRunner, live: Live, batch: &mut WriteBatch, stats: &Stats) -> Live {
    let slot = runner.slot().clone();
    let n = live.events.len();
    let mut out = Out {
        kept: Live { events: Vec::with_capacity(n), flights: Vec::with_capacity(n) },
        extended: Extended::default(),
        counters: slot.counters().clone(),
    };
    out.counters.records_in.inc_by(n as u64);
    let canary = slot.canary();
    let (rest, share) = match canary.as_ref().filter(|c| c.takes_batch()) {
        Some(canary) => (trial(canary, live, &mut out, batch), Share::CanaryRest),
        None => (live, Share::Whole(canary.as_deref())),
    };
    if !rest.events.is_empty() {
        serve(runner, rest, share, &mut out, batch, stats);
    }
    if let Some(canary) = canary {
        canary.settle(&slot, stats);
    }
    out.counters.kept.inc_by(out.kept.events.len() as u64);
    out.kept
}

/// Where a transform's outcomes go: the events kept, the chains they carry,
/// and the slot's counters.
struct Out {
    kept: Live,
    extended: Extended,
    counters: Arc<PluginCounters>,
}

/// Which events the serving version gets.
enum Share<'a> {
    /// A whole batch: the baseline of the canary on trial, if one is.
    Whole(Option<&'a Canary>),
    /// What the canary rejected or failed on.
    CanaryRest,
}

/// The serving version over `live`.
fn serve(runner: &mut TransformRunner, live: Live, share: Share, out: &mut Out, batch: &mut WriteBatch, stats: &Stats) {
    match runner.transform(&live.events) {
        Ok((loaded, outcomes)) => {
            let Live { events, flights } = live;
            if let Share::Whole(baseline) = share {
                if let Some(canary) = baseline {
                    canary.tally_serving(outcomes.len(), Some(&outcomes));
                }
                // The events are not needed past this point: the candidate's
                // thread gets them as they are; the outcomes are stored, so
                // it gets a copy, made only for a batch it takes.
                if let Some(shadow) = runner.slot().shadow().filter(|s| s.takes_batch()) {
                    shadow.observe(events, outcomes.clone());
                }
            }
            for (flight, outcome) in flights.into_iter().zip(outcomes) {
                apply(flight, outcome, &loaded, out, batch);
            }
        }
        Err(e) => {
            if let Share::Whole(Some(canary)) = share {
                canary.tally_serving(live.events.len(), None);
            }
            // One bad event must not sink its batch: retry one by one so
            // only the event that makes the transform fail is dead-lettered.
            stats.transform_batch_failures.inc();
            tracing::warn!(error = %e, records = live.events.len(), "transform failed on a batch; retrying event by event");
            for (event, flight) in live.events.iter().zip(live.flights) {
                match runner.transform(std::slice::from_ref(event)) {
                    Ok((loaded, mut outcomes)) => {
                        let outcome = outcomes.pop().expect("one outcome per input");
                        apply(flight, outcome, &loaded, out, batch);
                    }
                    Err(e) => batch.dead_letters.push(failure(flight.origin, &e, &runner.live())),
                }
            }
        }
    }
}

/// A batch the canary takes. What it keeps (in a form the host can store)
/// or drops is final; the events it rejects, or all of them when it fails,
/// are returned for the serving version, so a bad canary costs no event.
fn trial(canary: &Canary, live: Live, out: &mut Out, batch: &mut WriteBatch) -> Live {
    let mut rates = Rates { batches: 1, records: live.events.len() as u64, ..Rates::default() };
    let (loaded, outcomes) = match canary.run(&live.events) {
        Ok(answered) => answered,
        Err(e) => {
            tracing::warn!(error = %e, records = live.events.len(), "canary failed on a batch; the serving version takes it");
            canary.tally_candidate(Rates { failed_batches: 1, ..rates });
            return live;
        }
    };
    let mut rest = Live::default();
    for ((event, flight), outcome) in live.events.into_iter().zip(live.flights).zip(outcomes) {
        match outcome {
            Outcome::Keep(kept) if kept.check_fields().is_ok() => {
                rates.kept += 1;
                apply(flight, Outcome::Keep(kept), &loaded, out, batch);
            }
            Outcome::Drop(reason) => {
                rates.dropped += 1;
                apply(flight, Outcome::Drop(reason), &loaded, out, batch);
            }
            _ => {
                rates.rejected += 1;
                rest.events.push(event);
                rest.flights.push(flight);
            }
        }
    }
    canary.tally_candidate(rates);
    rest
}

/// The chains events went through once extended by a link: events sharing
/// a chain share the extended one (one allocation per batch, not per event).
#[derive(Default)]
struct Extended(Vec<(Links, Links)>);

/// A chain as events carry it, shared.
type Links = Arc<[Link]>;

impl Extended {
    fn with(&mut self, chain: &Arc<[Link]>, loaded: &LoadedTransform) -> Arc<[Link]> {
        if let Some((_, next)) = self.0.iter().find(|(prev, _)| Arc::ptr_eq(prev, chain)) {
            return next.clone();
        }
        let mut links = chain.to_vec();
        links.push(Link { name: loaded.info.slot.clone(), version: loaded.info.version.clone() });
        let next: Arc<[Link]> = Arc::from(links);
        self.0.push((chain.clone(), next.clone()));
        next
    }
}

/// Where one outcome sends its event.
fn apply(flight: InFlight, outcome: Outcome, loaded: &LoadedTransform, out: &mut Out, batch: &mut WriteBatch) {
    let name = &loaded.info.slot;
    match outcome {
        Outcome::Keep(mut event) => {
            let (event_id, user_id, timestamp_ms) = &flight.identity;
            // Usually unchanged: compared, not copied.
            if event.raw.event_id != *event_id {
                event.raw.event_id.clone_from(event_id);
            }
            if event.raw.user_id != *user_id {
                event.raw.user_id.clone_from(user_id);
            }
            event.raw.timestamp_ms = *timestamp_ms;
            match event.check_fields() {
                Ok(()) => {
                    let chain = out.extended.with(&flight.chain, loaded);
                    out.kept.events.push(event);
                    out.kept.flights.push(InFlight { chain, ..flight });
                }
                Err(broken) => batch.dead_letters.push(dead_letter(flight.origin, loaded, "contract", contract(loaded, &broken))),
            }
        }
        Outcome::Drop(reason) => {
            let reason = crate::postgres::pg_text(&reason, limits::LABEL_MAX_BYTES).into_owned();
            out.counters.dropped(&reason);
            batch.dropped.push(Dropped { provenance: flight.origin.provenance, transform: name.clone(), reason });
        }
        Outcome::Reject(refusal) => {
            out.counters.rejected.inc();
            let reason = match refusal.field {
                Some(field) => format!("{field}: {}", refusal.reason),
                None => refusal.reason,
            };
            batch.dead_letters.push(dead_letter(flight.origin, loaded, "rejected", reason));
        }
    }
}

fn contract(loaded: &LoadedTransform, broken: &FieldError) -> String {
    format!("transform `{}` ({}) returned an event the host cannot store: {broken}", loaded.info.slot, loaded.info.version)
}

fn dead_letter(origin: Consumed, loaded: &LoadedTransform, kind: &str, reason: String) -> DeadLetter {
    DeadLetter {
        provenance: origin.provenance,
        key: origin.key,
        payload: origin.payload,
        stage: Stage::Transform,
        kind: kind.into(),
        reason,
        plugin_version: Some(format!("{}@{}", loaded.info.slot, loaded.info.version)),
    }
}

fn failure(origin: Consumed, error: &PluginError, loaded: &LoadedTransform) -> DeadLetter {
    dead_letter(origin, loaded, error.kind(), error.to_string())
}
