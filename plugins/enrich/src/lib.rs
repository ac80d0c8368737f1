//! The enrich plugin, a transform of contract 0.2.0: user agent → browser,
//! OS and device class; IP → country and city through the host's
//! `geoip.lookup-batch` import, called once per batch.
//!
//! The logic is plain Rust ([`Enricher::transform_batch`]) so it is
//! unit-tested natively and benchmarked natively by the host; the component export at
//! the bottom is a thin shell around it.

use std::net::IpAddr;

use foldhash::{HashMap, HashMapExt};

use clickstream_plugin::{export_transformer, Transformer};
use serde::{Deserialize, Deserializer};

pub use clickstream_plugin::{Attribute, DeviceClass, Event, Location, Outcome, Rejection, Value};

/// Plugin name, reported to the host.
pub const NAME: &str = "enrich";

/// Plugin version, recorded in the chain of every event it keeps. A build
/// may override it (`CLICKSTREAM_PLUGIN_VERSION=...`), which the hot-swap
/// tests use to tell two builds apart.
pub const VERSION: &str = match option_env!("CLICKSTREAM_PLUGIN_VERSION") {
    Some(v) => v,
    None if cfg!(feature = "canary-reject") => concat!(env!("CARGO_PKG_VERSION"), "-canary-reject"),
    None if cfg!(feature = "canary") => concat!(env!("CARGO_PKG_VERSION"), "-canary"),
    None => env!("CARGO_PKG_VERSION"),
};

/// Value of a field the plugin could not determine.
pub const UNKNOWN: &str = "unknown";

/// Settings from the transform's `settings` table in pipeline.toml.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Substrings that mark a user agent as a bot, on top of the crawlers
    /// the parser knows (e.g. an in-house uptime monitor): comma-separated,
    /// matched without regard to case.
    #[serde(deserialize_with = "lower_case")]
    pub extra_bot_markers: Vec<String>,
}

impl Settings {
    /// Reads the settings table; an unknown key is refused by name, so a
    /// typo is not silently ignored.
    pub fn parse(pairs: &[(String, String)]) -> Result<Settings, String> {
        clickstream_plugin::settings::from_pairs(pairs.to_vec())
    }
}

fn lower_case<'de, D: Deserializer<'de>>(markers: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<String>::deserialize(markers)?.into_iter().map(|m| m.to_ascii_lowercase()).collect())
}

/// User agents whose parse is kept across batches, at most: a clickstream
/// repeats a few agents endlessly, and parsing one is the costliest step
/// (substring searches and regexes; in WASM, without the SIMD substring
/// search native code gets, more so). Past the bound the cache starts over,
/// so agents a client makes up cannot grow the plugin's memory.
pub const AGENT_CACHE_ENTRIES: usize = 4096;

/// Bytes of user agents kept in the cache, at most.
pub const AGENT_CACHE_BYTES: usize = 4 << 20;

/// The enrich transform: its settings and what it has learnt of user agents.
#[derive(Debug, Default)]
pub struct Enricher {
    settings: Settings,
    agents: HashMap<String, Agent>,
    agent_bytes: usize,
}

impl Enricher {
    /// An enricher with `settings` and nothing cached.
    pub fn new(settings: Settings) -> Enricher {
        Enricher { settings, agents: HashMap::new(), agent_bytes: 0 }
    }

    /// Transforms a batch: one outcome per input, in input order. Events
    /// that cannot be aggregated are rejected; the rest are kept with their
    /// location and client filled in. Unparseable user agents and IPs are
    /// not errors: what cannot be determined stays unset (stored as
    /// `unknown`). The distinct addresses of the batch are looked up in one
    /// `lookup` call (one boundary crossing).
    pub fn transform_batch(&mut self, batch: Vec<Event>, lookup: impl FnOnce(&[String]) -> Vec<Option<Location>>) -> Vec<Outcome> {
        let checked: Vec<Result<Event, Rejection>> = batch.into_iter().map(check).collect();

        // Distinct valid addresses, in their canonical text form.
        let mut addresses: Vec<String> = Vec::new();
        let mut index: HashMap<IpAddr, usize> = HashMap::new();
        let slots: Vec<Option<usize>> = checked
            .iter()
            .map(|event| {
                let ip = event.as_ref().ok()?.ip.trim().parse::<IpAddr>().ok()?;
                Some(*index.entry(ip).or_insert_with(|| {
                    addresses.push(ip.to_string());
                    addresses.len() - 1
                }))
            })
            .collect();
        let locations = if addresses.is_empty() { Vec::new() } else { lookup(&addresses) };

        checked
            .into_iter()
            .zip(slots)
            .map(|(event, slot)| match event {
                Err(rejection) => Outcome::Reject(rejection),
                Ok(mut event) => {
                    let agent = self.agent(&event.user_agent);
                    let location = slot.and_then(|i| locations.get(i).cloned().flatten());
                    apply(&mut event, agent, location);
                    Outcome::Keep(event)
                }
            })
            .collect()
    }

    /// The parse of `user_agent`, from the cache when it is there.
    fn agent(&mut self, user_agent: &str) -> Agent {
        if let Some(agent) = self.agents.get(user_agent) {
            return agent.clone();
        }
        let agent = parse_user_agent(user_agent, &self.settings);
        if self.agents.len() >= AGENT_CACHE_ENTRIES || self.agent_bytes + user_agent.len() > AGENT_CACHE_BYTES {
            self.agents.clear();
            self.agent_bytes = 0;
        }
        self.agent_bytes += user_agent.len();
        self.agents.insert(user_agent.to_string(), agent.clone());
        agent
    }
}

/// Transforms one event, looking its address up alone.
pub fn transform_one(event: Event, settings: &Settings, lookup: impl Fn(&str) -> Option<Location>) -> Outcome {
    match check(event) {
        Err(rejection) => Outcome::Reject(rejection),
        Ok(mut event) => {
            let location = event.ip.trim().parse::<IpAddr>().ok().and_then(|ip| lookup(&ip.to_string()));
            let agent = parse_user_agent(&event.user_agent, settings);
            apply(&mut event, agent, location);
            Outcome::Keep(event)
        }
    }
}

/// Refuses a click that cannot be aggregated.
fn check(event: Event) -> Result<Event, Rejection> {
    if event.user_id.trim().is_empty() {
        return Err(refuse("user_id", "user_id is empty".into()));
    }
    if event.timestamp_ms <= 0 {
        return Err(refuse("timestamp", format!("timestamp must be after 1970-01-01, got {} ms", event.timestamp_ms)));
    }
    if event.url.trim().is_empty() {
        return Err(refuse("url", "url is empty".into()));
    }
    if cfg!(feature = "canary-reject") && fnv1a(&event.event_id).is_multiple_of(5) {
        return Err(refuse("event_id", "refused by the canary-reject test build (one event in five)".into()));
    }
    Ok(event)
}

fn apply(event: &mut Event, agent: Agent, location: Option<Location>) {
    let known = |s: Option<String>| s.filter(|s| !s.is_empty());
    if let Some(Location { country, city }) = location {
        event.country = known(country);
        event.city = known(city);
    }
    let browser = if cfg!(feature = "canary") { format!("{}+canary", agent.browser) } else { agent.browser };
    event.browser = Some(browser).filter(|b| b != UNKNOWN);
    event.os = Some(agent.os).filter(|o| o != UNKNOWN);
    event.device = Some(agent.device);
}

/// A hash stable across runs and builds, so the test build refuses the same
/// events every time.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

fn refuse(field: &str, reason: String) -> Rejection {
    Rejection { field: Some(field.into()), reason }
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

impl Transformer for Enricher {
    const NAME: &'static str = NAME;
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        Ok(Enricher::new(settings))
    }

    fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        self.transform_batch(batch, clickstream_plugin::geoip::lookup_batch)
    }
}

export_transformer!(Enricher, version = VERSION);

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

    fn click(user: &str, ts: i64, ip: &str, ua: &str) -> Event {
        Event { ip: ip.into(), user_agent: ua.into(), ..Event::new(format!("e-{user}-{ts}"), user, ts, "https://shop.example/cart") }
    }

    fn kept(outcome: Outcome) -> Event {
        match outcome {
            Outcome::Keep(event) => event,
            other => panic!("expected keep, got {other:?}"),
        }
    }

    fn rejected(outcome: Outcome) -> Rejection {
        match outcome {
            Outcome::Reject(rejection) => rejection,
            other => panic!("expected reject, got {other:?}"),
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
    fn ip_resolves_through_geoip_and_invalid_ips_stay_unset() {
        let s = Settings::default();
        let known = kept(transform_one(click("u1", 1, "81.2.69.142", CHROME_WINDOWS), &s, geo));
        assert_eq!((known.country.as_deref(), known.city.as_deref()), (Some("GB"), Some("London")));
        let bad = kept(transform_one(click("u1", 1, "999.1.1.1", CHROME_WINDOWS), &s, geo));
        assert_eq!((bad.country, bad.city), (None, None));
        let unlisted = kept(transform_one(click("u1", 1, "10.0.0.1", CHROME_WINDOWS), &s, geo));
        assert_eq!(unlisted.country, None);
    }

    #[test]
    fn structural_problems_are_rejected_with_the_field() {
        let s = Settings::default();
        let err = rejected(transform_one(click(" ", 1, "1.1.1.1", ""), &s, geo));
        assert_eq!(err.field.as_deref(), Some("user_id"));
        let err = rejected(transform_one(click("u", 0, "1.1.1.1", ""), &s, geo));
        assert_eq!(err.field.as_deref(), Some("timestamp"));
        assert!(err.reason.contains("0 ms"), "{}", err.reason);
    }

    #[test]
    fn a_batch_keeps_one_outcome_per_input_in_order_and_looks_each_address_up_once() {
        let batch = vec![
            click("a", 1, "81.2.69.142", CHROME_WINDOWS),
            click("", 2, "81.2.69.142", CHROME_WINDOWS),
            click("c", 3, "nonsense", GOOGLEBOT),
            click("d", 4, " 81.2.69.142", SAFARI_IPHONE),
            click("e", 5, "2001:db8:0::1", SAFARI_IPHONE),
        ];
        let asked = std::cell::RefCell::new(Vec::new());
        let out = Enricher::default().transform_batch(batch, |ips| {
            asked.borrow_mut().extend_from_slice(ips);
            ips.iter().map(|ip| geo(ip)).collect()
        });
        // One call, distinct addresses in canonical form, invalid ones and
        // rejected events' left out.
        assert_eq!(asked.into_inner(), vec!["81.2.69.142".to_string(), "2001:db8::1".to_string()]);
        let mut out = out.into_iter();
        let a = kept(out.next().unwrap());
        assert_eq!((a.user_id.as_str(), a.country.as_deref(), a.browser.as_deref()), ("a", Some("GB"), Some("Chrome")));
        assert_eq!(rejected(out.next().unwrap()).field.as_deref(), Some("user_id"));
        let c = kept(out.next().unwrap());
        assert_eq!((c.user_id.as_str(), c.country.as_deref(), c.device), ("c", None, Some(DeviceClass::Bot)));
        let d = kept(out.next().unwrap());
        assert_eq!((d.country.as_deref(), d.os.as_deref()), (Some("GB"), Some("iPhone")));
        assert_eq!(kept(out.next().unwrap()).user_id, "e");
        assert!(out.next().is_none());
    }

    #[test]
    fn user_agents_are_parsed_once_across_batches_and_the_cache_stays_bounded() {
        let mut enricher = Enricher::default();
        for batch in 0..3 {
            let out = enricher
                .transform_batch(vec![click("a", 1, "81.2.69.142", CHROME_WINDOWS), click("b", 2, "81.2.69.142", GOOGLEBOT)], |ips| {
                    ips.iter().map(|ip| geo(ip)).collect()
                });
            assert_eq!(kept(out.into_iter().nth(1).unwrap()).device, Some(DeviceClass::Bot), "batch {batch}");
        }
        assert_eq!(enricher.agents.len(), 2);
        for i in 0..AGENT_CACHE_ENTRIES + 10 {
            enricher.agent(&format!("agent {i}"));
        }
        assert!(enricher.agents.len() <= AGENT_CACHE_ENTRIES);
        enricher.agent(&"x".repeat(AGENT_CACHE_BYTES));
        assert!(enricher.agent_bytes <= AGENT_CACHE_BYTES);
    }

    #[test]
    fn attributes_and_fields_it_does_not_own_pass_through() {
        let mut event = click("a", 1, "81.2.69.142", CHROME_WINDOWS);
        event.attributes.push(Attribute { key: "utm_source".into(), value: Value::Str("mail".into()) });
        event.referrer = Some("https://ref.example/".into());
        let out = kept(transform_one(event.clone(), &Settings::default(), geo));
        assert_eq!((out.attributes, out.referrer, out.url), (event.attributes, event.referrer, event.url));
    }
}
