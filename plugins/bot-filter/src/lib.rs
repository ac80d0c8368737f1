//! The bot-filter transform: drops events from bots, so they are counted
//! (per reason, in `/metrics` and `dropped_events`) instead of stored. An
//! event is a bot's when an earlier transform classified its device as
//! `bot` (reason `bot`; `enrich` does, from its user agent), or when its
//! user agent contains one of the configured markers (reason
//! `marker:<marker>`). Put it after `enrich` to use both.

use foldhash::{HashMap, HashMapExt};

wit_bindgen::generate!({
    world: "transformer",
    path: "../../wit/v0.2.0",
});

pub use clickstream::pipeline::types::DeviceClass;

/// Plugin name, reported to the host.
pub const NAME: &str = "bot-filter";

/// Plugin version, recorded in the chain of every event it keeps.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Automation clients that user-agent parsers do not call crawlers.
pub const DEFAULT_MARKERS: &[&str] = &["headlesschrome", "phantomjs", "python-requests", "go-http-client", "curl/", "wget/", "scrapy"];

/// Settings from the transform's `settings` table in pipeline.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Lower-cased user-agent substrings that mark a bot.
    pub markers: Vec<String>,
    /// Whether events an earlier transform classified as `bot` are dropped.
    pub drop_classified: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { markers: DEFAULT_MARKERS.iter().map(|m| m.to_string()).collect(), drop_classified: true }
    }
}

impl Settings {
    /// Parses the settings table; unknown keys and bad values are refused
    /// with what is accepted.
    pub fn parse(pairs: &[(String, String)]) -> Result<Settings, String> {
        let mut settings = Settings::default();
        for (key, value) in pairs {
            match key.as_str() {
                "markers" => {
                    settings.markers = value.split(',').map(|m| m.trim().to_ascii_lowercase()).filter(|m| !m.is_empty()).collect();
                }
                "drop_classified" => {
                    settings.drop_classified = match value.trim() {
                        "true" => true,
                        "false" => false,
                        other => return Err(format!("drop_classified = `{other}`: expected `true` or `false`")),
                    }
                }
                other => {
                    return Err(format!(
                        "unknown setting `{other}`; the bot-filter plugin accepts: markers (comma-separated \
                         user-agent substrings; default {}), drop_classified (true or false; default true)",
                        DEFAULT_MARKERS.join(",")
                    ))
                }
            }
        }
        Ok(settings)
    }

    /// Why an event with this user agent and device is a bot's, if it is.
    pub fn verdict(&self, user_agent: &str, device: Option<DeviceClass>) -> Option<String> {
        if self.drop_classified && device == Some(DeviceClass::Bot) {
            return Some("bot".into());
        }
        let lower = user_agent.to_ascii_lowercase();
        self.markers.iter().find(|m| lower.contains(m.as_str())).map(|m| format!("marker:{m}"))
    }
}

/// Transforms a batch: one outcome per input, in order. Each distinct
/// (user agent, device) is judged once per batch.
pub fn transform_batch(batch: Vec<Event>, settings: &Settings) -> Vec<Outcome> {
    let verdicts: Vec<Option<String>> = {
        let mut seen: HashMap<(&str, bool), Option<String>> = HashMap::new();
        batch
            .iter()
            .map(|e| {
                let key = (e.user_agent.as_str(), e.device == Some(DeviceClass::Bot));
                seen.entry(key).or_insert_with(|| settings.verdict(&e.user_agent, e.device)).clone()
            })
            .collect()
    };
    batch
        .into_iter()
        .zip(verdicts)
        .map(|(event, verdict)| match verdict {
            Some(reason) => Outcome::Drop(reason),
            None => Outcome::Keep(event),
        })
        .collect()
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
            let settings = SETTINGS.lock().unwrap_or_else(|e| e.into_inner());
            let default = Settings::default();
            transform_batch(batch, settings.as_ref().unwrap_or(&default))
        }
    }

    export!(Plugin with_types_in crate);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, ua: &str, device: Option<DeviceClass>) -> Event {
        Event {
            event_id: format!("e-{user}"),
            user_id: user.into(),
            timestamp_ms: 1,
            url: "https://shop.example/".into(),
            ip: "81.2.69.142".into(),
            user_agent: ua.into(),
            referrer: None,
            session_id: None,
            country: None,
            city: None,
            browser: None,
            os: None,
            device,
            attributes: Vec::new(),
        }
    }

    fn outcomes(batch: Vec<Event>, settings: &Settings) -> Vec<Result<String, String>> {
        transform_batch(batch, settings)
            .into_iter()
            .map(|o| match o {
                Outcome::Keep(e) => Ok(e.user_id),
                Outcome::Drop(reason) => Err(reason),
                Outcome::Reject(r) => panic!("bot-filter never rejects: {r:?}"),
            })
            .collect()
    }

    #[test]
    fn classified_bots_and_marked_clients_are_dropped_with_their_reason_and_people_kept() {
        let batch = vec![
            event("person", "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", Some(DeviceClass::Desktop)),
            event("googlebot", "Mozilla/5.0 (compatible; Googlebot/2.1)", Some(DeviceClass::Bot)),
            event("script", "curl/8.4.0", Some(DeviceClass::Unknown)),
            event("headless", "Mozilla/5.0 HeadlessChrome/120.0", None),
            event("no-ua", "", None),
        ];
        assert_eq!(
            outcomes(batch, &Settings::default()),
            vec![
                Ok("person".into()),
                Err("bot".into()),
                Err("marker:curl/".into()),
                Err("marker:headlesschrome".into()),
                Ok("no-ua".into())
            ]
        );
    }

    #[test]
    fn markers_replace_the_defaults_and_classification_can_be_ignored() {
        let s = Settings::parse(&[("markers".into(), " UptimeCheck ,".into()), ("drop_classified".into(), "false".into())]).unwrap();
        let batch = vec![
            event("monitor", "UptimeCheck/1.0", None),
            event("googlebot", "Mozilla/5.0 (compatible; Googlebot/2.1)", Some(DeviceClass::Bot)),
            event("script", "curl/8.4.0", None),
        ];
        assert_eq!(outcomes(batch, &s), vec![Err("marker:uptimecheck".into()), Ok("googlebot".into()), Ok("script".into())]);
    }

    #[test]
    fn bad_settings_are_refused_with_what_is_accepted() {
        assert!(Settings::parse(&[("drop_classified".into(), "yes".into())]).unwrap_err().contains("`true`"));
        assert!(Settings::parse(&[("marker".into(), "x".into())]).unwrap_err().contains("markers"));
    }

    #[test]
    fn a_kept_event_is_returned_unchanged() {
        let e = event("person", "Firefox", Some(DeviceClass::Desktop));
        match transform_batch(vec![e.clone()], &Settings::default()).pop() {
            Some(Outcome::Keep(out)) => assert_eq!((out.event_id, out.user_agent, out.device), (e.event_id, e.user_agent, e.device)),
            other => panic!("expected keep, got {other:?}"),
        }
    }
}
