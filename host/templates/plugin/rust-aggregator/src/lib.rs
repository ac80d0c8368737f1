//! {{name}}: a clickstream aggregator (contract {{contract}}, world `aggregator`).
//!
//! The bundled aggregation in a page: per window, normalised URL and
//! country, the clicks, the distinct users and the time on page (the gap to
//! the user's next click, when it is within the session timeout). The host
//! pushes a range's stored clicks sorted by (user, time, event id), plus each
//! user's next click after the range, and stores the rows `finish` returns.
//! Change `count` or `normalize_url`, then run `clickstream plugin build`
//! and `clickstream plugin test`.

use std::collections::{BTreeMap, HashSet};

use clickstream_plugin::settings::NoSettings;
use clickstream_plugin::{export_aggregator, AggregateParams, AggregateRow, Aggregator, StoredClick, WindowRun};

struct Plugin;

impl Aggregator for Plugin {
    const NAME: &'static str = "{{name}}";
    /// The `[plugins.aggregate] settings` table of pipeline.toml: none. A
    /// serde struct with `deny_unknown_fields` takes some, and refuses a
    /// key it does not declare by name.
    type Settings = NoSettings;
    type Run = Run;

    fn new(_settings: NoSettings) -> Result<Self, String> {
        Ok(Plugin)
    }

    fn run(&self, params: AggregateParams, from_ms: i64, to_ms: i64) -> Run {
        Run { params, from_ms, to_ms, groups: BTreeMap::new(), previous: None }
    }
}

#[derive(Default)]
struct Group {
    clicks: u64,
    users: HashSet<String>,
    time_spent_total_ms: u64,
    time_spent_samples: u64,
}

/// One run over the windows of `[from_ms, to_ms)`.
struct Run {
    params: AggregateParams,
    from_ms: i64,
    to_ms: i64,
    groups: BTreeMap<(i64, String, String), Group>,
    /// The user's previous click: its time on page is known once the next arrives.
    previous: Option<StoredClick>,
}

impl WindowRun for Run {
    fn push(&mut self, batch: Vec<StoredClick>) -> Result<(), String> {
        for click in batch {
            if let Some(previous) = self.previous.take() {
                let (before, now) = ((&previous.user_id, previous.timestamp_ms, &previous.event_id), (&click.user_id, click.timestamp_ms, &click.event_id));
                if now == before {
                    // The same click twice: count it once.
                    self.previous = Some(previous);
                    continue;
                }
                if now < before {
                    return Err(format!("clicks must be sorted by (user id, time, event id): {now:?} came after {before:?}"));
                }
                let gap = click.timestamp_ms - previous.timestamp_ms;
                let spent = (previous.user_id == click.user_id && gap <= self.params.session_timeout_ms).then_some(gap);
                self.count(&previous, spent);
            }
            self.previous = Some(click);
        }
        Ok(())
    }

    fn finish(&mut self) -> Vec<AggregateRow> {
        if let Some(last) = self.previous.take() {
            self.count(&last, None);
        }
        std::mem::take(&mut self.groups)
            .into_iter()
            .map(|((window_start_ms, url, country), g)| AggregateRow {
                window_start_ms,
                url,
                country,
                clicks: g.clicks,
                unique_users: g.users.len() as u64,
                time_spent_total_ms: g.time_spent_total_ms,
                time_spent_samples: g.time_spent_samples,
            })
            .collect()
    }
}

impl Run {
    /// Counts a click in its group, with its time on page when known. The
    /// lookahead clicks after the range only give time on page.
    fn count(&mut self, click: &StoredClick, spent_ms: Option<i64>) {
        if !(self.from_ms..self.to_ms).contains(&click.timestamp_ms) {
            return;
        }
        let window = click.timestamp_ms.div_euclid(self.params.window_ms) * self.params.window_ms;
        let country = if click.country.is_empty() { "unknown".to_string() } else { click.country.clone() };
        let group = self.groups.entry((window, normalize_url(&click.url, self.params.keep_query), country)).or_default();
        group.clicks += 1;
        group.users.insert(click.user_id.clone());
        if let Some(spent) = spent_ms {
            group.time_spent_total_ms += spent as u64;
            group.time_spent_samples += 1;
        }
    }
}

/// The URL without its fragment (and without its query unless `keep_query`),
/// with scheme and host in lower case.
fn normalize_url(url: &str, keep_query: bool) -> String {
    let url = url.trim().split('#').next().unwrap_or_default();
    let (base, query) = url.split_once('?').map_or((url, None), |(base, query)| (base, Some(query)));
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
            format!("{}://{}{path}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
        }
        None => base.to_string(),
    };
    if let Some(query) = query.filter(|q| keep_query && !q.is_empty()) {
        out.push('?');
        out.push_str(query);
    }
    out
}

export_aggregator!(Plugin);
