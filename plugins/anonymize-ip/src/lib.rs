//! The anonymize-ip transform: zeroes the host part of each client address
//! so raw addresses never reach the database (IPv4 to /24 and IPv6 to /48
//! by default). Put it after the transform that geolocates (`enrich`): the
//! location is derived from the full address, then the address is cut.
//!
//! An IPv4 address mapped into IPv6 (`::ffff:81.2.69.142`) is cut with the
//! IPv4 prefix. Text that is no address (a proxy's list, garbage) is
//! cleared by default, since it may hold an address in another form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use clickstream_plugin::{export_transformer, Event, Outcome, Transformer};
use serde::Deserialize;

/// Plugin name, reported to the host.
pub const NAME: &str = "anonymize-ip";

/// What to do with an `ip` that is not an address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Invalid {
    /// Store it empty.
    #[default]
    Clear,
    /// Store it as sent.
    Keep,
    /// Reject the event (dead-lettered, field `ip`).
    Reject,
}

/// Settings from the transform's `settings` table in pipeline.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Leading bits of an IPv4 address kept (0–32).
    pub ipv4_prefix: u8,
    /// Leading bits of an IPv6 address kept (0–128).
    pub ipv6_prefix: u8,
    /// What to do with text that is not an address: `clear`, `keep` or `reject`.
    pub invalid: Invalid,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { ipv4_prefix: 24, ipv6_prefix: 48, invalid: Invalid::Clear }
    }
}

impl Settings {
    /// Refuses a prefix longer than its address.
    pub fn checked(self) -> Result<Settings, String> {
        for (key, bits, max) in [("ipv4_prefix", self.ipv4_prefix, 32), ("ipv6_prefix", self.ipv6_prefix, 128)] {
            if bits > max {
                return Err(format!("{key} = `{bits}`: expected a number of bits from 0 to {max}"));
            }
        }
        Ok(self)
    }
}

/// The transform: its settings.
pub struct AnonymizeIp(pub Settings);

impl Transformer for AnonymizeIp {
    const NAME: &'static str = NAME;
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        settings.checked().map(AnonymizeIp)
    }

    fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        transform_batch(batch, &self.0)
    }
}

export_transformer!(AnonymizeIp);

/// Transforms a batch: one outcome per input, in order.
pub fn transform_batch(batch: Vec<Event>, settings: &Settings) -> Vec<Outcome> {
    batch.into_iter().map(|event| transform_one(event, settings)).collect()
}

/// Cuts one event's address.
pub fn transform_one(mut event: Event, settings: &Settings) -> Outcome {
    let text = event.ip.trim();
    if text.is_empty() {
        return Outcome::Keep(event);
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => {
            event.ip = anonymize(ip, settings).to_string();
            Outcome::Keep(event)
        }
        Err(_) => match settings.invalid {
            Invalid::Clear => {
                event.ip.clear();
                Outcome::Keep(event)
            }
            Invalid::Keep => Outcome::Keep(event),
            Invalid::Reject => Outcome::reject("ip", "ip is not an IPv4 or IPv6 address"),
        },
    }
}

/// The address with every bit after the prefix zeroed.
pub fn anonymize(ip: IpAddr, settings: &Settings) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(cut_v4(v4, settings.ipv4_prefix)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V6(cut_v4(v4, settings.ipv4_prefix).to_ipv6_mapped()),
            None => {
                let bits = u128::from(v6);
                let mask = if settings.ipv6_prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(settings.ipv6_prefix)) };
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        },
    }
}

fn cut_v4(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    Ipv4Addr::from(u32::from(ip) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickstream_plugin::settings::from_pairs;

    fn parse(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        from_pairs::<Settings>(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()).and_then(Settings::checked)
    }

    fn event(ip: &str) -> Event {
        Event {
            ip: ip.into(),
            country: Some("GB".into()),
            city: Some("London".into()),
            ..Event::new("e1", "u1", 1, "https://shop.example/")
        }
    }

    fn ip_after(ip: &str, settings: &Settings) -> String {
        match transform_one(event(ip), settings) {
            Outcome::Keep(e) => e.ip,
            other => panic!("expected keep, got {other:?}"),
        }
    }

    #[test]
    fn ipv4_keeps_its_first_24_bits_by_default() {
        assert_eq!(ip_after("81.2.69.142", &Settings::default()), "81.2.69.0");
        assert_eq!(ip_after(" 10.1.2.3 ", &Settings::default()), "10.1.2.0");
    }

    #[test]
    fn ipv6_keeps_its_first_48_bits_by_default() {
        assert_eq!(ip_after("2001:4860:4860::8888", &Settings::default()), "2001:4860:4860::");
        assert_eq!(ip_after("2a00:1450:4007:80e:abcd::1", &Settings::default()), "2a00:1450:4007::");
    }

    #[test]
    fn an_ipv4_mapped_address_is_cut_as_ipv4() {
        assert_eq!(ip_after("::ffff:81.2.69.142", &Settings::default()), "::ffff:81.2.69.0");
    }

    #[test]
    fn prefixes_are_configurable_to_the_edges() {
        let s = parse(&[("ipv4_prefix", "16"), ("ipv6_prefix", "0")]).unwrap();
        assert_eq!(ip_after("81.2.69.142", &s), "81.2.0.0");
        assert_eq!(ip_after("2001:db8::1", &s), "::");
        let all = parse(&[("ipv4_prefix", "32"), ("ipv6_prefix", "128")]).unwrap();
        assert_eq!(ip_after("81.2.69.142", &all), "81.2.69.142");
        assert_eq!(ip_after("2001:db8::1", &all), "2001:db8::1");
    }

    #[test]
    fn text_that_is_no_address_is_cleared_kept_or_rejected_as_configured() {
        assert_eq!(ip_after("1.2.3.4, 10.0.0.1", &Settings::default()), "");
        assert_eq!(ip_after("", &Settings::default()), "");
        let keep = Settings { invalid: Invalid::Keep, ..Settings::default() };
        assert_eq!(ip_after("999.1.1.1", &keep), "999.1.1.1");
        let reject = Settings { invalid: Invalid::Reject, ..Settings::default() };
        match transform_one(event("999.1.1.1"), &reject) {
            Outcome::Reject(r) => assert_eq!(r.field.as_deref(), Some("ip")),
            other => panic!("expected reject, got {other:?}"),
        }
    }

    #[test]
    fn bad_settings_are_refused_with_what_is_accepted() {
        assert!(parse(&[("ipv4_prefix", "33")]).unwrap_err().contains("0 to 32"));
        assert!(parse(&[("ipv6_prefix", "129")]).unwrap_err().contains("0 to 128"));
        assert!(parse(&[("ipv6_prefix", "-1")]).unwrap_err().starts_with("ipv6_prefix = `-1`: expected a whole number"));
        assert!(parse(&[("invalid", "drop")]).unwrap_err().contains("`clear`"));
        assert!(parse(&[("prefix", "8")]).unwrap_err().contains("ipv4_prefix"));
        assert_eq!(parse(&[]).unwrap(), Settings::default());
    }

    #[test]
    fn everything_but_the_address_passes_through() {
        match transform_one(event("81.2.69.142"), &Settings::default()) {
            Outcome::Keep(e) => {
                let mut expected = event("81.2.69.0");
                expected.ip = "81.2.69.0".into();
                assert_eq!((e.country, e.city, e.event_id), (expected.country, expected.city, expected.event_id));
            }
            other => panic!("expected keep, got {other:?}"),
        }
    }
}
