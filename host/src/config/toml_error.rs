//! A TOML error as pipeline.toml's errors read: the line and column, the
//! key when the file parses as TOML, and what is wrong — never the source
//! line. The toml crate's own message quotes the offending line, and that
//! line may hold `api.reload_token`, a SASL password or a URL's password;
//! errors reach the log and the reload history, which `/api/plugins`
//! serves to anyone. A value serde quotes in its message (`invalid type:
//! integer `123``) is withheld when the key's name marks it secret, or
//! when the key is not known.

use std::ops::Range;

use toml_edit::{ImDocument, Item, Key, Table, Value};

use crate::redact::{is_secret_key, HIDDEN};

/// Where a TOML error is and what it says, safe to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Located {
    /// 1-based; `None` when the parser gave no position.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: usize,
    /// The dotted key the error is about, when the file parses as TOML.
    pub key: Option<String>,
    /// The parser's message on one line, values of secret keys withheld.
    pub problem: String,
}

/// `error`, which the parser raised on `text`, without the source line.
pub(super) fn locate(text: &str, error: &toml::de::Error) -> Located {
    let span = error.span();
    let (line, column) = span.as_ref().map_or((None, 0), |s| {
        let (line, column) = line_column(text, s.start);
        (Some(line), column)
    });
    // A syntax error leaves no document to find the key in: the line and
    // column say where, and the message never quotes the input.
    let key = span.and_then(|s| ImDocument::parse(text).ok().and_then(|doc| key_at(doc.as_table(), s.start)));
    let problem = error.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
    let problem = if key.as_deref().is_none_or(is_secret_key) { without_value(&problem) } else { problem };
    Located { line, column, key, problem }
}

/// 1-based line and character column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (before.matches('\n').count() + 1, before[line_start..].chars().count() + 1)
}

/// serde's messages that quote the value they refused, with the text
/// before the value.
const QUOTING: [&str; 3] = ["invalid type: ", "invalid value: ", "unknown variant "];

/// `message` without the value serde quotes in it: `invalid type: integer
/// `123`, expected a string` reads `invalid type: integer ***, expected a
/// string`. Messages that quote no value are kept.
fn without_value(message: &str) -> String {
    let Some(prefix) = QUOTING.iter().find(|p| message.starts_with(**p)) else { return message.to_string() };
    let rest = &message[prefix.len()..];
    // The expectation comes from the type, after the value: the last one is serde's.
    let expected = rest.rfind(", expected ").map_or("", |i| &rest[i..]);
    let kind: String = rest.chars().take_while(|c| c.is_ascii_alphabetic() || *c == ' ').collect();
    let kind = kind.trim();
    // `sequence`, `map`: the kind alone, no value after it.
    if rest.len() - expected.len() == kind.len() {
        return message.to_string();
    }
    let kind = if kind.is_empty() { String::new() } else { format!("{kind} ") };
    format!("{prefix}{kind}{HIDDEN} (not shown: the key may hold a secret){expected}")
}

/// The dotted key of the innermost entry of `table` whose key or value
/// covers `offset` (`source.kafka."sasl.password"`, `transforms[1].path`).
fn key_at(table: &Table, offset: usize) -> Option<String> {
    let mut path = Vec::new();
    entries_at(table.iter().filter_map(|(k, _)| table.get_key_value(k)), offset, &mut path).then(|| path.join("."))
}

fn entries_at<'a>(entries: impl Iterator<Item = (&'a Key, &'a Item)>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, item) in entries {
        let name = key.get();
        let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        path.push(if bare { name.to_string() } else { format!("\"{name}\"") });
        if covers(key.span(), offset) || item_at(item, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

/// Whether `offset` is in `item`, its innermost key appended to `path`.
fn item_at(item: &Item, offset: usize, path: &mut Vec<String>) -> bool {
    match item {
        Item::None => false,
        Item::Value(value) => value_at(value, offset, path),
        Item::Table(table) => table_at(table, offset, path),
        Item::ArrayOfTables(tables) => tables.iter().enumerate().any(|(i, table)| indexed(path, i, |path| table_at(table, offset, path))),
    }
}

/// A table covers what its entries do and, for a missing key, itself.
fn table_at(table: &Table, offset: usize, path: &mut Vec<String>) -> bool {
    entries_at(table.iter().filter_map(|(k, _)| table.get_key_value(k)), offset, path) || covers(table.span(), offset)
}

fn value_at(value: &Value, offset: usize, path: &mut Vec<String>) -> bool {
    let inner = match value {
        Value::InlineTable(table) => entries_at(table.iter().filter_map(|(k, _)| table.get_key_value(k)), offset, path),
        Value::Array(array) => array.iter().enumerate().any(|(i, v)| indexed(path, i, |path| value_at(v, offset, path))),
        _ => false,
    };
    inner || covers(value.span(), offset)
}

/// Tries `f` with `[i]` appended to the last key of `path`; undone when it
/// finds nothing.
fn indexed(path: &mut Vec<String>, i: usize, f: impl FnOnce(&mut Vec<String>) -> bool) -> bool {
    let Some(last) = path.pop() else { return false };
    path.push(format!("{last}[{i}]"));
    if f(path) {
        return true;
    }
    path.pop();
    path.push(last);
    false
}

fn covers(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.contains(&offset) || (s.is_empty() && s.start == offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(text: &str) -> Located {
        let error = toml::from_str::<crate::config::PipelineConfig>(text).unwrap_err();
        locate(text, &error)
    }

    #[test]
    fn the_key_is_found_in_tables_arrays_of_tables_and_inline_tables() {
        let text = "[source]\ntopics = [\"a\", 1]\n";
        assert_eq!(located(text).key.as_deref(), Some("source.topics[1]"));
        let text = "[source]\nkafka = { \"sasl.password\" = 5 }\n";
        assert_eq!(located(text).key.as_deref(), Some("source.kafka.\"sasl.password\""));
        let text = "[source]\n[[transforms]]\nname = \"a\"\npath = \"a.wasm\"\n[[transforms]]\nname = \"b\"\npath = 7\n";
        assert_eq!(located(text).key.as_deref(), Some("transforms[1].path"));
    }

    #[test]
    fn lines_and_columns_count_from_one_in_characters() {
        assert_eq!(line_column("ab\ncdé = x", 9), (2, 6));
        assert_eq!(line_column("x", 0), (1, 1));
        assert_eq!(line_column("é", 1), (1, 1), "inside a character: its start");
    }

    #[test]
    fn only_the_value_serde_quotes_is_withheld() {
        assert_eq!(
            without_value("invalid type: integer `123`, expected a string"),
            "invalid type: integer *** (not shown: the key may hold a secret), expected a string"
        );
        assert_eq!(
            without_value("invalid type: string \"a, expected b\", expected usize"),
            "invalid type: string *** (not shown: the key may hold a secret), expected usize"
        );
        assert_eq!(without_value("invalid type: sequence, expected a string"), "invalid type: sequence, expected a string");
        assert_eq!(without_value("unknown field `reload_tokn`"), "unknown field `reload_tokn`");
        assert!(!without_value("unknown variant `s3cret`, expected `swap`").contains("s3cret"));
    }
}
