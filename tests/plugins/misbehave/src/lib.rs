//! A test-only enricher that misbehaves on request, so the host's limits can
//! be proven on a real component. The user id of a click picks the behaviour:
//! `trap` panics, `loop` never returns, `alloc` allocates until stopped;
//! `rename` returns the click with another event id, user id and timestamp
//! (the host keeps its own); `long-city` returns a 1 MiB city name and
//! `nul-country` a country holding a NUL character (the host refuses both).
//! Every other click is passed through with country and city from geoip.

wit_bindgen::generate!({
    world: "enricher",
    path: "../../../wit/v0.1.0",
});

use clickstream::pipeline::types::DeviceClass;

struct Plugin;

impl Guest for Plugin {
    fn name() -> String {
        "misbehave".into()
    }

    fn version() -> String {
        "0.0.1-misbehave".into()
    }

    fn configure(settings: Vec<(String, String)>) -> Result<(), String> {
        match settings.iter().find(|(k, _)| k == "refuse") {
            Some((_, why)) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn enrich(batch: Vec<RawClick>) -> Vec<Result<EnrichedClick, EnrichError>> {
        // The `always-trap` build fails every batch: a plugin that cannot
        // pass the golden batch a reload runs before swapping it in.
        if cfg!(feature = "always-trap") {
            panic!("built to trap on every batch");
        }
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        batch
            .into_iter()
            .map(|mut raw| {
                match raw.user_id.as_str() {
                    "trap" => panic!("asked to trap"),
                    "loop" => {
                        let mut n: u64 = 0;
                        loop {
                            n = std::hint::black_box(n.wrapping_add(1));
                        }
                    }
                    "alloc" => loop {
                        let mut chunk = vec![0u8; 16 << 20];
                        chunk[0] = 1;
                        hoard.push(std::hint::black_box(chunk));
                    },
                    _ => {}
                }
                let location = clickstream::pipeline::geoip::lookup(&raw.ip);
                let (mut country, mut city) =
                    location.map(|l| (l.country.unwrap_or_default(), l.city.unwrap_or_default())).unwrap_or_default();
                match raw.user_id.as_str() {
                    "rename" => {
                        raw.event_id = format!("renamed-{}", raw.event_id);
                        raw.user_id = "someone-else".into();
                        raw.timestamp_ms += 3_600_000;
                    }
                    "long-city" => city = "x".repeat(1 << 20),
                    "nul-country" => country = "D\0E".into(),
                    _ => {}
                }
                Ok(EnrichedClick {
                    raw,
                    country,
                    city,
                    browser: "unknown".into(),
                    os: "unknown".into(),
                    device: DeviceClass::Unknown,
                    plugin_version: Self::version(),
                })
            })
            .collect()
    }
}

export!(Plugin);
