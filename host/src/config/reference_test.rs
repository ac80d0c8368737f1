//! docs/configuration.md held to the structs `pipeline.toml` is read into.
//!
//! The keys come from the structs themselves, not from a list kept here: a
//! deserializer that answers every struct with all of its fields (serde's
//! derive hands it their names) walks `PipelineConfig` and records each
//! key's path. A field added to a section without a row in the book fails
//! the test, as does a row naming a key no section accepts. Each documented
//! default is checked by writing it into a minimal file: the configuration
//! read must equal the one read without it.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::de::value::StrDeserializer;
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::PipelineConfig;

/// The smallest file the loader takes: every key in it is required.
const MINIMAL: &str = r#"
[source]

[[transforms]]
name = "t"
path = "t.wasm"

[plugins.aggregate]
path = "a.wasm"
"#;

/// `[plugins.enrich]`, the form before chains, is a transform's table: its
/// keys are documented once, as `transforms.*`, and the table by its own row.
const ALIASES: &[(&str, &str)] = &[("plugins.enrich.", "transforms.")];

/// What `Live?` may say (see the page's legend).
const LIVE: &[&str] = &["live", "swap", "restart", "refused"];

#[test]
fn every_config_key_is_documented_with_its_default_and_every_documented_key_exists() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")).unwrap();
    let problems = check(&page);
    assert!(problems.is_empty(), "docs/configuration.md disagrees with the configuration structs:\n  {}", problems.join("\n  "));
}

/// The test's own checks: a row taken out or a key made up must fail it.
#[test]
fn a_missing_row_or_a_made_up_key_or_a_wrong_default_is_caught() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")).unwrap();
    let without: String = page.lines().filter(|l| !l.starts_with("| `aggregate.clock_skew_secs`")).map(|l| format!("{l}\n")).collect();
    assert!(check(&without).iter().any(|p| p.contains("`aggregate.clock_skew_secs`") && p.contains("no row")), "{:?}", check(&without));
    let bogus = page.replace("| `index.url` |", "| `index.timeout_ms` | `30000` | restart | made up |\n| `index.url` |");
    assert!(check(&bogus).iter().any(|p| p.contains("`index.timeout_ms`") && p.contains("accept no such key")), "{:?}", check(&bogus));
    let wrong = page.replace("| `source.batch_size` | `4096` |", "| `source.batch_size` | `2048` |");
    assert!(check(&wrong).iter().any(|p| p.contains("`source.batch_size`") && p.contains("2048")), "{:?}", check(&wrong));
}

/// Every disagreement between `page` and the structs, one line each.
fn check(page: &str) -> Vec<String> {
    let accepted = accepted_keys();
    let rows = match rows(page) {
        Ok(rows) => rows,
        Err(problem) => return vec![problem],
    };
    let mut problems = Vec::new();
    let documented: BTreeSet<&str> = rows.iter().flat_map(|r| r.keys.iter().map(String::as_str)).collect();

    // Every key the structs accept has a row (an alias's keys, through the
    // keys they stand for and the aliased table's own row).
    for (key, node) in &accepted {
        if node.table {
            continue;
        }
        let (row_key, table) = match ALIASES.iter().find_map(|(alias, of)| Some((key.strip_prefix(alias)?, alias, of))) {
            Some((rest, alias, of)) => (format!("{of}{rest}"), Some(alias.trim_end_matches('.'))),
            None => (key.clone(), None),
        };
        if !documented.contains(row_key.as_str()) {
            problems.push(format!("`{row_key}` is accepted by the structs but has no row"));
        }
        if let Some(table) = table.filter(|t| !documented.contains(t)) {
            problems.push(format!("`{table}` (holding `{key}`) has no row"));
        }
    }

    let base = parse(MINIMAL).expect("the minimal file loads");
    let required: BTreeSet<String> = leaf_paths(&MINIMAL.parse::<toml::Table>().unwrap());
    for row in &rows {
        if !LIVE.contains(&row.live.as_str()) {
            problems.push(format!("line {}: Live? is {:?}; use one of {LIVE:?}", row.line, row.live));
        }
        for key in &row.keys {
            let Some(node) = accepted.get(key) else {
                problems.push(format!("line {}: `{key}` is documented but the structs accept no such key", row.line));
                continue;
            };
            if let Err(problem) = check_default(key, node, &row.default, &base, &required) {
                problems.push(format!("line {}: `{key}`: {problem}", row.line));
            }
        }
    }
    for key in &required {
        if !rows.iter().any(|r| r.keys.contains(key) && r.default == "required") {
            problems.push(format!("`{key}` is required (the loader refuses a file without it) but not documented as `required`"));
        }
    }
    problems
}

/// Checks one key's documented default: `required`, `none` (an optional
/// key left unset), or a TOML value that, written into the minimal file,
/// changes nothing.
fn check_default(key: &str, node: &Node, default: &str, base: &PipelineConfig, required: &BTreeSet<String>) -> Result<(), String> {
    if default == "required" {
        if !required.contains(key) {
            return Err("documented as required, but the minimal file loads without it".into());
        }
        let mut file: toml::Table = MINIMAL.parse().unwrap();
        remove(&mut file, key);
        return match parse(&toml::to_string(&file).unwrap()) {
            Ok(_) => Err("documented as required, but a file without it loads".into()),
            Err(_) => Ok(()),
        };
    }
    if default.starts_with("none") {
        return if node.optional { Ok(()) } else { Err("documented as none, but the key always has a value".into()) };
    }
    let Some(literal) = default.strip_prefix('`').and_then(|d| d.split('`').next()) else {
        return Err(format!("the default {default:?} is none of `required`, none or a TOML value in backquotes"));
    };
    let value = format!("value = {literal}").parse::<toml::Table>().map_err(|e| format!("the default `{literal}` is not TOML: {e}"))?;
    let mut file: toml::Table = MINIMAL.parse().unwrap();
    set(&mut file, key, value["value"].clone());
    match parse(&toml::to_string(&file).unwrap()) {
        Ok(config) if config == *base => Ok(()),
        Ok(_) => Err(format!("the default is not `{literal}`: setting it changes the configuration")),
        Err(e) => Err(format!("setting the documented default `{literal}` is refused: {e}")),
    }
}

fn parse(text: &str) -> Result<PipelineConfig, super::ConfigError> {
    PipelineConfig::parse(text, Path::new("/etc/cs/pipeline.toml"), |_| None)
}

/// The table (or the first of an array of tables) holding `key`'s last part.
fn parent<'a>(file: &'a mut toml::Table, key: &'a str) -> (&'a mut toml::Table, &'a str) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap();
    let mut table = file;
    for part in parts {
        let item = table.entry(part).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match item {
            toml::Value::Table(t) => t,
            toml::Value::Array(a) => a[0].as_table_mut().unwrap(),
            other => panic!("{key}: {other} is no table"),
        };
    }
    (table, last)
}

fn set(file: &mut toml::Table, key: &str, value: toml::Value) {
    let (table, last) = parent(file, key);
    table.insert(last.to_string(), value);
}

fn remove(file: &mut toml::Table, key: &str) {
    let (table, last) = parent(file, key);
    table.remove(last);
}

/// The dotted paths of a file's values (an array of tables by its first).
fn leaf_paths(table: &toml::Table) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for (key, value) in table {
        match value {
            toml::Value::Table(t) => paths.extend(leaf_paths(t).into_iter().map(|p| format!("{key}.{p}"))),
            toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
                paths.extend(leaf_paths(a[0].as_table().unwrap()).into_iter().map(|p| format!("{key}.{p}")));
            }
            _ => {
                paths.insert(key.clone());
            }
        }
    }
    paths
}

/// One row of a configuration table: `| key | default | live? | meaning |`.
#[derive(Debug)]
struct Row {
    line: usize,
    /// Every backquoted name in the first cell.
    keys: Vec<String>,
    /// The second cell, trimmed.
    default: String,
    /// The third cell, trimmed.
    live: String,
}

/// The rows of every table whose header is `key | default | live? | meaning`.
fn rows(page: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    let mut in_table = false;
    for (i, line) in page.lines().enumerate() {
        let Some(inner) = line.trim().strip_prefix('|').and_then(|l| l.strip_suffix('|')) else {
            in_table = false;
            continue;
        };
        let cells: Vec<String> = inner.replace("\\|", "\u{0}").split('|').map(|c| c.trim().replace('\u{0}', "|")).collect();
        if cells.iter().all(|c| c.chars().all(|ch| matches!(ch, '-' | ':'))) {
            continue;
        }
        if cells.first().is_some_and(|c| c.eq_ignore_ascii_case("key")) {
            let header: Vec<String> = cells.iter().map(|c| c.to_lowercase()).collect();
            if header != ["key", "default", "live?", "meaning"] {
                return Err(format!("line {}: a table of keys has the columns {cells:?}; use key | default | live? | meaning", i + 1));
            }
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if cells.len() != 4 {
            return Err(format!("line {}: {} cells; a row has key | default | live? | meaning", i + 1, cells.len()));
        }
        let keys: Vec<String> = cells[0].split('`').skip(1).step_by(2).map(str::to_string).collect();
        if keys.is_empty() || keys.iter().any(|k| k.contains(char::is_whitespace)) {
            return Err(format!("line {}: the key cell {:?} holds no backquoted key", i + 1, cells[0]));
        }
        rows.push(Row { line: i + 1, keys, default: cells[1].clone(), live: cells[2].clone() });
    }
    if rows.is_empty() {
        return Err("no table with the columns key | default | live? | meaning".into());
    }
    Ok(rows)
}

/// A key the structs accept.
#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// A section or sub-table (its keys are recorded on their own).
    table: bool,
    /// Unset unless the file sets it (an `Option`).
    optional: bool,
}

/// Every dotted key path `PipelineConfig` accepts, from its derive.
fn accepted_keys() -> BTreeMap<String, Node> {
    let keys = RefCell::new(BTreeMap::new());
    if let Err(e) = PipelineConfig::deserialize(Walker { path: String::new(), optional: false, keys: &keys }) {
        panic!("cannot list the configuration's keys: {e}");
    }
    keys.into_inner()
}

/// A deserializer that visits every field of every struct once, recording
/// its path, and gives each value the plainest one its type takes. A type it
/// cannot walk (one deserialized from any value, a tuple) is an error that
/// names the key, so such a field cannot slip through undocumented.
struct Walker<'a> {
    path: String,
    optional: bool,
    keys: &'a RefCell<BTreeMap<String, Node>>,
}

impl Walker<'_> {
    fn record(&self, table: bool) {
        if self.path.is_empty() {
            return;
        }
        let mut keys = self.keys.borrow_mut();
        let node = keys.entry(self.path.clone()).or_default();
        node.table |= table;
        node.optional |= self.optional;
    }

    fn unsupported<T>(&self, what: &str) -> Result<T, WalkError> {
        Err(WalkError(format!("`{}`: a {what} cannot be walked; document its keys and extend this walker", self.path)))
    }
}

#[derive(Debug)]
struct WalkError(String);

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WalkError {}

impl de::Error for WalkError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        WalkError(msg.to_string())
    }
}

macro_rules! leaf {
    ($de:lifetime; $($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<$de>>(self, visitor: V) -> Result<V::Value, WalkError> {
            self.record(false);
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = WalkError;

    leaf! { 'de;
        deserialize_bool => visit_bool(false),
        deserialize_i8 => visit_u64(0), deserialize_i16 => visit_u64(0), deserialize_i32 => visit_u64(0), deserialize_i64 => visit_u64(0),
        deserialize_u8 => visit_u64(0), deserialize_u16 => visit_u64(0), deserialize_u32 => visit_u64(0), deserialize_u64 => visit_u64(0),
        deserialize_f32 => visit_f64(0.0), deserialize_f64 => visit_f64(0.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str(""), deserialize_string => visit_str(""),
        deserialize_bytes => visit_bytes(&[]), deserialize_byte_buf => visit_bytes(&[]),
        deserialize_unit => visit_unit(),
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, WalkError> {
        self.unsupported("self-describing value")
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_some(Walker { optional: true, ..self })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, WalkError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_newtype_struct(self)
    }

    /// A list: one element, walked at the list's own path (an array of
    /// tables records the table's keys under it).
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        self.record(false);
        visitor.visit_seq(One(Some(self)))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, WalkError> {
        self.unsupported("tuple")
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, _: &'static str, _: usize, _: V) -> Result<V::Value, WalkError> {
        self.unsupported("tuple struct")
    }

    /// A map with keys of the user's choosing (`source.kafka`, `settings`):
    /// one key, documented as a whole.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        self.record(false);
        visitor.visit_map(Fields { walker: self, fields: &[], next: 0 })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.record(true);
        visitor.visit_map(Fields { walker: self, fields, next: 0 })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, WalkError> {
        self.record(false);
        let variant: StrDeserializer<'_, WalkError> = variants[0].into_deserializer();
        visitor.visit_enum(variant)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, WalkError> {
        self.unsupported("identifier")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, WalkError> {
        visitor.visit_unit()
    }
}

/// A list of one element.
struct One<'a>(Option<Walker<'a>>);

impl<'de> SeqAccess<'de> for One<'_> {
    type Error = WalkError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, WalkError> {
        self.0.take().map(|walker| seed.deserialize(walker)).transpose()
    }
}

/// A struct's fields, each with a walker one key deeper.
struct Fields<'a> {
    walker: Walker<'a>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = WalkError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, WalkError> {
        let Some(field) = self.fields.get(self.next) else { return Ok(None) };
        let key: StrDeserializer<'_, WalkError> = (*field).into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, WalkError> {
        let field = self.fields[self.next];
        self.next += 1;
        let path = if self.walker.path.is_empty() { field.to_string() } else { format!("{}.{field}", self.walker.path) };
        seed.deserialize(Walker { path, optional: false, keys: self.walker.keys })
    }
}
