//! `clickstream:pipeline@0.2.0` (`wit/v0.2.0/`, frozen): the `transformer`
//! world, the host's side of its batch imports (`geoip.lookup-batch`, a
//! rate-limited `log`), and the conversions between its types and the
//! host's records.

use super::Version;
use crate::plugin::HostState;
use crate::stages::record::{Attribute, Device, Enrichment, Outcome, RawEvent, Refusal, TransformEvent, Value};

/// The contract version this module serves.
pub const VERSION: Version = Version(0, 2, 0);

/// The oldest plugin build this module loads: any 0.2.x.
pub const MIN_VERSION: Version = Version(0, 2, 0);

/// The `transformer` world.
pub(in crate::plugin) mod transformer {
    wasmtime::component::bindgen!({
        world: "transformer",
        path: "../wit/v0.2.0",
    });
}

use transformer::clickstream::pipeline::geoip::{Host as GeoIpHost, Location};
use transformer::clickstream::pipeline::log::{Host as LogHost, Level};
use transformer::clickstream::pipeline::types as wit;

impl GeoIpHost for HostState {
    fn lookup_batch(&mut self, ips: Vec<String>) -> Vec<Option<Location>> {
        let Some(geoip) = self.geoip.as_ref() else {
            return vec![None; ips.len()];
        };
        ips.iter().map(|ip| geoip.lookup(ip).map(|found| Location { country: found.country, city: found.city })).collect()
    }
}

impl LogHost for HostState {
    fn log(&mut self, level: Level, message: String) {
        let level = match level {
            Level::Debug => tracing::Level::DEBUG,
            Level::Info => tracing::Level::INFO,
            Level::Warn => tracing::Level::WARN,
            Level::Error => tracing::Level::ERROR,
        };
        self.log.write(level, &message);
    }
}

impl wit::Host for HostState {}

fn device_in(d: Device) -> wit::DeviceClass {
    match d {
        Device::Desktop => wit::DeviceClass::Desktop,
        Device::Mobile => wit::DeviceClass::Mobile,
        Device::Tablet => wit::DeviceClass::Tablet,
        Device::Bot => wit::DeviceClass::Bot,
        Device::Unknown => wit::DeviceClass::Unknown,
    }
}

fn device_out(d: wit::DeviceClass) -> Device {
    match d {
        wit::DeviceClass::Desktop => Device::Desktop,
        wit::DeviceClass::Mobile => Device::Mobile,
        wit::DeviceClass::Tablet => Device::Tablet,
        wit::DeviceClass::Bot => Device::Bot,
        wit::DeviceClass::Unknown => Device::Unknown,
    }
}

impl From<&TransformEvent> for wit::Event {
    fn from(e: &TransformEvent) -> Self {
        let (raw, x) = (&e.raw, &e.enrichment);
        wit::Event {
            event_id: raw.event_id.clone(),
            user_id: raw.user_id.clone(),
            timestamp_ms: raw.timestamp_ms,
            url: raw.url.clone(),
            ip: raw.ip.clone(),
            user_agent: raw.user_agent.clone(),
            referrer: raw.referrer.clone(),
            session_id: raw.session_id.clone(),
            country: x.country.clone(),
            city: x.city.clone(),
            browser: x.browser.clone(),
            os: x.os.clone(),
            device: x.device.map(device_in),
            attributes: e.attributes.iter().map(|a| wit::Attribute { key: a.key.clone(), value: value_in(&a.value) }).collect(),
        }
    }
}

fn value_in(v: &Value) -> wit::Value {
    match v {
        Value::Str(s) => wit::Value::Str(s.clone()),
        Value::Int(i) => wit::Value::Int(*i),
        Value::Float(f) => wit::Value::Float(*f),
        Value::Bool(b) => wit::Value::Boolean(*b),
    }
}

fn value_out(v: wit::Value) -> Value {
    match v {
        wit::Value::Str(s) => Value::Str(s),
        wit::Value::Int(i) => Value::Int(i),
        wit::Value::Float(f) => Value::Float(f),
        wit::Value::Boolean(b) => Value::Bool(b),
    }
}

impl From<wit::Event> for TransformEvent {
    fn from(e: wit::Event) -> Self {
        TransformEvent {
            raw: RawEvent {
                event_id: e.event_id,
                user_id: e.user_id,
                timestamp_ms: e.timestamp_ms,
                url: e.url,
                ip: e.ip,
                user_agent: e.user_agent,
                referrer: e.referrer,
                session_id: e.session_id,
            },
            enrichment: Enrichment { country: e.country, city: e.city, browser: e.browser, os: e.os, device: e.device.map(device_out) },
            attributes: e.attributes.into_iter().map(|a| Attribute { key: a.key, value: value_out(a.value) }).collect(),
        }
    }
}

impl From<wit::Outcome> for Outcome {
    fn from(o: wit::Outcome) -> Self {
        match o {
            wit::Outcome::Keep(e) => Outcome::Keep(e.into()),
            wit::Outcome::Drop(reason) => Outcome::Drop(reason),
            wit::Outcome::Reject(r) => Outcome::Reject(Refusal { field: r.field, reason: r.reason }),
        }
    }
}
