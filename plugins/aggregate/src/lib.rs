//! The aggregate plugin: clicks, exact unique users and time on page per
//! (window, normalised URL, country).
//!
//! The metric definitions live in docs/aggregates.md; this is their one
//! implementation. [`WindowRun`] is plain Rust, unit-tested natively; the
//! component export at the bottom is a thin shell around it.

use std::collections::HashMap;

use std::collections::BTreeMap;

use clickstream_plugin::{export_aggregator, Aggregator};

pub use clickstream_plugin::{AggregateParams, AggregateRow, StoredClick};

/// Plugin name, reported to the host.
pub const NAME: &str = "aggregate";

/// Plugin version, stored with every aggregate row.
pub const VERSION: &str = match option_env!("CLICKSTREAM_PLUGIN_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Normalises a URL for grouping: scheme and host lower-cased, an empty path
/// becomes `/`, the fragment is dropped, and the query is dropped unless
/// `keep_query`. A URL without a scheme is only trimmed and cut the same way.
pub fn normalize_url(url: &str, keep_query: bool) -> String {
    let url = url.trim();
    let url = url.split('#').next().unwrap_or_default();
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, "/"),
            };
            format!("{}://{}{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), path)
        }
        None => base.to_string(),
    };
    if keep_query {
        if let Some(query) = query.filter(|q| !q.is_empty()) {
            out.push('?');
            out.push_str(query);
        }
    }
    out
}

/// Start of the epoch-aligned window holding `ts_ms`.
pub fn window_start(ts_ms: i64, window_ms: i64) -> i64 {
    ts_ms.div_euclid(window_ms) * window_ms
}

#[derive(Debug, Default)]
struct Group {
    clicks: u64,
    unique_users: u64,
    /// Sequence number of the last user counted; input is sorted by user, so
    /// a group sees each user in one run and needs no set of user ids.
    last_user_seq: u64,
    time_spent_total_ms: u64,
    time_spent_samples: u64,
}

/// Why a run refused its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderError(pub String);

/// (window start, normalised URL, country).
type GroupKey = (i64, String, String);

/// One aggregation run over the windows of `[from_ms, to_ms)`; see the
/// `aggregation` interface in the WIT for the input contract.
#[derive(Debug)]
pub struct WindowRun {
    params: AggregateParams,
    from_ms: i64,
    to_ms: i64,
    groups: HashMap<GroupKey, Group>,
    /// The previous click of the current user, and the key of its group when
    /// it lies in the range (its time spent is known once the next arrives).
    previous: Option<(StoredClick, Option<GroupKey>)>,
    user_seq: u64,
}

impl WindowRun {
    /// Starts a run.
    pub fn new(params: AggregateParams, from_ms: i64, to_ms: i64) -> WindowRun {
        WindowRun { params, from_ms, to_ms, groups: HashMap::new(), previous: None, user_seq: 0 }
    }

    /// Adds a batch continuing the (user, timestamp, event id) order. A click
    /// equal to the previous one (same event id) is a duplicate and is skipped.
    pub fn push(&mut self, batch: Vec<StoredClick>) -> Result<(), OrderError> {
        for click in batch {
            self.push_one(click)?;
        }
        Ok(())
    }

    fn push_one(&mut self, click: StoredClick) -> Result<(), OrderError> {
        let mut same_user = false;
        if let Some((prev, prev_group)) = &self.previous {
            let prev_key = (&prev.user_id, prev.timestamp_ms, &prev.event_id);
            let key = (&click.user_id, click.timestamp_ms, &click.event_id);
            if key == prev_key {
                return Ok(());
            }
            if key < prev_key {
                return Err(OrderError(format!(
                    "clicks must be sorted by (user id, timestamp, event id): {:?} came after {:?}",
                    key, prev_key
                )));
            }
            same_user = prev.user_id == click.user_id;
            if same_user {
                let gap = click.timestamp_ms - prev.timestamp_ms;
                if let Some(group) = prev_group {
                    if gap <= self.params.session_timeout_ms {
                        let g = self.groups.get_mut(group).expect("group of a counted click");
                        g.time_spent_total_ms += gap as u64;
                        g.time_spent_samples += 1;
                    }
                }
            }
        }
        if !same_user {
            self.user_seq += 1;
        }
        let group_key = (self.from_ms..self.to_ms).contains(&click.timestamp_ms).then(|| {
            (
                window_start(click.timestamp_ms, self.params.window_ms),
                normalize_url(&click.url, self.params.keep_query),
                if click.country.is_empty() { "unknown".to_string() } else { click.country.clone() },
            )
        });
        if let Some(key) = &group_key {
            let seq = self.user_seq;
            let g = self.groups.entry(key.clone()).or_default();
            g.clicks += 1;
            if g.last_user_seq != seq {
                g.last_user_seq = seq;
                g.unique_users += 1;
            }
        }
        self.previous = Some((click, group_key));
        Ok(())
    }

    /// Ends the run: one row per group, sorted by (window, url, country).
    pub fn finish(&mut self) -> Vec<AggregateRow> {
        self.previous = None;
        let mut rows: Vec<AggregateRow> = self
            .groups
            .drain()
            .map(|((window_start_ms, url, country), g)| AggregateRow {
                window_start_ms,
                url,
                country,
                clicks: g.clicks,
                unique_users: g.unique_users,
                time_spent_total_ms: g.time_spent_total_ms,
                time_spent_samples: g.time_spent_samples,
            })
            .collect();
        rows.sort_by(|a, b| (a.window_start_ms, &a.url, &a.country).cmp(&(b.window_start_ms, &b.url, &b.country)));
        rows
    }
}

/// The aggregation, as the host loads it.
pub struct Aggregate;

impl Aggregator for Aggregate {
    const NAME: &'static str = NAME;
    /// None are taken; read as a map only to say where they belong.
    type Settings = BTreeMap<String, String>;
    type Run = Run;

    fn new(settings: BTreeMap<String, String>) -> Result<Self, String> {
        match settings.keys().next() {
            None => Ok(Aggregate),
            Some(key) => Err(format!(
                "unknown setting `{key}`: the aggregate plugin takes no settings; \
                 window_secs, session_timeout_secs and keep_query live in [aggregate]"
            )),
        }
    }

    fn run(&self, params: AggregateParams, from_ms: i64, to_ms: i64) -> Run {
        Run { run: WindowRun::new(params, from_ms, to_ms), bad_row: false }
    }
}

/// A [`WindowRun`], and (in the `poison` build) whether it saw a `/bad-row` click.
pub struct Run {
    run: WindowRun,
    bad_row: bool,
}

impl clickstream_plugin::WindowRun for Run {
    fn push(&mut self, batch: Vec<StoredClick>) -> Result<(), String> {
        if cfg!(feature = "poison") && batch.iter().any(|c| c.url.contains("/trap-aggregate")) {
            panic!("built to trap on /trap-aggregate");
        }
        if cfg!(feature = "poison") && batch.iter().any(|c| c.url.contains("/bad-row")) {
            self.bad_row = true;
        }
        self.run.push(batch).map_err(|e| e.0)
    }

    fn finish(&mut self) -> Vec<AggregateRow> {
        let mut rows = self.run.finish();
        if let (true, Some(first)) = (self.bad_row, rows.first()) {
            // A row for a window the run was not asked about.
            let stray = AggregateRow { window_start_ms: self.run.to_ms, ..first.clone() };
            rows.push(stray);
        }
        rows
    }
}

export_aggregator!(Aggregate, version = VERSION);

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn params() -> AggregateParams {
        AggregateParams { window_ms: MIN, session_timeout_ms: 30 * MIN, keep_query: false }
    }

    fn c(id: &str, user: &str, ts: i64, url: &str) -> StoredClick {
        StoredClick { event_id: id.into(), user_id: user.into(), timestamp_ms: ts, url: url.into(), country: "DE".into() }
    }

    fn sorted(mut clicks: Vec<StoredClick>) -> Vec<StoredClick> {
        clicks.sort_by(|a, b| (&a.user_id, a.timestamp_ms, &a.event_id).cmp(&(&b.user_id, b.timestamp_ms, &b.event_id)));
        clicks
    }

    fn run(from: i64, to: i64, clicks: Vec<StoredClick>) -> Vec<AggregateRow> {
        let mut r = WindowRun::new(params(), from, to);
        r.push(sorted(clicks)).unwrap();
        r.finish()
    }

    fn row<'a>(rows: &'a [AggregateRow], window: i64, url: &str) -> &'a AggregateRow {
        rows.iter()
            .find(|r| r.window_start_ms == window && r.url == url)
            .unwrap_or_else(|| panic!("no row for {window} {url} in {rows:#?}"))
    }

    #[test]
    fn time_spent_crosses_the_window_boundary() {
        // u views /a at 0:50 and /b at 1:10: 20 s on /a, counted in window 0.
        let rows = run(0, MIN, vec![c("1", "u", 50_000, "http://x/a"), c("2", "u", 70_000, "http://x/b")]);
        assert_eq!(rows.len(), 1, "the lookahead click is not counted: {rows:#?}");
        let a = row(&rows, 0, "http://x/a");
        assert_eq!((a.clicks, a.time_spent_total_ms, a.time_spent_samples), (1, 20_000, 1));
    }

    #[test]
    fn a_gap_longer_than_the_session_timeout_gives_no_sample() {
        let rows = run(0, 2 * 3_600_000, vec![c("1", "u", 0, "http://x/a"), c("2", "u", 31 * MIN, "http://x/b")]);
        assert_eq!(row(&rows, 0, "http://x/a").time_spent_samples, 0);
        let exactly = run(0, 2 * 3_600_000, vec![c("1", "u", 0, "http://x/a"), c("2", "u", 30 * MIN, "http://x/b")]);
        assert_eq!(row(&exactly, 0, "http://x/a").time_spent_total_ms, 30 * MIN as u64);
    }

    #[test]
    fn equal_timestamps_are_ordered_by_event_id() {
        let rows = run(0, MIN, vec![c("b", "u", 1_000, "http://x/b"), c("a", "u", 1_000, "http://x/a"), c("c", "u", 4_000, "http://x/c")]);
        // a → b gap 0, b → c gap 3 s.
        let a = row(&rows, 0, "http://x/a");
        assert_eq!((a.time_spent_total_ms, a.time_spent_samples), (0, 1));
        let b = row(&rows, 0, "http://x/b");
        assert_eq!((b.time_spent_total_ms, b.time_spent_samples), (3_000, 1));
        assert_eq!(row(&rows, 0, "http://x/c").time_spent_samples, 0);
    }

    #[test]
    fn a_single_event_user_counts_a_click_and_no_time() {
        let rows = run(0, MIN, vec![c("1", "solo", 5, "http://x/a")]);
        let a = row(&rows, 0, "http://x/a");
        assert_eq!((a.clicks, a.unique_users, a.time_spent_samples), (1, 1, 0));
    }

    #[test]
    fn duplicate_events_are_counted_once() {
        let rows = run(0, MIN, vec![c("1", "u", 5, "http://x/a"), c("1", "u", 5, "http://x/a"), c("2", "u", 9, "http://x/b")]);
        let a = row(&rows, 0, "http://x/a");
        assert_eq!((a.clicks, a.time_spent_total_ms, a.time_spent_samples), (1, 4, 1));
    }

    #[test]
    fn unique_users_are_exact_per_group() {
        let rows = run(
            0,
            MIN,
            vec![
                c("1", "u1", 1, "http://x/a"),
                c("2", "u1", 2, "http://x/a"),
                c("3", "u2", 3, "http://x/a"),
                c("4", "u3", 4, "http://x/b"),
            ],
        );
        let a = row(&rows, 0, "http://x/a");
        assert_eq!((a.clicks, a.unique_users), (3, 2));
        assert_eq!(row(&rows, 0, "http://x/b").unique_users, 1);
    }

    #[test]
    fn arrival_order_does_not_change_the_result() {
        let clicks = vec![
            c("1", "u1", 1_000, "http://x/a"),
            c("2", "u2", 2_000, "http://x/a"),
            c("3", "u1", 61_000, "http://x/b"),
            c("4", "u2", 9_000, "http://x/b"),
            c("5", "u1", 30_000, "http://x/c"),
        ];
        let mut reversed = clicks.clone();
        reversed.reverse();
        let one = run(0, 2 * MIN, clicks);
        let two = run(0, 2 * MIN, reversed);
        assert_eq!(one, two);
        assert_eq!(row(&one, 0, "http://x/a").time_spent_total_ms, 29_000 + 7_000);
    }

    #[test]
    fn unsorted_pushes_are_refused() {
        let mut r = WindowRun::new(params(), 0, MIN);
        r.push(vec![c("2", "u", 5, "http://x/a")]).unwrap();
        let err = r.push(vec![c("1", "u", 4, "http://x/a")]).unwrap_err();
        assert!(err.0.contains("sorted"), "{err:?}");
    }

    #[test]
    fn urls_normalise_scheme_host_query_and_fragment() {
        assert_eq!(normalize_url("HTTPS://Shop.Example/Cart?x=1#top", false), "https://shop.example/Cart");
        assert_eq!(normalize_url("https://shop.example/cart?x=1#top", true), "https://shop.example/cart?x=1");
        assert_eq!(normalize_url("https://shop.example", false), "https://shop.example/");
        assert_eq!(normalize_url("/relative?q", false), "/relative");
    }

    #[test]
    fn windows_align_to_the_epoch_and_unknown_country_is_a_group() {
        assert_eq!(window_start(59_999, MIN), 0);
        assert_eq!(window_start(60_000, MIN), MIN);
        assert_eq!(window_start(-1, MIN), -MIN);
        let mut click = c("1", "u", 5, "http://x/a");
        click.country = String::new();
        let rows = run(0, MIN, vec![click]);
        assert_eq!(rows[0].country, "unknown");
    }
}
