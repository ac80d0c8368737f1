//! `GET /api/aggregates`: the indexed aggregates of a time range, grouped by
//! URL and/or country and merged across windows the only correct way: sums
//! of clicks, and average time on page as total time over total samples
//! (never an average of averages).

use elasticsearch::SearchParts;
use serde_json::{json, Value};

use crate::stages::index::{AggregateDoc, IndexError, Indexer};

/// Most groups one request may ask for.
pub const MAX_LIMIT: usize = 1000;

/// Most windows a series may hold (a day of minute windows).
const MAX_SERIES_WINDOWS: i64 = 1440;

/// Terms-aggregation sizes: large enough to be exact for any realistic
/// number of distinct URLs and countries.
const URL_TERMS: usize = 10_000;
const COUNTRY_TERMS: usize = 300;

/// What to group by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// One group per URL.
    Url,
    /// One group per country.
    Country,
    /// One group per (URL, country).
    UrlCountry,
}

/// A parsed, validated query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatesQuery {
    /// Windows starting at or after this, Unix ms.
    pub from_ms: i64,
    /// Windows starting before this, Unix ms.
    pub to_ms: i64,
    /// Only this URL (normalised, as indexed).
    pub url: Option<String>,
    /// Only this country code.
    pub country: Option<String>,
    /// Grouping.
    pub by: GroupBy,
    /// Most groups returned, by clicks descending.
    pub limit: usize,
    /// Include each group's per-window series.
    pub series: bool,
}

/// One point of a group's series: one window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SeriesPoint {
    /// Start of the window, Unix ms.
    pub window_start_ms: i64,
    /// Clicks in the window.
    pub clicks: u64,
    /// Sum over the group's documents of distinct users per window.
    pub unique_users: u64,
    /// Mean time on page in the window, seconds.
    pub avg_time_spent_s: Option<f64>,
}

/// One group, merged over the range.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AggregateGroup {
    /// The URL, when grouping by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The country, when grouping by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Clicks over the range.
    pub clicks: u64,
    /// Distinct users summed over windows (and countries or URLs merged into
    /// the group): a user active in two windows counts twice. Distinct users
    /// over a range cannot be derived from per-window counts.
    pub unique_users_sum: u64,
    /// Total measured time on page, ms.
    pub time_spent_total_ms: u64,
    /// How many times on page were measured.
    pub time_spent_samples: u64,
    /// `time_spent_total_ms / time_spent_samples` in seconds.
    pub avg_time_spent_s: Option<f64>,
    /// Aggregate documents merged into the group.
    pub documents: u64,
    /// Per-window values, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<SeriesPoint>>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AggregatesResponse {
    /// The range, Unix ms.
    pub from_ms: i64,
    /// End of the range (exclusive), Unix ms.
    pub to_ms: i64,
    /// `url`, `country` or `url,country`.
    pub by: &'static str,
    /// Groups matched before `limit` applied.
    pub total_groups: usize,
    /// The top groups by clicks.
    pub groups: Vec<AggregateGroup>,
}

fn parse_time(name: &str, value: &str) -> Result<i64, String> {
    value
        .parse::<i64>()
        .ok()
        .or_else(|| chrono::DateTime::parse_from_rfc3339(value).ok().map(|t| t.timestamp_millis()))
        .ok_or_else(|| format!("{name}={value:?}: expected epoch milliseconds or an RFC 3339 time such as 2026-11-28T12:00:00Z"))
}

impl AggregatesQuery {
    /// Parses the query string; `now_ms` sets the defaults (the last hour).
    pub fn parse(params: &[(String, String)], now_ms: i64) -> Result<AggregatesQuery, String> {
        let mut query = AggregatesQuery {
            from_ms: now_ms - 3_600_000,
            to_ms: now_ms,
            url: None,
            country: None,
            by: GroupBy::UrlCountry,
            limit: 20,
            series: false,
        };
        let (mut from, mut to) = (None, None);
        for (key, value) in params {
            match key.as_str() {
                "from" => from = Some(parse_time("from", value)?),
                "to" => to = Some(parse_time("to", value)?),
                "url" if !value.is_empty() => query.url = Some(value.clone()),
                "country" if !value.is_empty() => query.country = Some(value.clone()),
                "url" | "country" => return Err(format!("{key} is empty; leave it out to match every {key}")),
                "by" => {
                    query.by = match value.as_str() {
                        "url" => GroupBy::Url,
                        "country" => GroupBy::Country,
                        "url,country" | "country,url" => GroupBy::UrlCountry,
                        other => return Err(format!("by={other:?}: expected url, country or url,country")),
                    }
                }
                "limit" => {
                    query.limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("limit={value:?}: expected a whole number from 1 to {MAX_LIMIT}"))?
                }
                "series" => {
                    query.series = match value.as_str() {
                        "true" | "1" | "" => true,
                        "false" | "0" => false,
                        other => return Err(format!("series={other:?}: expected true or false")),
                    }
                }
                other => {
                    return Err(format!("unknown parameter {other:?}; the parameters are from, to, url, country, by, limit and series"))
                }
            }
        }
        match (from, to) {
            (Some(f), Some(t)) => (query.from_ms, query.to_ms) = (f, t),
            (Some(f), None) => query.from_ms = f,
            // Only an end: the hour before it.
            (None, Some(t)) => (query.from_ms, query.to_ms) = (t - 3_600_000, t),
            (None, None) => {}
        }
        if query.from_ms >= query.to_ms {
            return Err(format!("from ({}) must be before to ({})", query.from_ms, query.to_ms));
        }
        Ok(query)
    }

    fn by_label(&self) -> &'static str {
        match self.by {
            GroupBy::Url => "url",
            GroupBy::Country => "country",
            GroupBy::UrlCountry => "url,country",
        }
    }

    /// The search body: filters, then nested terms aggregations down to the
    /// group (and window, for series), each level carrying the sums.
    pub fn body(&self, window_ms: i64) -> Value {
        let mut filter = vec![json!({ "range": { "window_start_ms": { "gte": self.from_ms, "lt": self.to_ms } } })];
        if let Some(url) = &self.url {
            filter.push(json!({ "term": { "url": url } }));
        }
        if let Some(country) = &self.country {
            filter.push(json!({ "term": { "country": country } }));
        }
        let sums = json!({
            "clicks": { "sum": { "field": "clicks" } },
            "unique_users": { "sum": { "field": "unique_users" } },
            "time_spent_total_ms": { "sum": { "field": "time_spent_total_ms" } },
            "time_spent_samples": { "sum": { "field": "time_spent_samples" } },
        });
        let mut levels: Vec<(&str, usize)> = match self.by {
            GroupBy::Url => vec![("url", URL_TERMS)],
            GroupBy::Country => vec![("country", COUNTRY_TERMS)],
            GroupBy::UrlCountry => vec![("url", URL_TERMS), ("country", COUNTRY_TERMS)],
        };
        if self.series {
            let windows = ((self.to_ms - self.from_ms) / window_ms.max(1) + 1).min(MAX_SERIES_WINDOWS) as usize;
            levels.push(("window_start_ms", windows));
        }
        // Built inside out: the innermost level has only the sums.
        let mut aggs = sums.clone();
        for (field, size) in levels.iter().rev() {
            let mut level = json!({ "terms": { "field": field, "size": size }, "aggs": aggs });
            if *field == "window_start_ms" {
                level["terms"]["order"] = json!({ "_key": "asc" });
            }
            aggs = sums.clone();
            aggs[*field] = level;
        }
        json!({ "size": 0, "track_total_hits": false, "query": { "bool": { "filter": filter } }, "aggs": aggs })
    }
}

fn sum(bucket: &Value, name: &str) -> u64 {
    bucket[name]["value"].as_f64().unwrap_or(0.0).round() as u64
}

fn key(bucket: &Value) -> String {
    match &bucket["key"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn group_from(bucket: &Value, url: Option<String>, country: Option<String>, series: bool) -> AggregateGroup {
    let (total, samples) = (sum(bucket, "time_spent_total_ms"), sum(bucket, "time_spent_samples"));
    let series = series.then(|| {
        let mut points: Vec<SeriesPoint> = bucket["window_start_ms"]["buckets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|w| SeriesPoint {
                window_start_ms: w["key"].as_i64().unwrap_or_default(),
                clicks: sum(w, "clicks"),
                unique_users: sum(w, "unique_users"),
                avg_time_spent_s: AggregateDoc::average_time_spent_s(sum(w, "time_spent_total_ms"), sum(w, "time_spent_samples")),
            })
            .collect();
        points.sort_by_key(|p| p.window_start_ms);
        points
    });
    AggregateGroup {
        url,
        country,
        clicks: sum(bucket, "clicks"),
        unique_users_sum: sum(bucket, "unique_users"),
        time_spent_total_ms: total,
        time_spent_samples: samples,
        avg_time_spent_s: AggregateDoc::average_time_spent_s(total, samples),
        documents: bucket["doc_count"].as_u64().unwrap_or_default(),
        series,
    }
}

fn buckets<'a>(aggs: &'a Value, field: &str) -> &'a [Value] {
    aggs[field]["buckets"].as_array().map(Vec::as_slice).unwrap_or_default()
}

/// Turns the aggregation answer into groups, top `limit` by clicks (ties by
/// key, so answers are stable).
pub fn groups_of(query: &AggregatesQuery, aggregations: &Value) -> (usize, Vec<AggregateGroup>) {
    let mut groups: Vec<AggregateGroup> = match query.by {
        GroupBy::Url => buckets(aggregations, "url").iter().map(|b| group_from(b, Some(key(b)), None, query.series)).collect(),
        GroupBy::Country => buckets(aggregations, "country").iter().map(|b| group_from(b, None, Some(key(b)), query.series)).collect(),
        GroupBy::UrlCountry => buckets(aggregations, "url")
            .iter()
            .flat_map(|u| buckets(u, "country").iter().map(move |c| group_from(c, Some(key(u)), Some(key(c)), query.series)))
            .collect(),
    };
    groups.sort_by(|a, b| b.clicks.cmp(&a.clicks).then_with(|| (&a.url, &a.country).cmp(&(&b.url, &b.country))));
    let total = groups.len();
    groups.truncate(query.limit);
    (total, groups)
}

/// Runs the query against every aggregate index.
pub async fn run(indexer: &Indexer, query: &AggregatesQuery, window_ms: i64) -> Result<AggregatesResponse, IndexError> {
    let targets = indexer.search_indices();
    let response = indexer
        .client()
        .search(SearchParts::Index(&targets))
        .ignore_unavailable(true)
        .allow_no_indices(true)
        .body(query.body(window_ms))
        .send()
        .await;
    let body = indexer.json(response, "_search").await?;
    let (total_groups, groups) = groups_of(query, &body["aggregations"]);
    Ok(AggregatesResponse { from_ms: query.from_ms, to_ms: query.to_ms, by: query.by_label(), total_groups, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_to_the_last_hour_by_url_and_country() {
        let q = AggregatesQuery::parse(&[], 10_000_000).unwrap();
        assert_eq!((q.from_ms, q.to_ms, q.by, q.limit, q.series), (6_400_000, 10_000_000, GroupBy::UrlCountry, 20, false));
    }

    #[test]
    fn bad_parameters_say_what_is_wrong() {
        let err = |p: &[(&str, &str)]| AggregatesQuery::parse(&params(p), 10_000_000).unwrap_err();
        assert!(err(&[("from", "yesterday")]).contains("from=\"yesterday\""));
        assert!(err(&[("limit", "0")]).contains("limit"));
        assert!(err(&[("limit", "5000")]).contains("1 to 1000"));
        assert!(err(&[("by", "city")]).contains("by=\"city\""));
        assert!(err(&[("from", "200"), ("to", "100")]).contains("before"));
        assert!(err(&[("colour", "red")]).contains("unknown parameter"));
        assert!(err(&[("url", "")]).contains("empty"));
    }

    #[test]
    fn rfc3339_and_epoch_times_both_parse() {
        let q = AggregatesQuery::parse(&params(&[("from", "2026-11-28T00:00:00Z"), ("to", "1795910400000")]), 0).unwrap();
        assert_eq!(q.from_ms, 1_795_824_000_000);
        assert_eq!(q.to_ms, 1_795_910_400_000);
    }

    #[test]
    fn merges_sums_and_ranks_groups_by_clicks() {
        let q = AggregatesQuery::parse(&params(&[("by", "url,country"), ("limit", "2"), ("series", "true")]), 10_000_000).unwrap();
        let bucket = |k: &str, clicks: f64, total: f64, samples: f64, inner: Value| {
            let mut b = json!({ "key": k, "doc_count": 2, "clicks": { "value": clicks }, "unique_users": { "value": 3.0 },
                                "time_spent_total_ms": { "value": total }, "time_spent_samples": { "value": samples } });
            if let Value::Object(m) = inner {
                b.as_object_mut().unwrap().extend(m);
            }
            b
        };
        let window = |start: i64, clicks: f64| {
            json!({ "key": start, "doc_count": 1, "clicks": { "value": clicks }, "unique_users": { "value": 1.0 },
            "time_spent_total_ms": { "value": 0.0 }, "time_spent_samples": { "value": 0.0 } })
        };
        let windows = json!({ "window_start_ms": { "buckets": [window(120_000, 1.0), window(60_000, 2.0)] } });
        let aggs = json!({ "url": { "buckets": [
            bucket("/a", 10.0, 0.0, 0.0, json!({ "country": { "buckets": [
                bucket("GB", 3.0, 9000.0, 3.0, windows.clone()),
                bucket("US", 7.0, 1000.0, 4.0, windows.clone()),
            ]}})),
            bucket("/b", 5.0, 0.0, 0.0, json!({ "country": { "buckets": [ bucket("GB", 5.0, 0.0, 0.0, windows) ]}})),
        ]}});
        let (total, groups) = groups_of(&q, &aggs);
        assert_eq!(total, 3);
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].url.as_deref(), groups[0].country.as_deref(), groups[0].clicks), (Some("/a"), Some("US"), 7));
        assert_eq!(groups[0].avg_time_spent_s, Some(0.25));
        assert_eq!((groups[1].url.as_deref(), groups[1].clicks), (Some("/b"), 5));
        let series = groups[0].series.as_ref().unwrap();
        assert_eq!(series.iter().map(|p| p.window_start_ms).collect::<Vec<_>>(), vec![60_000, 120_000]);
    }

    #[test]
    fn the_search_body_nests_group_levels_then_windows() {
        let q = AggregatesQuery::parse(&params(&[("by", "url,country"), ("series", "true"), ("url", "/a")]), 10_000_000).unwrap();
        let body = q.body(60_000);
        assert_eq!(body["aggs"]["url"]["terms"]["field"], "url");
        assert_eq!(body["aggs"]["url"]["aggs"]["country"]["terms"]["field"], "country");
        assert_eq!(body["aggs"]["url"]["aggs"]["country"]["aggs"]["window_start_ms"]["terms"]["size"], 61);
        assert!(body["aggs"]["url"]["aggs"]["country"]["aggs"]["clicks"]["sum"].is_object());
        assert_eq!(body["query"]["bool"]["filter"][1]["term"]["url"], "/a");
    }
}
