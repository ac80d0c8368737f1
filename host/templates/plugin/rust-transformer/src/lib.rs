//! {{name}}: a clickstream transform (contract {{contract}}, world `transformer`).
//!
//! A starting point that shows each outcome: it keeps page views with a
//! `section` attribute (the first segment of the URL's path) and the
//! country and city of the client address when no earlier transform set
//! them, drops health checks, and rejects URLs that are neither http(s) nor
//! a path. Edit `transform_one`, then run `clickstream plugin build` and
//! `clickstream plugin test`.

wit_bindgen::generate!({ world: "transformer", path: "wit" });

use clickstream::pipeline::geoip::{lookup_batch, Location};
use clickstream::pipeline::types::{Attribute, Rejection, Value};

struct Plugin;

impl Guest for Plugin {
    fn name() -> String {
        "{{name}}".into()
    }

    fn version() -> String {
        env!("CARGO_PKG_VERSION").into()
    }

    /// The `settings` table of this transform in pipeline.toml. Refuse what
    /// you do not know: the host then refuses the plugin with this message.
    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        match settings.first() {
            None => Ok(()),
            Some((key, _)) => Err(format!("unknown setting `{key}`: {{name}} takes none")),
        }
    }

    /// One outcome per event, in order. The GeoIP lookup is one call for
    /// the whole batch: each call crosses the sandbox boundary.
    fn transform(batch: Vec<Event>) -> Vec<Outcome> {
        let ips: Vec<String> = batch.iter().map(|event| event.ip.clone()).collect();
        let places = lookup_batch(&ips);
        batch.into_iter().zip(places).map(|(event, place)| transform_one(event, place)).collect()
    }
}

fn transform_one(mut event: Event, place: Option<Location>) -> Outcome {
    let Some(path) = path_of(&event.url) else {
        return Outcome::Reject(Rejection { field: Some("url".into()), reason: "neither an http(s) URL nor a path".into() });
    };
    if path.starts_with("/health") {
        return Outcome::Drop("health check".into());
    }
    let section = path.trim_start_matches('/').split(['/', '?', '#']).next().filter(|s| !s.is_empty()).unwrap_or("home").to_string();
    event.attributes.push(Attribute { key: "section".into(), value: Value::Str(section) });
    if let (None, Some(place)) = (&event.country, place) {
        event.country = place.country;
        event.city = place.city;
    }
    Outcome::Keep(event)
}

/// The path (with query) of an http(s) URL or of a bare path.
fn path_of(url: &str) -> Option<&str> {
    if url.starts_with('/') {
        return Some(url);
    }
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    Some(rest.find(['/', '?', '#']).map_or("/", |at| &rest[at..]))
}

export!(Plugin);
