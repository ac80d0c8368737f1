//! plugins/utm (JavaScript) written again in Rust, step for step: the
//! benchmark's baseline for what the JavaScript engine costs on the same
//! logic, and a second opinion for the test that both give the same
//! outcome on every event. Change the two together.

use std::collections::HashMap;

use clickstream_plugin::log::{log, Level};
use clickstream_plugin::{export_transformer, Event, Outcome, Transformer, Value};
use serde::Deserialize;
const PARAMETERS: [&str; 5] = ["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"];
const SEARCH: &[&str] =
    &["google.", "bing.com", "duckduckgo.com", "search.yahoo.com", "yandex.", "baidu.com", "ecosia.org", "search.brave.com", "qwant.com"];
const SOCIAL: &[&str] = &[
    "facebook.com",
    "fb.com",
    "instagram.com",
    "t.co",
    "twitter.com",
    "x.com",
    "linkedin.com",
    "lnkd.in",
    "reddit.com",
    "pinterest.com",
    "youtube.com",
    "tiktok.com",
    "threads.net",
    "mastodon.social",
    "bsky.app",
];
const EMAIL: &[&str] = &["mail.google.com", "outlook.live.com", "mail.yahoo.com", "mail.proton.me"];

struct Settings {
    internal_hosts: Vec<String>,
    search: Vec<String>,
    social: Vec<String>,
    email: Vec<String>,
    max_length: usize,
    lowercase: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let owned = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Settings {
            internal_hosts: Vec::new(),
            search: owned(SEARCH),
            social: owned(SOCIAL),
            email: owned(EMAIL),
            max_length: 128,
            lowercase: true,
        }
    }
}

/// The `settings` table as written: the host lists extend the defaults.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Written {
    internal_hosts: Vec<String>,
    search_hosts: Vec<String>,
    social_hosts: Vec<String>,
    max_length: usize,
    lowercase: bool,
}

impl Default for Written {
    fn default() -> Self {
        Written { internal_hosts: Vec::new(), search_hosts: Vec::new(), social_hosts: Vec::new(), max_length: 128, lowercase: true }
    }
}

struct Utm(Settings);

impl Transformer for Utm {
    const NAME: &'static str = "utm";
    type Settings = Written;

    fn new(written: Written) -> Result<Self, String> {
        if !(1..=1024).contains(&written.max_length) {
            return Err(format!("max_length = `{}`: expected a whole number from 1 to 1024", written.max_length));
        }
        let hosts = |list: Vec<String>| list.into_iter().map(|h| h.to_lowercase()).collect::<Vec<_>>();
        let mut settings = Settings {
            internal_hosts: hosts(written.internal_hosts),
            max_length: written.max_length,
            lowercase: written.lowercase,
            ..Settings::default()
        };
        settings.search.extend(hosts(written.search_hosts));
        settings.social.extend(hosts(written.social_hosts));
        Ok(Utm(settings))
    }

    fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        let settings = &self.0;
        let mut undecodable = 0;
        let outcomes = batch
            .into_iter()
            .map(|mut event| {
                let mut found = Vec::new();
                let query = parse_query(&event.url);
                for name in PARAMETERS {
                    let value = match query.get(name) {
                        None => continue,
                        Some(None) => {
                            undecodable += 1;
                            continue;
                        }
                        Some(Some(value)) if value.is_empty() => continue,
                        Some(Some(value)) => value,
                    };
                    let value = if settings.lowercase && (name == "utm_source" || name == "utm_medium") {
                        value.to_lowercase()
                    } else {
                        value.clone()
                    };
                    found.push((name, Value::Str(cut(value, settings.max_length))));
                }
                let class = referrer_class(event.referrer.as_deref(), &event.url, &query, settings);
                found.push(("referrer_class", Value::Str(class.into())));
                for (key, value) in found {
                    event.set_attribute(key, value);
                }
                Outcome::Keep(event)
            })
            .collect();
        if undecodable > 0 {
            log(Level::Debug, &format!("{undecodable} utm parameters were not valid percent-encoding and were left out"));
        }
        outcomes
    }
}

/// The query parameters of `url`, first occurrence of each (lower-cased)
/// name; `None` for a value that is not valid percent-encoding.
fn parse_query(url: &str) -> HashMap<String, Option<String>> {
    let mut params = HashMap::new();
    let Some(start) = url.find('?') else { return params };
    let query = &url[start + 1..];
    let query = query.find('#').map_or(query, |end| &query[..end]);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = match pair.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (pair, None),
        };
        let Some(key) = decode(key).map(|k| k.to_lowercase()) else { continue };
        if params.contains_key(&key) {
            continue;
        }
        params.insert(key, value.map_or(Some(String::new()), decode));
    }
    params
}

/// `decodeURIComponent` after `+` → space, trimmed; `None` when it fails.
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().map(|s| s.trim().to_string())
}

/// The host of an absolute URL, lower-cased, without `www.` or a port.
fn host_of(url: &str) -> String {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else { return String::new() };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'));
    if !scheme_ok {
        return String::new();
    }
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    let after_user = match authority.split_once('@') {
        Some((_, host)) if !host.is_empty() && !host.starts_with(':') => host,
        _ => authority,
    };
    let host = after_user.split(':').next().unwrap_or("").to_lowercase();
    host.strip_prefix("www.").map(str::to_string).unwrap_or(host)
}

fn matches(host: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| {
        if p.ends_with('.') {
            host.starts_with(p.as_str()) || host.contains(&format!(".{p}"))
        } else {
            host == p || host.ends_with(&format!(".{p}"))
        }
    })
}

fn referrer_class(referrer: Option<&str>, url: &str, query: &HashMap<String, Option<String>>, settings: &Settings) -> &'static str {
    let medium = query.get("utm_medium").cloned().flatten().unwrap_or_default().to_lowercase();
    let host = referrer.map(host_of).unwrap_or_default();
    if host.is_empty() {
        return if medium == "email" { "email" } else { "direct" };
    }
    if host == host_of(url) || matches(&host, &settings.internal_hosts) {
        "internal"
    } else if matches(&host, &settings.email) {
        "email"
    } else if matches(&host, &settings.search) {
        "search"
    } else if matches(&host, &settings.social) {
        "social"
    } else if medium == "email" {
        "email"
    } else {
        "referral"
    }
}

fn cut(value: String, max: usize) -> String {
    if value.chars().count() <= max {
        value
    } else {
        value.chars().take(max).collect()
    }
}

export_transformer!(Utm, version = concat!(env!("CARGO_PKG_VERSION"), "-rust"));
