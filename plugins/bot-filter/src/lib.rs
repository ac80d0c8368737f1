//! The bot-filter transform: drops events from bots, so they are counted
//! (per reason, in `/metrics` and `dropped_events`) instead of stored. An
//! event is a bot's when an earlier transform classified its device as
//! `bot` (reason `bot`; `enrich` does, from its user agent), or when its
//! user agent contains one of the configured markers (reason
//! `marker:<marker>`). Put it after `enrich` to use both.

use foldhash::{HashMap, HashMapExt};

use clickstream_plugin::{export_transformer, Transformer};
use serde::{Deserialize, Deserializer};

pub use clickstream_plugin::{DeviceClass, Event, Outcome};

/// Plugin name, reported to the host.
pub const NAME: &str = "bot-filter";

/// Automation clients that user-agent parsers do not call crawlers.
pub const DEFAULT_MARKERS: &[&str] = &["headlesschrome", "phantomjs", "python-requests", "go-http-client", "curl/", "wget/", "scrapy"];

/// Settings from the transform's `settings` table in pipeline.toml.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// User-agent substrings that mark a bot: comma-separated, matched
    /// without regard to case.
    #[serde(deserialize_with = "lower_case")]
    pub markers: Vec<String>,
    /// Whether events an earlier transform classified as `bot` are dropped.
    pub drop_classified: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { markers: DEFAULT_MARKERS.iter().map(|m| m.to_string()).collect(), drop_classified: true }
    }
}

fn lower_case<'de, D: Deserializer<'de>>(markers: D) -> Result<Vec<String>, D::Error> {
    Ok(Vec::<String>::deserialize(markers)?.into_iter().map(|m| m.to_ascii_lowercase()).collect())
}

impl Settings {
    /// Reads the settings table; an unknown key or a bad value is refused by name.
    pub fn parse(pairs: &[(String, String)]) -> Result<Settings, String> {
        clickstream_plugin::settings::from_pairs(pairs.to_vec())
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

/// The transform: its settings.
pub struct BotFilter(pub Settings);

impl Transformer for BotFilter {
    const NAME: &'static str = NAME;
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        Ok(BotFilter(settings))
    }

    fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        transform_batch(batch, &self.0)
    }
}

export_transformer!(BotFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn event(user: &str, ua: &str, device: Option<DeviceClass>) -> Event {
        Event {
            ip: "81.2.69.142".into(),
            user_agent: ua.into(),
            device,
            ..Event::new(format!("e-{user}"), user, 1, "https://shop.example/")
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
