//! Secrets out of what the host shows. `store.database_url`, `index.url`
//! and the broker list surface in `/ready`, the reload history,
//! configuration errors and logs, and any of them may carry a password: in
//! its userinfo (`http://elastic:PASSWORD@host:9200`) or in a query
//! parameter (`postgres://u@h/db?password=...`, `sslpassword=`, `api_key=`).
//!
//! URLs are parsed (the `url` crate, WHATWG rules: the userinfo ends at the
//! last `@` of the authority), not matched against a pattern, so a password
//! holding `@` or `:` is hidden whole. What does not parse as a URL with an
//! authority is hidden whole too, never echoed: a broken URL is where a
//! password cut short by an unescaped `/`, `?` or `#` ends up in the host,
//! port or path.
//!
//! Values of secret keys are never shown at all: `api.reload_token`,
//! `[source.kafka]`'s `sasl.password` or `ssl.key.password`, any key whose
//! name says password, secret, token or key ([`is_secret_key`]).

use std::borrow::Cow;

use url::Url;

/// What a hidden password or parameter value reads as.
pub const HIDDEN: &str = "***";

/// What a string that cannot be shown safely reads as, after its scheme.
/// The same as [`HIDDEN`], so that redacting again changes nothing.
const WITHHELD: &str = HIDDEN;

/// Query parameter names (lower-cased, only letters and digits kept) whose
/// value is a secret as a whole.
const SECRET_NAMES: &[&str] = &["pass", "pwd", "key", "auth", "sig", "signature", "authorization", "credential", "credentials"];

/// Name parts that make a query parameter secret: `password`,
/// `sslpassword`, `client_secret`, `access_token`, `api_key`, ...
const SECRET_PARTS: &[&str] = &["password", "passwd", "secret", "token", "apikey", "accesskey", "privatekey"];

/// Parts of a configuration key's name that mark its value secret:
/// `api.reload_token`, librdkafka's `sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, a plugin setting `api_key`. Broad on
/// purpose: hiding a file path named `ssl.key.location` costs nothing.
const SECRET_KEY_PARTS: &[&str] = &["password", "passwd", "secret", "token", "key", "credential"];

/// Whether the value of the configuration key `key` (dotted, any case,
/// e.g. `source.kafka."sasl.password"`) is a secret, never to be shown.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_PARTS.iter().any(|part| key.contains(part))
}

/// `text` (one URL, such as `store.database_url`) safe to show: the
/// password in its userinfo and the values of secret query parameters
/// replaced by [`HIDDEN`], its fragment too. Unchanged when it holds no
/// secret; replaced whole when it does not parse as a URL with an authority
/// (`scheme://...`), or when an `@` after the authority suggests a password
/// the parser cut short.
pub fn url(text: &str) -> Cow<'_, str> {
    let Some(scheme) = scheme_of(text) else { return Cow::Borrowed(WITHHELD) };
    let withheld = || Cow::Owned(format!("{scheme}://{WITHHELD}"));
    let Ok(mut parsed) = Url::parse(text) else { return withheld() };
    // A password cut short (`u:pa/ss@h`, `u:pa?ss@h`, `u:12#ss@h`) leaves its tail and
    // the real host after the authority, with an `@` there.
    if parsed.path().contains('@') || parsed.query().is_some_and(|q| q.contains('@')) || parsed.fragment().is_some_and(|f| f.contains('@'))
    {
        return withheld();
    }
    let mut hid = false;
    if parsed.password().is_some() {
        if parsed.set_password(Some(HIDDEN)).is_err() {
            return withheld();
        }
        hid = true;
    }
    if let Some(query) = parsed.query() {
        if let Some(query) = hide_query(query) {
            parsed.set_query(Some(&query));
            hid = true;
        }
    }
    if parsed.fragment().is_some_and(|f| !f.is_empty()) {
        parsed.set_fragment(Some(HIDDEN));
        hid = true;
    }
    if hid {
        Cow::Owned(parsed.to_string())
    } else {
        Cow::Borrowed(text)
    }
}

/// A table of settings with keys of the user's choosing (`[source.kafka]`,
/// a plugin's `settings`) as Debug may show it: the value of every secret
/// key ([`is_secret_key`]) hidden, URLs in the rest passed through [`url`].
pub fn settings(map: &std::collections::BTreeMap<String, String>) -> std::collections::BTreeMap<&str, Cow<'_, str>> {
    map.iter().map(|(k, v)| (k.as_str(), if is_secret_key(k) { Cow::Borrowed(HIDDEN) } else { in_text(v) })).collect()
}

/// Free text (an error message, a broker list, a reload's detail) with
/// every `scheme://...` in it passed through [`url`]. A URL runs to the next
/// whitespace; quotes and punctuation closing it are kept after it.
pub fn in_text(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    let mut from = 0;
    while let Some(at) = text[from..].find("://").map(|i| from + i) {
        // Scheme characters are ASCII, so the byte after the last other
        // character is on a character boundary.
        let start = text[..at].char_indices().rev().find(|&(_, c)| !is_scheme_char(c)).map_or(0, |(i, c)| i + c.len_utf8()).max(done);
        // A scheme starts with a letter: `1x://` is `x://` after a `1`.
        let start = text[start..at].find(|c: char| c.is_ascii_alphabetic()).map_or(at, |i| start + i);
        let end = text[at..].find(char::is_whitespace).map_or(text.len(), |i| at + i);
        let core = text[start..end].trim_end_matches(closes_a_url);
        out.push_str(&text[done..start]);
        // A bare `https://` (in a hint: "use an http:// URL") hides nothing.
        let shown = if core.len() == at + 3 - start { Cow::Borrowed(core) } else { url(core) };
        // The parser may end what it writes back with a character the next
        // pass would take for closing punctuation (`u:p@):` gives `u:***@)`:
        // an opaque host `)`, the empty port dropped); withheld whole, so
        // that redacting again changes nothing (found by fuzzing).
        let shown = if shown.ends_with(closes_a_url) { Cow::Owned(format!("{}://{WITHHELD}", &text[start..at])) } else { shown };
        out.push_str(&shown);
        done = start + core.len();
        from = end;
    }
    out.push_str(&text[done..]);
    Cow::Owned(out)
}

/// Whether `c`, at the end of a URL in text, closes the text around it
/// rather than the URL: quotes, brackets, punctuation. Control characters
/// too: the URL parser drops them from a URL's end, which would bare a `)`
/// before them to the next pass (found by fuzzing).
fn closes_a_url(c: char) -> bool {
    "\"'`)]}>,;.!?".contains(c) || c.is_control()
}

/// The scheme of `text` when it starts with `scheme://`.
fn scheme_of(text: &str) -> Option<&str> {
    let (scheme, _) = text.split_once("://")?;
    let well_formed = scheme.starts_with(|c: char| c.is_ascii_alphabetic()) && scheme.chars().all(is_scheme_char);
    well_formed.then_some(scheme)
}

fn is_scheme_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')
}

/// The query with every secret parameter's value hidden, or `None` when it
/// has none. Other parameters are kept byte for byte.
fn hide_query(query: &str) -> Option<String> {
    let mut hid = false;
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|part| {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let decoded = url::form_urlencoded::parse(name.as_bytes()).next().map(|(n, _)| n).unwrap_or_default();
            if !value.is_empty() && is_secret_name(&decoded) {
                hid = true;
                Cow::Owned(format!("{name}={HIDDEN}"))
            } else {
                Cow::Borrowed(part)
            }
        })
        .collect();
    hid.then(|| parts.join("&"))
}

fn is_secret_name(name: &str) -> bool {
    let name: String = name.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    SECRET_NAMES.contains(&name.as_str()) || SECRET_PARTS.iter().any(|part| name.contains(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_naming_a_password_secret_token_or_key_are_secret() {
        for key in ["api.reload_token", "source.kafka.\"sasl.password\"", "ssl.key.password", "sasl.oauthbearer.client.secret", "API_KEY"] {
            assert!(is_secret_key(key), "{key}");
        }
        for key in ["source.kafka.\"security.protocol\"", "source.brokers", "index.url", "transforms[0].settings.markers"] {
            assert!(!is_secret_key(key), "{key}");
        }
    }

    #[test]
    fn the_userinfo_password_is_hidden_and_the_rest_kept() {
        assert_eq!(url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(url("http://elastic:changeme@127.0.0.1:9200"), "http://elastic:***@127.0.0.1:9200/");
        assert_eq!(url("postgres://u:pa:ss@h/db"), "postgres://u:***@h/db");
    }

    #[test]
    fn a_password_holding_an_at_sign_is_hidden_whole() {
        assert_eq!(url("postgres://u:p@ss@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(url("https://elastic:a@b@c@search.example:9243"), "https://elastic:***@search.example:9243/");
    }

    /// A `#` in a password ends the authority: `u:12` reads as a host and
    /// a port, and the password's tail as the fragment. Hiding only the
    /// fragment showed the password's first part as the port.
    #[test]
    fn a_password_cut_short_by_a_hash_is_hidden_whole() {
        assert_eq!(url("http://u:12#ss@h/x"), "http://***");
        assert_eq!(url("postgres://u:99#a@b@h:5432/db"), "postgres://***");
    }

    #[test]
    fn a_url_ending_in_a_control_character_is_redacted_once_and_for_all() {
        let once = in_text("rostgres://usep:!p@)\u{8}\nsep");
        assert_eq!(once, "rostgres://***)\u{8}\nsep");
        assert_eq!(in_text(&once), once);
    }

    #[test]
    fn a_url_written_back_with_a_closing_bracket_is_withheld_so_redacting_again_changes_nothing() {
        let once = in_text("mb x://user:qr@): )2x");
        assert_eq!(once, "mb x://*** )2x");
        assert_eq!(in_text(&once), once);
    }

    #[test]
    fn secret_query_parameters_are_hidden_and_others_kept_as_written() {
        assert_eq!(
            url("postgres://u@h/db?sslmode=require&password=hunter2&application_name=a%20b"),
            "postgres://u@h/db?sslmode=require&password=***&application_name=a%20b"
        );
        for name in
            ["pass", "pwd", "PASSWORD", "sslpassword", "secret", "client_secret", "token", "access_token", "api_key", "apikey", "api-key"]
        {
            let shown = url(&format!("http://h:9200/?{name}=s3cr3t&x=1")).into_owned();
            assert_eq!(shown, format!("http://h:9200/?{name}=***&x=1"), "{name}");
        }
        assert_eq!(url("postgres://u@h/db?sslkey=/etc/key.pem"), "postgres://u@h/db?sslkey=/etc/key.pem", "a path, not a secret");
    }

    #[test]
    fn a_url_without_secrets_is_shown_as_written() {
        for plain in
            ["postgres://postgres@127.0.0.1:5432/test", "postgres:///db", "http://127.0.0.1:9200", "postgres://u@h/db?sslmode=require"]
        {
            assert!(matches!(url(plain), Cow::Borrowed(s) if s == plain), "{plain}");
        }
    }

    #[test]
    fn what_does_not_parse_is_hidden_whole() {
        // An unescaped `/` or `?` cuts the password short: what follows it
        // would be shown as the host, port or path (`#`: the test above).
        assert_eq!(url("postgres://u:pa/ss@h:5432/db"), "postgres://***");
        assert_eq!(url("postgres://u:12/ss@h/db"), "postgres://***");
        assert_eq!(url("postgres://u:pa?ss@h/db"), "postgres://***");
        assert_eq!(url("postgres://u:secret@h:99999/db"), "postgres://***");
        assert_eq!(url("u:secret@h/db"), "***");
        assert_eq!(url("not a url at all, secret"), "***");
        assert_eq!(url(""), "***");
    }

    #[test]
    fn redacting_twice_changes_nothing() {
        for text in ["postgres://u:secret@h/db?password=x", "postgres://u:pa/ss@h/db", "http://e:p@h:9200#frag", "junk"] {
            let once = url(text).into_owned();
            assert_eq!(url(&once), once, "{text}");
            let quoted = format!("is \"{once}\"; fix it");
            assert_eq!(in_text(&quoted), quoted, "{text}");
        }
    }

    #[test]
    fn urls_inside_text_are_redacted_and_the_text_around_kept() {
        let text = r#"p.toml: `store.database_url` is "postgres://u:secret@h/db?password=two"; use a postgres://user@host:5432/db URL"#;
        assert_eq!(
            in_text(text),
            r#"p.toml: `store.database_url` is "postgres://u:***@h/db?password=***"; use a postgres://user@host:5432/db URL"#
        );
        assert_eq!(in_text("is \"ftp://x\"; use an http:// or https:// URL"), "is \"ftp://x\"; use an http:// or https:// URL");
        assert_eq!(in_text("search server http://e:pw@h:9200/, down"), "search server http://e:***@h:9200/, down");
        assert_eq!(in_text("brokers SASL_SSL://u:pw@k1:9093,k2:9093"), "brokers SASL_SSL://***");
        assert_eq!(in_text("3 | url = \"http://e:p@w@h\nnext"), "3 | url = \"http://e:***@h/\nnext");
        assert!(matches!(in_text("no urls here, 127.0.0.1:9092"), Cow::Borrowed(_)));
        assert_eq!(in_text("://u:secret@h"), "***");
        assert_eq!(in_text("é://u:s@h ü"), "é*** ü");
        for text in ["a http://u:pa ss@h b", "x=1http://u:s@h", "(https://u:s@h)", "http://a http://u:s@h"] {
            assert!(!in_text(text).contains(":s@") && !in_text(text).contains(":pa"), "{text} → {}", in_text(text));
        }
    }
}
