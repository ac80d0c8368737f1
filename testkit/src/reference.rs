//! The metric definitions of docs/aggregates.md, computed directly over
//! the stored events, independently of the aggregate plugin, for the
//! default windowing.

use std::collections::BTreeMap;

use sqlx::PgPool;

/// Default window size.
pub const WINDOW_MS: i64 = 60_000;
/// Default session timeout.
pub const SESSION_TIMEOUT_MS: i64 = 30 * 60_000;

/// The reference: the metric definitions of docs/aggregates.md, computed directly.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Expected {
    /// Events in the group.
    pub clicks: u64,
    /// The distinct users among them (the metric is their count).
    pub users: std::collections::BTreeSet<String>,
    /// Sum of the time-spent samples, ms.
    pub total_ms: u64,
    /// Time-spent samples: gaps to the same user's next event within the
    /// session timeout.
    pub samples: u64,
}

fn normalise(url: &str) -> String {
    let no_fragment = url.split('#').next().unwrap();
    let no_query = no_fragment.split('?').next().unwrap();
    match no_query.find("://") {
        Some(i) => {
            let (scheme, rest) = (&no_query[..i], &no_query[i + 3..]);
            let slash = rest.find('/').unwrap_or(rest.len());
            let path = if slash == rest.len() { "/" } else { &rest[slash..] };
            format!("{}://{}{}", scheme.to_lowercase(), rest[..slash].to_lowercase(), path)
        }
        None => no_query.to_string(),
    }
}

/// The reference over the events stored in `pool`.
pub async fn reference(pool: &PgPool) -> BTreeMap<(i64, String, String), Expected> {
    let events: Vec<(String, String, i64, String, String)> =
        sqlx::query_as("SELECT event_id, user_id, ts_ms, url, country FROM events").fetch_all(pool).await.unwrap();
    of_events(events)
}

/// The reference over `(event_id, user_id, ts_ms, url, country)` events,
/// e.g. computed from what a test produced rather than from the store.
pub fn of_events(mut events: Vec<(String, String, i64, String, String)>) -> BTreeMap<(i64, String, String), Expected> {
    events.sort_by(|a, b| (&a.1, a.2, &a.0).cmp(&(&b.1, b.2, &b.0)));
    let mut groups: BTreeMap<(i64, String, String), Expected> = BTreeMap::new();
    for (i, (_, user, ts, url, country)) in events.iter().enumerate() {
        let key = (ts.div_euclid(WINDOW_MS) * WINDOW_MS, normalise(url), country.clone());
        let g = groups.entry(key).or_default();
        g.clicks += 1;
        g.users.insert(user.clone());
        if let Some((_, next_user, next_ts, _, _)) = events.get(i + 1) {
            if next_user == user && next_ts - ts <= SESSION_TIMEOUT_MS {
                g.total_ms += (next_ts - ts) as u64;
                g.samples += 1;
            }
        }
    }
    groups
}
