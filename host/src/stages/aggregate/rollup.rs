//! `[[rollups]]`: what a user declares to aggregate, checked by the host
//! before any plugin sees it (docs/design/rollups.md). The host hands a
//! checked [`RollupSpec`] to the aggregator; a guest never parses
//! pipeline.toml. Not read from pipeline.toml yet: it lands with the
//! aggregator contract that computes it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use crate::section::{invalid, ConfigError};
use crate::stages::record::limits::ATTRIBUTE_KEY_MAX_BYTES;

/// One `[[rollups]]` table, as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// Names its table, index and API path: lowercase letters, digits and
    /// `_`, starting with a letter, at most 40 characters.
    pub name: String,
    /// Tumbling window sizes such as `"1m"`, `"1h"`, `"1d"`, each its own
    /// set of windows, aligned to the Unix epoch.
    #[serde(default = "default_windows")]
    pub windows: Vec<String>,
    /// What a group is keyed by: core and enrichment fields, `attributes.NAME`.
    pub dimensions: Vec<String>,
    /// What is computed per group.
    pub measures: Vec<String>,
    /// How unique users are counted; default `exact` for windows up to an
    /// hour and `hll` above.
    #[serde(default)]
    pub unique_users: Option<UniqueMode>,
    /// Groups per window; the rest fold into one `(other)` group, counted.
    #[serde(default = "default_max_groups")]
    pub max_groups: u32,
    /// Equality filters, all of which an event must pass.
    #[serde(default, rename = "where")]
    pub filter: BTreeMap<String, toml::Value>,
}

fn default_windows() -> Vec<String> {
    vec!["1m".into()]
}

const fn default_max_groups() -> u32 {
    10_000
}

/// How unique users are counted in a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UniqueMode {
    /// Every user id kept: exact, memory grows with the users.
    Exact,
    /// A HyperLogLog sketch: bounded memory, mergeable over any range.
    Hll,
}

/// A field of a stored event a rollup groups or filters by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Field {
    /// The normalised URL, as today's aggregates key it.
    Url,
    /// The URL's host.
    UrlHost,
    /// The URL's path.
    UrlPath,
    /// The referrer, as stored.
    Referrer,
    /// From GeoIP.
    Country,
    /// From GeoIP.
    City,
    /// From the user agent.
    Browser,
    /// From the user agent.
    Os,
    /// From the user agent: desktop, mobile, tablet, bot, unknown.
    Device,
    /// An attribute a transform set (string, integer or boolean); missing is `(none)`.
    Attribute(String),
}

/// The fields by name, as pipeline.toml writes them (and errors list them).
const FIELDS: [(&str, Field); 9] = [
    ("url", Field::Url),
    ("url_host", Field::UrlHost),
    ("url_path", Field::UrlPath),
    ("referrer", Field::Referrer),
    ("country", Field::Country),
    ("city", Field::City),
    ("browser", Field::Browser),
    ("os", Field::Os),
    ("device", Field::Device),
];

impl Field {
    /// A field by its name, `attributes.NAME` included.
    pub fn parse(name: &str) -> Option<Field> {
        if let Some(attribute) = name.strip_prefix("attributes.") {
            let valid = !attribute.is_empty() && attribute.len() <= ATTRIBUTE_KEY_MAX_BYTES && !attribute.contains('\0');
            return valid.then(|| Field::Attribute(attribute.to_string()));
        }
        FIELDS.iter().find(|(n, _)| *n == name).map(|(_, field)| field.clone())
    }
}

/// A statistic of time on page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    /// The mean.
    Avg,
    /// The median.
    P50,
    /// The 90th percentile.
    P90,
}

/// What a rollup computes per group (docs/aggregates.md defines today's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Measure {
    /// The group's events (`events`; `clicks` is today's name for it).
    Events,
    /// Distinct user ids.
    UniqueUsers,
    /// Sessions: a user's events with no gap over the session timeout.
    Sessions,
    /// Sessions of one event over sessions.
    BounceRate,
    /// Time on page, sessionised as today.
    TimeOnPage(Stat),
    /// Over a numeric attribute.
    Sum(String),
    /// Over a numeric attribute.
    Avg(String),
    /// Over a numeric attribute.
    Min(String),
    /// Over a numeric attribute.
    Max(String),
}

impl Measure {
    /// A measure by its name, or why the name is refused.
    pub fn parse(name: &str) -> Result<Measure, String> {
        let simple = match name {
            "events" | "clicks" => Some(Measure::Events),
            "unique_users" => Some(Measure::UniqueUsers),
            "sessions" => Some(Measure::Sessions),
            "bounce_rate" => Some(Measure::BounceRate),
            "time_on_page_avg" => Some(Measure::TimeOnPage(Stat::Avg)),
            "time_on_page_p50" => Some(Measure::TimeOnPage(Stat::P50)),
            "time_on_page_p90" => Some(Measure::TimeOnPage(Stat::P90)),
            _ => None,
        };
        if let Some(measure) = simple {
            return Ok(measure);
        }
        let Some((op, field)) = name.split_once(':') else { return Err(format!("is not a measure: {name:?}")) };
        let of: fn(String) -> Measure = match op {
            "sum" => Measure::Sum,
            "avg" => Measure::Avg,
            "min" => Measure::Min,
            "max" => Measure::Max,
            _ => return Err(format!("has an unknown operation {op:?} in {name:?}")),
        };
        match Field::parse(field) {
            Some(Field::Attribute(attribute)) => Ok(of(attribute)),
            Some(_) => Err(format!("{name:?} is over {field:?}, which is not numeric")),
            None => Err(format!("{name:?} is over an unknown field {field:?}")),
        }
    }
}

/// A value an equality filter compares with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterValue {
    /// Text.
    Text(String),
    /// A whole number.
    Integer(i64),
    /// `true` or `false`.
    Flag(bool),
}

/// One window set of a rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its size.
    pub secs: u64,
    /// How its unique users are counted.
    pub unique_users: UniqueMode,
}

/// A rollup as the host checked it.
#[derive(Debug, Clone, PartialEq)]
pub struct RollupSpec {
    /// Its name.
    pub name: String,
    /// Its window sets, smallest first; each a multiple of the one before.
    pub windows: Vec<Window>,
    /// What a group is keyed by, in the order written.
    pub dimensions: Vec<Field>,
    /// What is computed per group, in the order written.
    pub measures: Vec<Measure>,
    /// Groups per window before the rest fold into `(other)`.
    pub max_groups: u32,
    /// Filters an event must pass, all of them.
    pub filter: Vec<(Field, FilterValue)>,
}

const DAY_SECS: u64 = 86_400;

/// A window size such as `30s`, `5m`, `1h` or `1d`, in seconds.
fn window_secs(text: &str) -> Option<u64> {
    let unit = match text.chars().last()? {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => DAY_SECS,
        _ => return None,
    };
    let count: u64 = text[..text.len() - 1].parse().ok().filter(|&n| n > 0)?;
    count.checked_mul(unit)
}

impl RollupConfig {
    /// Checks the rollup at `rollups[index]`, naming the key of the first problem.
    pub fn validate(&self, file: &Path, index: usize) -> Result<RollupSpec, ConfigError> {
        let key = |field: &str| format!("rollups[{index}].{field}");
        let name_ok = self.name.len() <= 40
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !name_ok {
            return Err(invalid(
                file,
                &key("name"),
                format!("is {:?}", self.name),
                "use lowercase letters, digits and `_`, starting with a letter, at most 40 characters (it names a table)",
            ));
        }
        let windows = self.windows(file, &key("windows"))?;
        if self.dimensions.is_empty() {
            return Err(invalid(file, &key("dimensions"), "is empty".into(), "name at least one field to group by, e.g. [\"url\"]"));
        }
        let fields = || format!("use one of {}, or attributes.NAME", FIELDS.map(|(n, _)| n).join(", "));
        let mut dimensions = Vec::new();
        for (i, name) in self.dimensions.iter().enumerate() {
            let key = key(&format!("dimensions[{i}]"));
            let field = Field::parse(name).ok_or_else(|| invalid(file, &key, format!("is not a field: {name:?}"), &fields()))?;
            if dimensions.contains(&field) {
                return Err(invalid(file, &key, format!("repeats {name:?}"), "name each field once"));
            }
            dimensions.push(field);
        }
        if self.measures.is_empty() {
            return Err(invalid(file, &key("measures"), "is empty".into(), "name at least one measure, e.g. [\"events\"]"));
        }
        let mut measures = Vec::new();
        for (i, name) in self.measures.iter().enumerate() {
            let key = key(&format!("measures[{i}]"));
            let measure = Measure::parse(name).map_err(|problem| {
                invalid(
                    file,
                    &key,
                    problem,
                    "use events, unique_users, sessions, bounce_rate, time_on_page_avg|p50|p90, or sum|avg|min|max:attributes.NAME",
                )
            })?;
            if measures.contains(&measure) {
                return Err(invalid(file, &key, format!("repeats {name:?}"), "name each measure once"));
            }
            measures.push(measure);
        }
        if !(1..=1_000_000).contains(&self.max_groups) {
            return Err(invalid(file, &key("max_groups"), format!("is {}", self.max_groups), "use 1 to 1000000 (default 10000)"));
        }
        let mut filter = Vec::new();
        for (name, value) in &self.filter {
            let key = key(&format!("where.{name}"));
            let field = Field::parse(name).ok_or_else(|| invalid(file, &key, format!("is not a field: {name:?}"), &fields()))?;
            let value = match value {
                toml::Value::String(s) => FilterValue::Text(s.clone()),
                toml::Value::Integer(n) => FilterValue::Integer(*n),
                toml::Value::Boolean(b) => FilterValue::Flag(*b),
                other => {
                    return Err(invalid(file, &key, format!("is a {}", other.type_str()), "compare with a string, an integer or a boolean"))
                }
            };
            filter.push((field, value));
        }
        Ok(RollupSpec { name: self.name.clone(), windows, dimensions, measures, max_groups: self.max_groups, filter })
    }

    /// The window sets, smallest first, each with its unique-user mode.
    fn windows(&self, file: &Path, key: &str) -> Result<Vec<Window>, ConfigError> {
        if self.windows.is_empty() {
            return Err(invalid(file, key, "is empty".into(), "name at least one window size, e.g. [\"1m\"]"));
        }
        let mut sizes = Vec::new();
        for (i, text) in self.windows.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let secs = window_secs(text).ok_or_else(|| {
                invalid(file, &key, format!("is not a window size: {text:?}"), "write a whole number and s, m, h or d, e.g. \"1m\"")
            })?;
            if secs > DAY_SECS || !DAY_SECS.is_multiple_of(secs) {
                return Err(invalid(
                    file,
                    &key,
                    format!("is {text:?}"),
                    "use a size that divides a day (1s to 1d), so windows align to days",
                ));
            }
            if sizes.contains(&secs) {
                return Err(invalid(file, &key, format!("repeats {text:?}"), "name each window size once"));
            }
            sizes.push(secs);
        }
        sizes.sort_unstable();
        if let Some(pair) = sizes.windows(2).find(|pair| !pair[1].is_multiple_of(pair[0])) {
            return Err(invalid(
                file,
                key,
                format!("has {} s and {} s, which do not nest", pair[0], pair[1]),
                "make each size a multiple of the next smaller one (e.g. 1m, 1h, 1d), so a range can be answered from the coarsest windows",
            ));
        }
        let mode = |secs: u64| self.unique_users.unwrap_or(if secs <= 3600 { UniqueMode::Exact } else { UniqueMode::Hll });
        Ok(sizes.into_iter().map(|secs| Window { secs, unique_users: mode(secs) }).collect())
    }
}

/// Checks every rollup, and that no name is used twice.
pub fn validate_all(file: &Path, rollups: &[RollupConfig]) -> Result<Vec<RollupSpec>, ConfigError> {
    let mut names = HashSet::new();
    rollups
        .iter()
        .enumerate()
        .map(|(i, rollup)| {
            let spec = rollup.validate(file, i)?;
            if !names.insert(spec.name.clone()) {
                return Err(invalid(
                    file,
                    &format!("rollups[{i}].name"),
                    format!("repeats {:?}", spec.name),
                    "give each rollup its own name",
                ));
            }
            Ok(spec)
        })
        .collect()
}

/// Today's aggregation as a rollup: `pages`, URL × country per window of
/// `window_secs`, with clicks, exact unique users and time on page.
pub fn pages(window_secs: u64) -> RollupSpec {
    RollupSpec {
        name: "pages".into(),
        windows: vec![Window { secs: window_secs, unique_users: UniqueMode::Exact }],
        dimensions: vec![Field::Url, Field::Country],
        measures: vec![Measure::Events, Measure::UniqueUsers, Measure::TimeOnPage(Stat::Avg)],
        max_groups: u32::MAX,
        filter: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<RollupSpec>, String> {
        #[derive(Deserialize)]
        struct File {
            rollups: Vec<RollupConfig>,
        }
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        validate_all(Path::new("pipeline.toml"), &file.rollups).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issues_example_rollup_is_accepted_with_each_window_counting_uniques_its_way() {
        let specs = parse(
            r#"
            [[rollups]]
            name = "campaigns"
            windows = ["1d", "1m", "1h"]
            dimensions = ["attributes.utm_campaign", "attributes.utm_source", "device", "country"]
            measures = ["events", "unique_users", "sessions", "bounce_rate", "time_on_page_avg", "time_on_page_p90", "sum:attributes.revenue"]
            max_groups = 10000
            where = { "attributes.kind" = "page_view" }
            "#,
        )
        .unwrap();
        let spec = &specs[0];
        assert_eq!(
            spec.windows.iter().map(|w| (w.secs, w.unique_users)).collect::<Vec<_>>(),
            [(60, UniqueMode::Exact), (3600, UniqueMode::Exact), (86_400, UniqueMode::Hll)]
        );
        assert_eq!(spec.dimensions[0], Field::Attribute("utm_campaign".into()));
        assert_eq!(spec.dimensions[2], Field::Device);
        assert_eq!(spec.measures[5], Measure::TimeOnPage(Stat::P90));
        assert_eq!(spec.measures[6], Measure::Sum("revenue".into()));
        assert_eq!(spec.filter, [(Field::Attribute("kind".into()), FilterValue::Text("page_view".into()))]);
    }

    #[test]
    fn a_bad_rollup_is_refused_with_the_key_named() {
        let cases = [
            (r#"name = "Campaigns""#, "`rollups[0].name` is \"Campaigns\""),
            ("dimensions = []", "`rollups[0].dimensions` is empty"),
            (r#"dimensions = ["devise"]"#, "`rollups[0].dimensions[0]` is not a field: \"devise\""),
            (r#"dimensions = ["url", "url"]"#, "`rollups[0].dimensions[1]` repeats"),
            ("measures = []", "`rollups[0].measures` is empty"),
            (r#"measures = ["sum:url"]"#, "not numeric"),
            (r#"measures = ["median:attributes.x"]"#, "unknown operation"),
            (r#"measures = ["clicks", "events"]"#, "`rollups[0].measures[1]` repeats"),
            (r#"windows = ["7m"]"#, "divides a day"),
            (r#"windows = ["40m", "1h"]"#, "do not nest"),
            (r#"windows = ["1 m"]"#, "is not a window size"),
            (r#"where = { "attributes.n" = 1.5 }"#, "`rollups[0].where.attributes.n` is a float"),
            ("max_groups = 0", "`rollups[0].max_groups` is 0"),
        ];
        for (line, expected) in cases {
            let mut text = format!("[[rollups]]\n{line}\n");
            for (key, default) in [("name", r#""c""#), ("dimensions", r#"["url"]"#), ("measures", r#"["events"]"#)] {
                if !line.starts_with(key) {
                    text.push_str(&format!("{key} = {default}\n"));
                }
            }
            let error = parse(&text).expect_err(line);
            assert!(error.contains(expected), "{line}: {error}");
        }
    }

    #[test]
    fn a_name_used_twice_and_an_unknown_key_are_refused() {
        let twice = "[[rollups]]\nname = \"a\"\ndimensions = [\"url\"]\nmeasures = [\"events\"]\n".repeat(2);
        assert!(parse(&twice).unwrap_err().contains("`rollups[1].name` repeats \"a\""));
        let typo = "[[rollups]]\nname = \"a\"\ndimension = [\"url\"]\nmeasures = [\"events\"]\n";
        assert!(parse(typo).unwrap_err().contains("unknown field `dimension`"));
    }

    #[test]
    fn todays_aggregation_is_the_pages_rollup() {
        let written = parse("[[rollups]]\nname = \"pages\"\ndimensions = [\"url\", \"country\"]\nmeasures = [\"clicks\", \"unique_users\", \"time_on_page_avg\"]\n").unwrap();
        let pages = pages(60);
        assert_eq!(
            (&written[0].dimensions, &written[0].measures, &written[0].windows),
            (&pages.dimensions, &pages.measures, &pages.windows)
        );
    }
}
