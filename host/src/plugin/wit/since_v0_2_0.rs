//! `clickstream:pipeline@0.2.0` (`sdk/rust/wit/v0.2.0/`, frozen): the `transformer`
//! world, the host's side of its batch imports (`geoip.lookup-batch`, a
//! rate-limited `log`), and the conversions between its types and the
//! host's records.

use wasmtime::component::{ComponentType, Func, Lower};
use wasmtime::Store;

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
        path: "../sdk/rust/wit/v0.2.0",
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

/// An event as lowered into the guest, borrowed from the host's record:
/// a batch crosses the boundary without a copy on the host's side (each
/// string is copied once, straight into the guest's memory). Field order
/// and names are the WIT record's.
#[derive(ComponentType, Lower)]
#[component(record)]
struct EventIn<'a> {
    #[component(name = "event-id")]
    event_id: &'a str,
    #[component(name = "user-id")]
    user_id: &'a str,
    #[component(name = "timestamp-ms")]
    timestamp_ms: i64,
    url: &'a str,
    ip: &'a str,
    #[component(name = "user-agent")]
    user_agent: &'a str,
    referrer: Option<&'a str>,
    #[component(name = "session-id")]
    session_id: Option<&'a str>,
    country: Option<&'a str>,
    city: Option<&'a str>,
    browser: Option<&'a str>,
    os: Option<&'a str>,
    device: Option<DeviceIn>,
    attributes: Vec<AttributeIn<'a>>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct AttributeIn<'a> {
    key: &'a str,
    value: ValueIn,
}

/// Owned: the derive takes no lifetime on a variant (attributes are few).
#[derive(ComponentType, Lower)]
#[component(variant)]
enum ValueIn {
    #[component(name = "str")]
    Str(String),
    #[component(name = "int")]
    Int(i64),
    #[component(name = "float")]
    Float(f64),
    #[component(name = "boolean")]
    Boolean(bool),
}

#[derive(ComponentType, Lower, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
enum DeviceIn {
    #[component(name = "desktop")]
    Desktop,
    #[component(name = "mobile")]
    Mobile,
    #[component(name = "tablet")]
    Tablet,
    #[component(name = "bot")]
    Bot,
    #[component(name = "unknown")]
    Unknown,
}

impl<'a> From<&'a TransformEvent> for EventIn<'a> {
    fn from(e: &'a TransformEvent) -> Self {
        let (raw, x) = (&e.raw, &e.enrichment);
        EventIn {
            event_id: &raw.event_id,
            user_id: &raw.user_id,
            timestamp_ms: raw.timestamp_ms,
            url: &raw.url,
            ip: &raw.ip,
            user_agent: &raw.user_agent,
            referrer: raw.referrer.as_deref(),
            session_id: raw.session_id.as_deref(),
            country: x.country.as_deref(),
            city: x.city.as_deref(),
            browser: x.browser.as_deref(),
            os: x.os.as_deref(),
            device: x.device.map(|d| match d {
                Device::Desktop => DeviceIn::Desktop,
                Device::Mobile => DeviceIn::Mobile,
                Device::Tablet => DeviceIn::Tablet,
                Device::Bot => DeviceIn::Bot,
                Device::Unknown => DeviceIn::Unknown,
            }),
            attributes: e.attributes.iter().map(|a| AttributeIn { key: &a.key, value: value_in(&a.value) }).collect(),
        }
    }
}

fn value_in(v: &Value) -> ValueIn {
    match v {
        Value::Str(s) => ValueIn::Str(s.clone()),
        Value::Int(i) => ValueIn::Int(*i),
        Value::Float(f) => ValueIn::Float(*f),
        Value::Bool(b) => ValueIn::Boolean(*b),
    }
}

/// Calls the `transform` export on `batch`, lowering it from the host's
/// records directly; the outcomes come back in the host's records.
pub(in crate::plugin) fn call_transform(
    store: &mut Store<HostState>,
    func: Func,
    batch: &[TransformEvent],
) -> wasmtime::Result<Vec<Outcome>> {
    let events: Vec<EventIn<'_>> = batch.iter().map(EventIn::from).collect();
    let typed = func.typed::<(&[EventIn<'_>],), (Vec<wit::Outcome>,)>(&*store)?;
    let (outcomes,) = typed.call(&mut *store, (&events,))?;
    Ok(outcomes.into_iter().map(Outcome::from).collect())
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
