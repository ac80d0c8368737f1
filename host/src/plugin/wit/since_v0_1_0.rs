//! `clickstream:pipeline@0.1.0` (`sdk/rust/wit/v0.1.0/`, frozen): bindings for both
//! of its worlds, the host's side of its imports, and the conversions
//! between its types and the host's records.

use super::Version;
use crate::plugin::HostState;
use crate::stages::record::{AggregateParams, AggregateRow, Device, Enrichment, Outcome, RawEvent, Refusal, StoredEvent, TransformEvent};

/// The contract version this module serves.
pub const VERSION: Version = Version(0, 1, 0);

/// The oldest plugin build this module loads: any 0.1.x.
pub const MIN_VERSION: Version = Version(0, 1, 0);

/// The `enricher` world (a transform of the chain since 0.2.0).
pub(in crate::plugin) mod enricher {
    wasmtime::component::bindgen!({
        world: "enricher",
        path: "../sdk/rust/wit/v0.1.0",
    });
}

/// The `aggregator` world.
pub(in crate::plugin) mod aggregator {
    wasmtime::component::bindgen!({
        world: "aggregator",
        path: "../sdk/rust/wit/v0.1.0",
    });
}

use aggregator::clickstream::pipeline::types as agg;
use enricher::clickstream::pipeline::types as enr;

impl enricher::clickstream::pipeline::geoip::Host for HostState {
    fn lookup(&mut self, ip: String) -> Option<enricher::clickstream::pipeline::geoip::Location> {
        let found = self.geoip.as_ref()?.lookup(&ip)?;
        Some(enricher::clickstream::pipeline::geoip::Location { country: found.country, city: found.city })
    }
}

impl enr::Host for HostState {}

impl From<&RawEvent> for enr::RawClick {
    fn from(e: &RawEvent) -> Self {
        enr::RawClick {
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            timestamp_ms: e.timestamp_ms,
            url: e.url.clone(),
            ip: e.ip.clone(),
            user_agent: e.user_agent.clone(),
            referrer: e.referrer.clone(),
            session_id: e.session_id.clone(),
        }
    }
}

impl From<enr::RawClick> for RawEvent {
    fn from(c: enr::RawClick) -> Self {
        RawEvent {
            event_id: c.event_id,
            user_id: c.user_id,
            timestamp_ms: c.timestamp_ms,
            url: c.url,
            ip: c.ip,
            user_agent: c.user_agent,
            referrer: c.referrer,
            session_id: c.session_id,
        }
    }
}

impl From<enr::DeviceClass> for Device {
    fn from(d: enr::DeviceClass) -> Self {
        match d {
            enr::DeviceClass::Desktop => Device::Desktop,
            enr::DeviceClass::Mobile => Device::Mobile,
            enr::DeviceClass::Tablet => Device::Tablet,
            enr::DeviceClass::Bot => Device::Bot,
            enr::DeviceClass::Unknown => Device::Unknown,
        }
    }
}

/// A 0.1.0 enricher's answer for `input`, as a transform's outcome: the
/// click as it returned it with everything it derived, and the attributes
/// earlier transforms attached (a 0.1.0 plugin cannot see them). Its
/// `unknown` (the 0.1.0 placeholder) and empty fields become unset, as a
/// 0.2.0 transform leaves them; they are stored as `unknown` all the same.
pub(in crate::plugin) fn outcome(input: &TransformEvent, result: Result<enr::EnrichedClick, enr::EnrichError>) -> Outcome {
    let known = |s: String| Some(s).filter(|s| !s.is_empty() && s != "unknown");
    match result {
        Ok(c) => Outcome::Keep(TransformEvent {
            raw: c.raw.into(),
            enrichment: Enrichment {
                country: known(c.country),
                city: known(c.city),
                browser: known(c.browser),
                os: known(c.os),
                device: Some(c.device.into()),
            },
            attributes: input.attributes.clone(),
        }),
        Err(e) => Outcome::Reject(e.into()),
    }
}

impl From<enr::EnrichError> for Refusal {
    fn from(e: enr::EnrichError) -> Self {
        Refusal { field: e.field, reason: e.reason }
    }
}

impl From<&StoredEvent> for agg::StoredClick {
    fn from(e: &StoredEvent) -> Self {
        agg::StoredClick {
            event_id: e.event_id.clone(),
            user_id: e.user_id.clone(),
            timestamp_ms: e.timestamp_ms,
            url: e.url.clone(),
            country: e.country.clone(),
        }
    }
}

impl From<AggregateParams> for agg::AggregateParams {
    fn from(p: AggregateParams) -> Self {
        agg::AggregateParams { window_ms: p.window_ms, session_timeout_ms: p.session_timeout_ms, keep_query: p.keep_query }
    }
}

impl From<agg::AggregateRow> for AggregateRow {
    fn from(r: agg::AggregateRow) -> Self {
        AggregateRow {
            window_start_ms: r.window_start_ms,
            url: r.url,
            country: r.country,
            clicks: r.clicks,
            unique_users: r.unique_users,
            time_spent_total_ms: r.time_spent_total_ms,
            time_spent_samples: r.time_spent_samples,
        }
    }
}
