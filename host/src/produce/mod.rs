//! The load generator behind `clickstream produce`: realistic synthetic
//! clickstream, the same for the same seed, with an optional share of
//! deliberately bad records for testing the dead-letter path.

mod write;

pub use write::{to_file, to_kafka, ProduceError, Summary};

use std::fmt;

use rand::distributions::{Distribution, WeightedIndex};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Records to generate, bad ones included.
    pub events: u64,
    /// Distinct users.
    pub users: u64,
    /// Distinct pages.
    pub urls: u64,
    /// Same seed, same records.
    pub seed: u64,
    /// Event time of the first click, in ms since the epoch.
    pub start_ms: i64,
    /// Event times spread over about this many seconds.
    pub span_secs: u64,
    /// Share of records that are deliberately bad, 0.0 to 1.0.
    pub bad_fraction: f64,
    /// Size of the oversized records among the bad ones, in bytes.
    pub huge_bytes: usize,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            events: 10_000,
            users: 500,
            urls: 50,
            seed: 42,
            start_ms: 1_764_000_000_000,
            span_secs: 3_600,
            bad_fraction: 0.0,
            huge_bytes: 128 * 1024,
        }
    }
}

/// The kinds of deliberately bad records, generated in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BadKind {
    /// Truncated JSON.
    MalformedJson,
    /// No `user_id`.
    MissingField,
    /// `timestamp` is a boolean.
    WrongType,
    /// An IP that is not one. Still a valid click: its location is `unknown`.
    BadIp,
    /// Larger than the default `source.max_record_bytes`.
    Huge,
    /// Well-formed but refused by the enrich plugin (an empty user id).
    Refused,
    /// A NUL character in the URL, which PostgreSQL's `text` cannot hold.
    NulCharacter,
    /// A timestamp beyond PostgreSQL's `timestamptz` (year 294276).
    FarTimestamp,
    /// A user id longer than the 256 bytes an id may have.
    LongId,
}

impl BadKind {
    /// Every kind, in the order they are generated.
    pub const ALL: [BadKind; 9] = [
        BadKind::MalformedJson,
        BadKind::MissingField,
        BadKind::WrongType,
        BadKind::BadIp,
        BadKind::Huge,
        BadKind::Refused,
        BadKind::NulCharacter,
        BadKind::FarTimestamp,
        BadKind::LongId,
    ];

    /// Whether the pipeline must dead-letter this record (a bad IP is only
    /// an unknown location).
    pub fn is_dead_letter(self) -> bool {
        self != BadKind::BadIp
    }
}

impl fmt::Display for BadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadKind::MalformedJson => "malformed_json",
            BadKind::MissingField => "missing_field",
            BadKind::WrongType => "wrong_type",
            BadKind::BadIp => "bad_ip",
            BadKind::Huge => "huge",
            BadKind::Refused => "refused",
            BadKind::NulCharacter => "nul_character",
            BadKind::FarTimestamp => "far_timestamp",
            BadKind::LongId => "long_id",
        })
    }
}

/// One generated record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The Kafka key: the user id, so a user's clicks stay in one partition, in order.
    pub key: String,
    /// The JSON bytes.
    pub payload: Vec<u8>,
    /// `None` for a good record.
    pub bad: Option<BadKind>,
    /// The event id the record carries (every good one carries one).
    pub event_id: String,
}

const USER_AGENTS: &[(&str, u32)] = &[
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36", 30),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1", 20),
    ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.43 Mobile Safari/537.36", 15),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15", 10),
    ("Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0", 6),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.2210.61", 6),
    ("Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1", 5),
    ("Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.0.0 Safari/537.36", 3),
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", 2),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", 1),
    ("curl/8.4.0", 1),
    ("", 1),
];

/// Public address blocks (first octets) of ISPs in many countries, so
/// enrichment finds real locations. The last octets are random.
const IP_BLOCKS: &[&str] = &[
    "81.2.69", "86.128", "90.0", "91.0", "79.0", "88.0", "95.24", "126.0", "117.192", "123.112", "1.128", "187.0", "177.0", "8.8", "24.0",
    "73.0", "201.0", "41.0", "105.0", "197.0", "203.0", "58.0", "110.0", "175.0", "186.0", "190.0", "212.0", "213.0", "217.0", "62.0",
];

const REFERRERS: &[&str] = &["https://www.google.com/", "https://www.bing.com/", "https://news.example/", "https://social.example/feed"];

/// A pause longer than the default session timeout, which ends a session.
const SESSION_BREAK_MS: f64 = 31.0 * 60_000.0;

/// The generator: an iterator of records.
pub struct Generator {
    config: GeneratorConfig,
    rng: ChaCha8Rng,
    produced: u64,
    /// Per user: current event time, IP, user agent, session number.
    users: Vec<(i64, String, &'static str, u32)>,
    user_weights: WeightedIndex<f64>,
    url_weights: WeightedIndex<f64>,
    /// Per user: the mean gap between clicks, and the chance a click starts
    /// a new session (a 31-minute break), chosen so the user's expected share
    /// of the events spreads over the span.
    pacing: Vec<(f64, f64)>,
    next_bad: usize,
}

impl Generator {
    /// A generator for `config`.
    pub fn new(config: GeneratorConfig) -> Generator {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let users = config.users.max(1);
        let agents = WeightedIndex::new(USER_AGENTS.iter().map(|(_, w)| *w)).expect("weights");
        let users_vec = (0..users)
            .map(|_| {
                let start = config.start_ms + rng.gen_range(0..(config.span_secs.max(1) * 1000 / 10).max(1)) as i64;
                (start, random_ip(&mut rng), USER_AGENTS[agents.sample(&mut rng)].0, 0)
            })
            .collect();
        // Zipf-like popularity: a few users and pages get most of the clicks.
        let weights: Vec<f64> = (1..=users).map(|i| 1.0 / (i as f64).powf(0.6)).collect();
        let total: f64 = weights.iter().sum();
        let span_ms = config.span_secs as f64 * 1000.0;
        let pacing = weights
            .iter()
            .map(|w| {
                // Light users are paced as if they had a few clicks, so chance
                // extra ones still land inside the span.
                let clicks = (config.events as f64 * w / total).max(4.0);
                // Breaks take at most a quarter of a span of two hours or more
                // (in a shorter one they would overrun it), and come at most
                // every 20 clicks.
                let breaks = if span_ms >= 4.0 * SESSION_BREAK_MS { (span_ms / 4.0 / SESSION_BREAK_MS).min(clicks / 20.0) } else { 0.0 };
                let gap = ((span_ms - breaks * SESSION_BREAK_MS) / clicks).max(1.0);
                (gap, breaks / clicks)
            })
            .collect();
        let user_weights = WeightedIndex::new(&weights).expect("weights");
        let url_weights = WeightedIndex::new((1..=config.urls.max(1)).map(|i| 1.0 / i as f64)).expect("weights");
        Generator { config, rng, produced: 0, users: users_vec, user_weights, url_weights, pacing, next_bad: 0 }
    }

    fn url(&mut self) -> String {
        let page = self.url_weights.sample(&mut self.rng);
        let path = match page {
            0 => "/".to_string(),
            1 => "/cart".to_string(),
            2 => "/checkout".to_string(),
            3 => "/search".to_string(),
            n if n % 3 == 0 => format!("/blog/post-{n}"),
            n => format!("/products/item-{n}"),
        };
        // Query strings and fragments vary; aggregation strips them by default.
        match self.rng.gen_range(0..10) {
            0 => format!("https://shop.example{path}?utm_source=mail&id={}", self.rng.gen_range(0..1000)),
            1 => format!("https://Shop.Example{path}#reviews"),
            _ => format!("https://shop.example{path}"),
        }
    }

    fn good(&mut self) -> (String, serde_json::Value) {
        let u = self.user_weights.sample(&mut self.rng);
        // Exponential gaps, with an occasional long break that ends a session.
        let (mean_gap, break_chance) = self.pacing[u];
        let mut gap = -mean_gap * (1.0 - self.rng.gen::<f64>()).ln();
        if self.rng.gen::<f64>() < break_chance {
            gap += SESSION_BREAK_MS;
        }
        let ts = self.users[u].0 + gap.max(1.0) as i64;
        if gap > 30.0 * 60_000.0 {
            self.users[u].3 += 1;
        }
        self.users[u].0 = ts;
        let user_id = format!("user-{u:05}");
        let event_id = format!("{:016x}{:016x}", self.rng.gen::<u64>(), self.rng.gen::<u64>());
        let url = self.url();
        let (_, ip, agent, session) = &self.users[u];
        let timestamp = if self.rng.gen_range(0..4) == 0 {
            json!(chrono::DateTime::from_timestamp_millis(ts).expect("in range").to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        } else {
            json!(ts)
        };
        let referrer = (self.rng.gen_range(0..3) == 0).then(|| REFERRERS[self.rng.gen_range(0..REFERRERS.len())]);
        let value = json!({
            "event_id": event_id,
            "user_id": user_id,
            "timestamp": timestamp,
            "url": url,
            "ip": ip,
            "user_agent": agent,
            "referrer": referrer,
            "session_id": format!("{user_id}-s{session}"),
        });
        (user_id, value)
    }
}

fn random_ip<R: Rng>(rng: &mut R) -> String {
    if rng.gen_range(0..20) == 0 {
        return format!("2001:4860:{:x}::{:x}", rng.gen_range(0..0xffffu32), rng.gen_range(1..0xffffu32));
    }
    let block = IP_BLOCKS[rng.gen_range(0..IP_BLOCKS.len())];
    let mut ip = block.to_string();
    for _ in block.split('.').count()..4 {
        ip.push_str(&format!(".{}", rng.gen_range(1..255)));
    }
    ip
}

impl Iterator for Generator {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        if self.produced >= self.config.events {
            return None;
        }
        self.produced += 1;
        let (user_id, mut value) = self.good();
        let event_id = value["event_id"].as_str().unwrap_or_default().to_string();
        let bad = (self.rng.gen::<f64>() < self.config.bad_fraction).then(|| {
            let kind = BadKind::ALL[self.next_bad % BadKind::ALL.len()];
            self.next_bad += 1;
            kind
        });
        let payload = match bad {
            None => value.to_string().into_bytes(),
            Some(BadKind::MalformedJson) => {
                let text = value.to_string();
                text.as_bytes()[..text.len() / 2].to_vec()
            }
            Some(BadKind::MissingField) => {
                value.as_object_mut().expect("object").remove("user_id");
                value.to_string().into_bytes()
            }
            Some(BadKind::WrongType) => {
                value["timestamp"] = json!(true);
                value.to_string().into_bytes()
            }
            Some(BadKind::BadIp) => {
                value["ip"] = json!(format!("{}.{}.300.1", self.rng.gen_range(256..999), self.rng.gen_range(0..255)));
                value.to_string().into_bytes()
            }
            Some(BadKind::Huge) => {
                value["padding"] = json!("x".repeat(self.config.huge_bytes));
                value.to_string().into_bytes()
            }
            Some(BadKind::Refused) => {
                value["user_id"] = json!("");
                value.to_string().into_bytes()
            }
            Some(BadKind::NulCharacter) => {
                value["url"] = json!(format!("{}\u{0}", value["url"].as_str().unwrap_or_default()));
                value.to_string().into_bytes()
            }
            Some(BadKind::FarTimestamp) => {
                value["timestamp"] = json!(9_300_000_000_000_000i64);
                value.to_string().into_bytes()
            }
            Some(BadKind::LongId) => {
                value["user_id"] = json!(format!("{user_id}-{}", "x".repeat(300)));
                value.to_string().into_bytes()
            }
        };
        Some(Record { key: user_id, payload, bad, event_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::decode::{decode, DecodeLimits};

    /// The default limits, at a "now" of 2026-11-29.
    fn dec(
        payload: &[u8],
        derived: impl FnOnce() -> String,
    ) -> Result<crate::stages::record::RawEvent, crate::stages::decode::DecodeError> {
        let limits =
            DecodeLimits { max_record_bytes: 65536, min_timestamp_ms: 946_684_800_000, max_future_ms: 86_400_000, max_past_ms: i64::MAX };
        decode(payload, &limits, 1_795_900_000_000, derived)
    }

    fn config(bad: f64) -> GeneratorConfig {
        GeneratorConfig { events: 3000, bad_fraction: bad, ..GeneratorConfig::default() }
    }

    #[test]
    fn the_same_seed_gives_the_same_records() {
        let a: Vec<_> = Generator::new(config(0.1)).map(|r| r.payload).collect();
        let b: Vec<_> = Generator::new(config(0.1)).map(|r| r.payload).collect();
        assert_eq!(a, b);
        let c: Vec<_> = Generator::new(GeneratorConfig { seed: 7, ..config(0.1) }).map(|r| r.payload).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn good_records_decode_and_are_about_400_bytes() {
        let records: Vec<_> = Generator::new(config(0.0)).collect();
        assert_eq!(records.len(), 3000);
        let total: usize = records.iter().map(|r| r.payload.len()).sum();
        let mean = total / records.len();
        assert!((250..=550).contains(&mean), "mean record size {mean}");
        for r in &records {
            let click = dec(&r.payload, || unreachable!()).unwrap();
            assert_eq!(click.user_id, r.key);
            assert_eq!(click.event_id, r.event_id);
        }
    }

    #[test]
    fn bad_records_of_every_kind_fail_to_decode_as_expected() {
        let records: Vec<_> = Generator::new(config(0.2)).collect();
        for kind in BadKind::ALL {
            let of_kind: Vec<_> = records.iter().filter(|r| r.bad == Some(kind)).collect();
            assert!(!of_kind.is_empty(), "no {kind} records");
            for r in of_kind {
                let decoded = dec(&r.payload, || "x".into());
                match kind {
                    BadKind::MalformedJson => assert_eq!(decoded.unwrap_err().kind(), "not_json"),
                    BadKind::MissingField => assert_eq!(decoded.unwrap_err().kind(), "missing_field"),
                    BadKind::WrongType => assert_eq!(decoded.unwrap_err().kind(), "wrong_type"),
                    BadKind::Huge => assert_eq!(decoded.unwrap_err().kind(), "too_large"),
                    BadKind::BadIp => assert!(decoded.unwrap().ip.contains(".300.")),
                    BadKind::Refused => assert_eq!(decoded.unwrap().user_id, ""),
                    BadKind::NulCharacter => assert_eq!(decoded.unwrap_err().kind(), "nul_character"),
                    BadKind::FarTimestamp => assert_eq!(decoded.unwrap_err().kind(), "timestamp_out_of_range"),
                    BadKind::LongId => assert_eq!(decoded.unwrap_err().kind(), "field_too_long"),
                }
            }
        }
    }

    #[test]
    fn event_times_stay_near_the_span() {
        for span_secs in [1_800, 6 * 3_600] {
            let config = GeneratorConfig { events: 20_000, users: 800, span_secs, ..config(0.0) };
            let mut times: Vec<i64> = Generator::new(config.clone())
                .map(|r| dec(&r.payload, || unreachable!()).unwrap().timestamp_ms - config.start_ms)
                .collect();
            times.sort_unstable();
            let (p50, p99) = (times[times.len() / 2], times[times.len() * 99 / 100]);
            let span_ms = span_secs as i64 * 1000;
            assert!(p50 <= span_ms && p50 >= span_ms / 4, "half the events in the span's middle: p50 {p50} of {span_ms} ms");
            assert!(p99 <= span_ms * 2, "99% of events within two spans: p99 {p99} of {span_ms} ms");
        }
    }

    #[test]
    fn a_users_clicks_move_forward_in_time() {
        let mut last = std::collections::HashMap::new();
        for r in Generator::new(config(0.0)) {
            let c = dec(&r.payload, || unreachable!()).unwrap();
            if let Some(prev) = last.insert(c.user_id.clone(), c.timestamp_ms) {
                assert!(c.timestamp_ms > prev, "{} went back in time", c.user_id);
            }
        }
    }
}
