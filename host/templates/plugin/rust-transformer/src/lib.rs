//! {{name}}: a clickstream transform (contract {{contract}}, world `transformer`).
//!
//! A starting point that shows each outcome: it keeps page views with a
//! `section` attribute (the first segment of the URL's path) and the
//! country and city of the client address when no earlier transform set
//! them, drops health checks, and rejects URLs that are neither http(s) nor
//! a path. Edit `transform_one`, then run `clickstream plugin build` and
//! `clickstream plugin test`.

use clickstream_plugin::geoip::{lookup_batch, Location};
use clickstream_plugin::{export_transformer, Event, Outcome, Transformer};
use serde::Deserialize;

/// The `settings` table of this transform in pipeline.toml (values are
/// text there: `settings = { home = "index" }`). A key this type does not
/// declare refuses the plugin, naming the key.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Settings {
    /// The section of the site's root page.
    home: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { home: "home".into() }
    }
}

struct Plugin {
    settings: Settings,
}

impl Transformer for Plugin {
    const NAME: &'static str = "{{name}}";
    type Settings = Settings;

    fn new(settings: Settings) -> Result<Self, String> {
        Ok(Plugin { settings })
    }

    /// One outcome per event, in order. The GeoIP lookup is one call for
    /// the whole batch: each call crosses the sandbox boundary.
    fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        let ips: Vec<String> = batch.iter().map(|event| event.ip.clone()).collect();
        let places = lookup_batch(&ips);
        batch.into_iter().zip(places).map(|(event, place)| self.transform_one(event, place)).collect()
    }
}

impl Plugin {
    fn transform_one(&self, mut event: Event, place: Option<Location>) -> Outcome {
        let Some(path) = path_of(&event.url) else {
            return Outcome::reject("url", "neither an http(s) URL nor a path");
        };
        if path.starts_with("/health") {
            return Outcome::Drop("health check".into());
        }
        let section = path.trim_start_matches('/').split(['/', '?', '#']).next().filter(|s| !s.is_empty());
        event.set_attribute("section", section.unwrap_or(&self.settings.home).to_string());
        if let (None, Some(place)) = (&event.country, place) {
            event.country = place.country;
            event.city = place.city;
        }
        Outcome::Keep(event)
    }
}

/// The path (with query) of an http(s) URL or of a bare path.
fn path_of(url: &str) -> Option<&str> {
    if url.starts_with('/') {
        return Some(url);
    }
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    Some(rest.find(['/', '?', '#']).map_or("/", |at| &rest[at..]))
}

export_transformer!(Plugin);
