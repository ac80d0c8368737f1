//! A plugin as users built them for contract 0.1.0 (`wit/v0.1.0/`, frozen):
//! the `enricher` world, one `geoip.lookup` import call per click, a result
//! per click. The host adapts it into the transform chain, so this fixture
//! proves that adaptation: it must keep loading and enriching beside 0.2.0
//! transforms.
//!
//! Its logic is deliberately small: country and city from the host's
//! geoip, the browser from the user agent's first product token, `bot` for
//! user agents containing `bot`, and an error for an empty url.
//!
//! The SDK's raw bindings for the frozen world, as such a plugin is kept
//! building: no trait covers a superseded world.

use clickstream_plugin::v0_1::enricher::clickstream::pipeline::geoip;
use clickstream_plugin::v0_1::enricher::clickstream::pipeline::types::{DeviceClass, EnrichError, EnrichedClick, RawClick};
use clickstream_plugin::v0_1::enricher::{export_enricher_v0_1, Guest};

struct Plugin;

impl Guest for Plugin {
    fn name() -> String {
        "legacy-enrich".into()
    }

    fn version() -> String {
        "0.1.0-legacy".into()
    }

    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        match settings.first() {
            Some((key, _)) => Err(format!("unknown setting `{key}`; legacy-enrich takes none")),
            None => Ok(()),
        }
    }

    fn enrich(batch: Vec<RawClick>) -> Vec<Result<EnrichedClick, EnrichError>> {
        batch
            .into_iter()
            .map(|raw| {
                if raw.url.trim().is_empty() {
                    return Err(EnrichError { field: Some("url".into()), reason: "url is empty".into() });
                }
                let location = geoip::lookup(&raw.ip);
                let (country, city) = location
                    .map(|l| (l.country.unwrap_or_else(|| "unknown".into()), l.city.unwrap_or_else(|| "unknown".into())))
                    .unwrap_or_else(|| ("unknown".into(), "unknown".into()));
                let browser = raw.user_agent.split(['/', ' ']).next().filter(|b| !b.is_empty()).unwrap_or("unknown").to_string();
                let device = if raw.user_agent.to_ascii_lowercase().contains("bot") { DeviceClass::Bot } else { DeviceClass::Unknown };
                Ok(EnrichedClick { raw, country, city, browser, os: "unknown".into(), device, plugin_version: Self::version() })
            })
            .collect()
    }
}

export_enricher_v0_1!(Plugin with_types_in clickstream_plugin::v0_1::enricher);
