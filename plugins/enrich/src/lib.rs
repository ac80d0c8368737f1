//! The enrich plugin: user agent → browser, OS and device class; IP → country
//! and city through the host's `geoip` import.
//!
//! The logic is plain Rust ([`enrich_batch`]) so it is unit-tested natively
//! and benchmarked natively by the host; the component export at the bottom
//! is a thin shell around it.

use std::collections::HashMap;
use std::net::IpAddr;

wit_bindgen::generate!({
    world: "enricher",
    path: "../../wit/v0.1.0",
    additional_derives: [PartialEq],
});

pub use clickstream::pipeline::geoip::Location;
pub use clickstream::pipeline::types::DeviceClass;

/// Plugin name, reported to the host.
pub const NAME: &str = "enrich";

/// Plugin version, stored with every event it enriches. A build may override
/// it (`CLICKSTREAM_PLUGIN_VERSION=...`), which the hot-swap tests use to tell
/// two builds apart.
pub const VERSION: &str = match option_env!("CLICKSTREAM_PLUGIN_VERSION") {
    Some(v) => v,
    None if cfg!(feature = "canary") => concat!(env!("CARGO_PKG_VERSION"), "-canary"),
    None => env!("CARGO_PKG_VERSION"),
};

/// Value of a field the plugin could not determine.
pub const UNKNOWN: &str = "unknown";

/// Settings from `[plugins.enrich.settings]` in pipeline.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// Lower-cased substrings that mark a user agent as a bot, on top of the
    /// crawlers the parser knows (e.g. an in-house uptime monitor).
    pub extra_bot_markers: Vec<String>,
}

impl Settings {
    /// Parses the settings table; unknown keys are refused so a typo is not
    /// silently ignored.
    pub fn parse(pairs: &[(String, String)]) -> Result<Settings, String> {
        let mut settings = Settings::default();
        for (key, value) in pairs {
            match key.as_str() {
                "extra_bot_markers" => {
                    settings.extra_bot_markers =
                        value.split(',').map(|m| m.trim().to_ascii_lowercase()).filter(|m| !m.is_empty()).collect();
                }
                other => {
                    return Err(format!(
                        "unknown setting `{other}`; the enrich plugin accepts: extra_bot_markers \
                         (comma-separated user-agent substrings to classify as bots)"
                    ))
                }
            }
        }
        Ok(settings)
    }
}

/// Enriches a batch: one result per input, in input order.
///
/// A clickstream repeats a few user agents many times, and parsing one is
/// most of the work (substring searches and regexes; in WASM, without the
/// SIMD substring search native code gets, more so): each distinct user
/// agent is parsed once per batch (docs/BENCHMARKS.md, arm 3).
pub fn enrich_batch(
    batch: Vec<RawClick>,
    settings: &Settings,
    geoip: impl Fn(&str) -> Option<Location>,
) -> Vec<Result<EnrichedClick, EnrichError>> {
    let mut agents: HashMap<String, Agent> = HashMap::new();
    batch
        .into_iter()
        .map(|click| {
            enrich_with(click, &geoip, |user_agent| match agents.get(user_agent) {
                Some(agent) => agent.clone(),
                None => {
                    let agent = parse_user_agent(user_agent, settings);
                    agents.insert(user_agent.to_string(), agent.clone());
                    agent
                }
            })
        })
        .collect()
}

/// Enriches one click. Unparseable user agents and IPs are not errors (their
/// fields become `unknown`); a click that cannot be aggregated is.
pub fn enrich_one(raw: RawClick, settings: &Settings, geoip: &impl Fn(&str) -> Option<Location>) -> Result<EnrichedClick, EnrichError> {
    enrich_with(raw, geoip, |user_agent| parse_user_agent(user_agent, settings))
}

fn enrich_with(
    raw: RawClick,
    geoip: &impl Fn(&str) -> Option<Location>,
    agent_of: impl FnOnce(&str) -> Agent,
) -> Result<EnrichedClick, EnrichError> {
    if raw.user_id.trim().is_empty() {
        return Err(refuse("user_id", "user_id is empty"));
    }
    if raw.timestamp_ms <= 0 {
        return Err(refuse("timestamp", &format!("timestamp must be after 1970-01-01, got {} ms", raw.timestamp_ms)));
    }
    if raw.url.trim().is_empty() {
        return Err(refuse("url", "url is empty"));
    }

    let agent = agent_of(&raw.user_agent);
    let location = raw.ip.trim().parse::<IpAddr>().ok().and_then(|ip| geoip(&ip.to_string()));
    let (country, city) = match location {
        Some(Location { country, city }) => (
            country.filter(|c| !c.is_empty()).unwrap_or_else(|| UNKNOWN.into()),
            city.filter(|c| !c.is_empty()).unwrap_or_else(|| UNKNOWN.into()),
        ),
        None => (UNKNOWN.into(), UNKNOWN.into()),
    };

    let browser = if cfg!(feature = "canary") { format!("{}+canary", agent.browser) } else { agent.browser };
    Ok(EnrichedClick { raw, country, city, browser, os: agent.os, device: agent.device, plugin_version: VERSION.into() })
}

fn refuse(field: &str, reason: &str) -> EnrichError {
    EnrichError { field: Some(field.into()), reason: reason.into() }
}

/// What a user agent says about the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// Browser family, or `unknown`.
    pub browser: String,
    /// Operating system, or `unknown`.
    pub os: String,
    /// Device class.
    pub device: DeviceClass,
}

/// Parses a user agent with woothee, then refines its categories: woothee
/// calls tablets smartphones, and knows nothing of the user's own bot markers.
pub fn parse_user_agent(user_agent: &str, settings: &Settings) -> Agent {
    let lower = user_agent.to_ascii_lowercase();
    let parsed = woothee::parser::Parser::new().parse(user_agent);
    let known = |s: &str| {
        if s.is_empty() || s == "UNKNOWN" {
            UNKNOWN.to_string()
        } else {
            s.to_string()
        }
    };
    let (browser, os, category) = match &parsed {
        Some(r) => (known(r.name), known(r.os), r.category),
        None => (UNKNOWN.to_string(), UNKNOWN.to_string(), ""),
    };
    let is_marked_bot = settings.extra_bot_markers.iter().any(|marker| lower.contains(marker.as_str()));
    let device = if is_marked_bot || category == "crawler" {
        DeviceClass::Bot
    } else if os == "iPad"
        || (lower.contains("android") && !lower.contains("mobile") && category == "smartphone")
        || lower.contains("tablet")
    {
        DeviceClass::Tablet
    } else {
        match category {
            "pc" => DeviceClass::Desktop,
            "smartphone" | "mobilephone" => DeviceClass::Mobile,
            _ => DeviceClass::Unknown,
        }
    };
    Agent { browser, os, device }
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
            let parsed = Settings::parse(&settings)?;
            *SETTINGS.lock().unwrap_or_else(|e| e.into_inner()) = Some(parsed);
            Ok(())
        }

        fn enrich(batch: Vec<RawClick>) -> Vec<Result<EnrichedClick, EnrichError>> {
            let settings = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
            let default = Settings::default();
            enrich_batch(batch, settings.as_ref().unwrap_or(&default), |ip| clickstream::pipeline::geoip::lookup(ip))
        }
    }

    export!(Plugin with_types_in crate);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME_WINDOWS: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const SAFARI_IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    const SAFARI_IPAD: &str =
        "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const ANDROID_TABLET: &str =
        "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36";
    const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";

    fn click(user: &str, ts: i64, ip: &str, ua: &str) -> RawClick {
        RawClick {
            event_id: format!("e-{user}-{ts}"),
            user_id: user.into(),
            timestamp_ms: ts,
            url: "https://shop.example/cart".into(),
            ip: ip.into(),
            user_agent: ua.into(),
            referrer: None,
            session_id: None,
        }
    }

    fn geo(ip: &str) -> Option<Location> {
        (ip == "81.2.69.142").then(|| Location { country: Some("GB".into()), city: Some("London".into()) })
    }

    fn agent(ua: &str) -> Agent {
        parse_user_agent(ua, &Settings::default())
    }

    #[test]
    fn chrome_on_windows_is_a_desktop() {
        let a = agent(CHROME_WINDOWS);
        assert_eq!(a.browser, "Chrome");
        assert!(a.os.starts_with("Windows"), "{a:?}");
        assert_eq!(a.device, DeviceClass::Desktop);
    }

    #[test]
    fn safari_on_iphone_is_a_mobile() {
        let a = agent(SAFARI_IPHONE);
        assert_eq!(a.browser, "Safari");
        assert_eq!(a.os, "iPhone");
        assert_eq!(a.device, DeviceClass::Mobile);
    }

    #[test]
    fn ipad_and_android_without_mobile_are_tablets() {
        assert_eq!(agent(SAFARI_IPAD).device, DeviceClass::Tablet);
        assert_eq!(agent(ANDROID_TABLET).device, DeviceClass::Tablet);
    }

    #[test]
    fn googlebot_is_a_bot() {
        let a = agent(GOOGLEBOT);
        assert_eq!(a.browser, "Googlebot");
        assert_eq!(a.device, DeviceClass::Bot);
    }

    #[test]
    fn curl_and_empty_user_agents_are_not_errors() {
        let curl = agent("curl/8.4.0");
        assert_ne!(curl.device, DeviceClass::Desktop, "{curl:?}");
        let empty = agent("");
        assert_eq!(empty.browser, UNKNOWN);
        assert_eq!(empty.os, UNKNOWN);
        assert_eq!(empty.device, DeviceClass::Unknown);
    }

    #[test]
    fn extra_bot_markers_classify_in_house_monitors_as_bots() {
        let settings = Settings::parse(&[("extra_bot_markers".into(), "UptimeCheck, ".into())]).unwrap();
        let a = parse_user_agent("UptimeCheck/1.0 (+ops)", &settings);
        assert_eq!(a.device, DeviceClass::Bot);
    }

    #[test]
    fn unknown_settings_are_refused_by_name() {
        let err = Settings::parse(&[("bot_markers".into(), "x".into())]).unwrap_err();
        assert!(err.contains("bot_markers"), "{err}");
    }

    #[test]
    fn ip_resolves_through_geoip_and_invalid_ips_become_unknown() {
        let s = Settings::default();
        let known = enrich_one(click("u1", 1, "81.2.69.142", CHROME_WINDOWS), &s, &geo).unwrap();
        assert_eq!((known.country.as_str(), known.city.as_str()), ("GB", "London"));
        let bad = enrich_one(click("u1", 1, "999.1.1.1", CHROME_WINDOWS), &s, &geo).unwrap();
        assert_eq!((bad.country.as_str(), bad.city.as_str()), (UNKNOWN, UNKNOWN));
        let unlisted = enrich_one(click("u1", 1, "10.0.0.1", CHROME_WINDOWS), &s, &geo).unwrap();
        assert_eq!(unlisted.country, UNKNOWN);
    }

    #[test]
    fn structural_problems_are_errors_with_the_field() {
        let s = Settings::default();
        let err = enrich_one(click(" ", 1, "1.1.1.1", ""), &s, &geo).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("user_id"));
        let err = enrich_one(click("u", 0, "1.1.1.1", ""), &s, &geo).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("timestamp"));
        assert!(err.reason.contains("0 ms"), "{}", err.reason);
    }

    #[test]
    fn batch_keeps_one_result_per_input_in_order() {
        let batch = vec![
            click("a", 1, "81.2.69.142", CHROME_WINDOWS),
            click("", 2, "81.2.69.142", CHROME_WINDOWS),
            click("c", 3, "nonsense", GOOGLEBOT),
        ];
        let out = enrich_batch(batch, &Settings::default(), geo);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].as_ref().unwrap().raw.user_id, "a");
        assert!(out[1].is_err());
        assert_eq!(out[2].as_ref().unwrap().raw.user_id, "c");
        assert_eq!(out[2].as_ref().unwrap().plugin_version, VERSION);
    }
}
