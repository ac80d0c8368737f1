//! `.services/env`: one `export NAME=VALUE` line per service address, for
//! `eval "$(scripts/services env)"`.

use std::path::PathBuf;

use super::{io_failure, Result, Stack};

impl Stack {
    /// The env file `scripts/services env` prints.
    pub fn env_file(&self) -> PathBuf {
        self.state().join("env")
    }

    /// (Re)writes `export NAME=VALUE`, keeping the other lines; replaced
    /// whole by a rename, so a reader never sees half a file.
    pub(crate) fn set_env(&self, name: &str, value: &str) -> Result<()> {
        let file = self.env_file();
        std::fs::create_dir_all(self.state()).map_err(|e| io_failure("create .services/", e))?;
        let prefix = format!("export {name}=");
        let mut lines: Vec<String> = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        lines.push(format!("{prefix}{}", quote(value)));
        let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, lines.join("\n") + "\n").map_err(|e| io_failure("write .services/env", e))?;
        std::fs::rename(&tmp, &file).map_err(|e| io_failure("write .services/env", e))
    }

    /// The value the env file holds for `name`, if any.
    pub(crate) fn get_env(&self, name: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.env_file()).ok()?;
        let prefix = format!("export {name}=");
        text.lines().rev().find_map(|line| line.strip_prefix(&prefix)).map(unquote).filter(|v| !v.is_empty())
    }

    /// `name` from the environment, else from the env file, else `default`.
    pub(crate) fn setting(&self, name: &str, default: &str) -> String {
        std::env::var(name).ok().filter(|v| !v.is_empty()).or_else(|| self.get_env(name)).unwrap_or_else(|| default.to_string())
    }
}

/// `value` as one shell word: characters outside a safe set are escaped with
/// a backslash, as bash's `printf %q` does for printable text.
pub fn quote(value: &str) -> String {
    if value.is_empty() {
        return "''".into();
    }
    let mut quoted = String::with_capacity(value.len());
    for c in value.chars() {
        if c.is_ascii_alphanumeric() || "_./:@,=+%-".contains(c) {
            quoted.push(c);
        } else if c == '\n' {
            quoted.push_str("$'\\n'");
        } else {
            quoted.push('\\');
            quoted.push(c);
        }
    }
    quoted
}

/// The value of one shell word written by [`quote`] or by bash's `printf
/// %q`: backslash escapes and single or double quotes.
pub fn unquote(word: &str) -> String {
    let mut value = String::with_capacity(word.len());
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => value.extend(chars.next()),
            '\'' => value.extend(chars.by_ref().take_while(|&c| c != '\'')),
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            }
            '$' if chars.peek() == Some(&'\'') => {
                chars.next();
                while let Some(c) = chars.next() {
                    match (c, chars.peek()) {
                        ('\'', _) => break,
                        ('\\', Some('n')) => {
                            chars.next();
                            value.push('\n');
                        }
                        ('\\', Some(_)) => value.extend(chars.next()),
                        (c, _) => value.push(c),
                    }
                }
            }
            c => value.push(c),
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_quoted_for_the_shell_reads_back_the_same() {
        for value in ["postgres://postgres@127.0.0.1:5432/test", "postgres://u:p@h/db?sslmode=require&x=1", "a b'c\"d$e", "", "two\nlines"]
        {
            assert_eq!(unquote(&quote(value)), value, "quoted as {}", quote(value));
        }
        assert_eq!(quote("127.0.0.1:9092"), "127.0.0.1:9092");
    }

    #[test]
    fn a_value_bash_quoted_reads_back_the_same() {
        // What `printf %q` wrote into .services/env before the stack was Rust.
        let Ok(out) = std::process::Command::new("bash").args(["-c", r#"printf '%q' "$1""#, "_", "http://h:9200/x?a=1&b=c d"]).output()
        else {
            return;
        };
        assert_eq!(unquote(&String::from_utf8(out.stdout).unwrap()), "http://h:9200/x?a=1&b=c d");
    }

    #[test]
    fn the_env_file_keeps_one_line_per_name_and_the_latest_value() {
        let root = std::env::temp_dir().join(format!("xtask-env-{}", std::process::id()));
        let stack = Stack::at(&root);
        stack.set_env("DATABASE_URL", "postgres://a/test").unwrap();
        stack.set_env("KAFKA_BROKERS", "127.0.0.1:9092").unwrap();
        stack.set_env("DATABASE_URL", "postgres://b/test?x=1").unwrap();
        let text = std::fs::read_to_string(stack.env_file()).unwrap();
        assert_eq!(text, "export KAFKA_BROKERS=127.0.0.1:9092\nexport DATABASE_URL=postgres://b/test\\?x=1\n");
        assert_eq!(stack.get_env("DATABASE_URL").as_deref(), Some("postgres://b/test?x=1"));
        assert_eq!(stack.get_env("ELASTICSEARCH_URL"), None);
        std::fs::remove_dir_all(root).unwrap();
    }
}
