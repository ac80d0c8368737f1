//! What every section of `pipeline.toml` speaks: the error a `validate()`
//! returns, the range check every section words the same way, how a
//! `change()` applies, and how a relative path is resolved.
//!
//! A leaf on purpose: each component's section imports this, and
//! [`crate::config`] composes the sections, so these cannot live in
//! `config` without a circle between it and every component. It imports
//! only [`crate::redact`], which imports nothing of the crate.

use std::path::{Path, PathBuf};

/// A configuration problem, naming where it is and how to fix it.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a wrong type. The
    /// line is not quoted: it may hold a secret.
    #[error("{file}: {}{}{problem}", at(*line, *column), key.as_ref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    Parse {
        file: PathBuf,
        /// 1-based; `None` when the parser gave no position.
        line: Option<usize>,
        /// 1-based, in characters.
        column: usize,
        /// The dotted key, when the file is valid TOML (a wrong type, an unknown key).
        key: Option<String>,
        /// The parser's message, without the value of a secret key.
        problem: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("{file}: `{key}` {problem}; {fix}")]
    Invalid {
        file: PathBuf,
        /// The dotted key, e.g. `source.batch_size`.
        key: String,
        problem: String,
        fix: String,
    },
}

/// `line L, column C: `, or nothing without a position.
fn at(line: Option<usize>, column: usize) -> String {
    line.map(|line| format!("line {line}, column {column}: ")).unwrap_or_default()
}

/// The error for `key` in `file`: what is wrong and how to fix it. A URL
/// the problem quotes is shown without its secrets (errors reach logs and
/// the reload history).
pub fn invalid(file: &Path, key: &str, problem: String, fix: &str) -> ConfigError {
    let problem = crate::redact::in_text(&problem).into_owned();
    ConfigError::Invalid { file: file.to_path_buf(), key: key.into(), problem, fix: fix.into() }
}

/// Checks that `key`'s `value` lies in `range`; the error names the range
/// and the default, the same way for every section.
pub fn in_range<T>(file: &Path, key: &str, value: T, range: std::ops::RangeInclusive<T>, default: T) -> Result<(), ConfigError>
where
    T: PartialOrd + std::fmt::Display,
{
    if range.contains(&value) {
        return Ok(());
    }
    Err(invalid(file, key, format!("is {value}"), &format!("use {} to {} (default {default})", range.start(), range.end())))
}

/// How a changed section applies to a running pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Apply {
    /// Nothing changed.
    Unchanged,
    /// Applied while running, from the next batch or pass (or a plugin swap).
    Live,
    /// The pipeline drains and starts again with the new file.
    Restart,
    /// Refused: these keys define what stored data means.
    Refused(Vec<&'static str>),
}

/// Makes a relative `path` relative to `base`.
pub fn resolve(base: &Path, path: &mut PathBuf) {
    if path.is_relative() {
        *path = base.join(&*path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_range_names_the_range_and_the_default() {
        let file = Path::new("pipeline.toml");
        assert!(in_range(file, "source.batch_size", 4096, 1..=100_000, 4096).is_ok());
        let error = in_range(file, "source.batch_size", 0, 1..=100_000, 4096).unwrap_err().to_string();
        assert_eq!(error, "pipeline.toml: `source.batch_size` is 0; use 1 to 100000 (default 4096)");
    }
}
