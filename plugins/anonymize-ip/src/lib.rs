//! The anonymize-ip transform: zeroes the host part of each client address
//! so raw addresses never reach the database (IPv4 to /24 and IPv6 to /48
//! by default). Put it after the transform that geolocates (`enrich`): the
//! location is derived from the full address, then the address is cut.
//!
//! An IPv4 address mapped into IPv6 (`::ffff:81.2.69.142`) is cut with the
//! IPv4 prefix. Text that is no address (a proxy's list, garbage) is
//! cleared by default, since it may hold an address in another form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

wit_bindgen::generate!({
    world: "transformer",
    path: "../../wit/v0.2.0",
});

pub use clickstream::pipeline::types::Rejection;

/// Plugin name, reported to the host.
pub const NAME: &str = "anonymize-ip";

/// Plugin version, recorded in the chain of every event it keeps.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What to do with an `ip` that is not an address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Leading bits of an IPv4 address kept (0–32).
    pub ipv4_prefix: u8,
    /// Leading bits of an IPv6 address kept (0–128).
    pub ipv6_prefix: u8,
    /// What to do with text that is not an address.
    pub invalid: Invalid,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { ipv4_prefix: 24, ipv6_prefix: 48, invalid: Invalid::Clear }
    }
}

impl Settings {
    /// Parses the settings table; unknown keys and out-of-range values are
    /// refused with what is accepted.
    pub fn parse(pairs: &[(String, String)]) -> Result<Settings, String> {
        let mut settings = Settings::default();
        let bits = |key: &str, value: &str, max: u8| match value.trim().parse::<u8>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!("{key} = `{value}`: expected a number of bits from 0 to {max}")),
        };
        for (key, value) in pairs {
            match key.as_str() {
                "ipv4_prefix" => settings.ipv4_prefix = bits(key, value, 32)?,
                "ipv6_prefix" => settings.ipv6_prefix = bits(key, value, 128)?,
                "invalid" => {
                    settings.invalid = match value.trim() {
                        "clear" => Invalid::Clear,
                        "keep" => Invalid::Keep,
                        "reject" => Invalid::Reject,
                        other => return Err(format!("invalid = `{other}`: expected `clear`, `keep` or `reject`")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown setting `{other}`; the anonymize-ip plugin accepts: ipv4_prefix (default 24), \
                         ipv6_prefix (default 48), invalid (clear, keep or reject; default clear)"
                    ))
                }
            }
        }
        Ok(settings)
    }
}

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
            Invalid::Reject => Outcome::Reject(Rejection { field: Some("ip".into()), reason: "ip is not an IPv4 or IPv6 address".into() }),
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

#[cfg(target_arch = "wasm32")]
mod component {
    use super::*;
    use std::sync::Mutex;

    static SETTINGS: Mutex<Option<Settings>> = Mutex::new(None);

    struct Plugin;

    impl Guest for Plugin {
        fn name() -> String {
            NAME.into()
        }

        fn version() -> String {
            VERSION.into()
        }

        fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
            *SETTINGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(Settings::parse(&settings)?);
            Ok(())
        }

        fn transform(batch: Vec<Event>) -> Vec<Outcome> {
            let settings = SETTINGS.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or_default();
            transform_batch(batch, &settings)
        }
    }

    export!(Plugin with_types_in crate);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ip: &str) -> Event {
        Event {
            event_id: "e1".into(),
            user_id: "u1".into(),
            timestamp_ms: 1,
            url: "https://shop.example/".into(),
            ip: ip.into(),
            user_agent: String::new(),
            referrer: None,
            session_id: None,
            country: Some("GB".into()),
            city: Some("London".into()),
            browser: None,
            os: None,
            device: None,
            attributes: Vec::new(),
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
        let s = Settings::parse(&[("ipv4_prefix".into(), "16".into()), ("ipv6_prefix".into(), "0".into())]).unwrap();
        assert_eq!(ip_after("81.2.69.142", &s), "81.2.0.0");
        assert_eq!(ip_after("2001:db8::1", &s), "::");
        let all = Settings::parse(&[("ipv4_prefix".into(), "32".into()), ("ipv6_prefix".into(), "128".into())]).unwrap();
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
        assert!(Settings::parse(&[("ipv4_prefix".into(), "33".into())]).unwrap_err().contains("0 to 32"));
        assert!(Settings::parse(&[("ipv6_prefix".into(), "-1".into())]).unwrap_err().contains("0 to 128"));
        assert!(Settings::parse(&[("invalid".into(), "drop".into())]).unwrap_err().contains("`clear`"));
        assert!(Settings::parse(&[("prefix".into(), "8".into())]).unwrap_err().contains("ipv4_prefix"));
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
