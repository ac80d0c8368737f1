//! What every request passes before its handler: the `Host` check against
//! DNS rebinding, the bound on request bodies, and the concurrency limit
//! that refuses excess requests with 503 at once instead of queueing them.
//!
//! DNS rebinding: a web page on `evil.example` can have its name resolve to
//! 127.0.0.1 and then read this API from the visitor's browser, as the same
//! origin. The browser still sends `Host: evil.example`, so answering only
//! the names this host is known by closes that door. An address (`Host:
//! 127.0.0.1:8080`, `[::1]`, `10.0.0.5`) involves no name to rebind, so any
//! is answered: the listen address, and whatever address a probe or a
//! scraper uses when the API listens on all interfaces.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use super::config::ApiConfig;
use super::{Api, ApiError};

/// The largest request body taken. No endpoint reads one today (the POSTs
/// carry their arguments in the path and the token in a header); the bound
/// keeps a future one, and any client, from making the host buffer more.
pub(super) const MAX_BODY_BYTES: usize = 16 * 1024;

/// The path the concurrency limit leaves alone: liveness must not fail
/// because the API is busy (a restart would not make it less busy), and it
/// does no I/O.
const UNLIMITED_PATH: &str = "/health";

/// The checks' settings, from `[api]`.
pub(super) struct Guard {
    /// `api.allowed_hosts` contains `*`.
    any_host: bool,
    /// Lower-cased host names answered besides `localhost`.
    hosts: Vec<String>,
    /// Permits for requests being answered.
    limit: Arc<Semaphore>,
    /// `api.max_concurrent_requests`.
    max: usize,
}

impl Default for Guard {
    fn default() -> Self {
        Guard::new(&ApiConfig::default(), None)
    }
}

impl Guard {
    /// The settings of `config`. The permits of `previous` are kept when
    /// the limit is unchanged, so a pipeline restart does not let twice the
    /// limit in while old requests finish.
    pub(super) fn new(config: &ApiConfig, previous: Option<&Guard>) -> Guard {
        let limit = match previous {
            Some(previous) if previous.max == config.max_concurrent_requests => previous.limit.clone(),
            _ => Arc::new(Semaphore::new(config.max_concurrent_requests)),
        };
        Guard {
            any_host: config.allowed_hosts.iter().any(|h| h == "*"),
            hosts: config.allowed_hosts.iter().map(|h| normalize(h)).collect(),
            limit,
            max: config.max_concurrent_requests,
        }
    }

    /// Whether a request naming `host` (no port, no brackets) is answered.
    pub(super) fn allows(&self, host: &str) -> bool {
        self.any_host || host == "localhost" || host.parse::<IpAddr>().is_ok() || self.hosts.iter().any(|h| h == host)
    }
}

fn normalize(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The host a request names, without its port: the `Host` header, or the
/// authority of an absolute-form request line.
fn host_of(request: &Request) -> Option<String> {
    let authority = match request.headers().get(header::HOST) {
        Some(value) => value.to_str().ok()?,
        None => request.uri().authority()?.as_str(),
    };
    hostname(authority)
}

/// `name`, `name:port`, `[v6]` or `[v6]:port` → the name (lower-cased) or
/// the address; `None` for anything else.
pub(super) fn hostname(authority: &str) -> Option<String> {
    let digits = |port: &str| port.chars().all(|c| c.is_ascii_digit());
    let host = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(digits)) {
            return None;
        }
        inside
    } else {
        match authority.rsplit_once(':') {
            Some((name, port)) if digits(port) => name,
            Some(_) => return None,
            None => authority,
        }
    };
    let host = normalize(host);
    (!host.is_empty()).then_some(host)
}

/// The middleware: refuses a foreign `Host` with 421, a body announced
/// larger than [`MAX_BODY_BYTES`] with 413, and a request past
/// `api.max_concurrent_requests` with 503 (and `Retry-After`).
pub(super) async fn check(State(api): State<Api>, request: Request, next: Next) -> Response {
    let guard = api.guard.load_full();
    match host_of(&request) {
        Some(host) if guard.allows(&host) => {}
        named => {
            let named = named.map_or_else(|| "no Host header".to_string(), |h| format!("Host {h:?}"));
            return ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "{named} is not a name this API answers to (a guard against DNS rebinding); \
                     add it to api.allowed_hosts in pipeline.toml to serve it"
                ),
            )
            .into_response();
        }
    }
    let announced = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("request bodies are limited to {MAX_BODY_BYTES} bytes"))
            .into_response();
    }
    if request.uri().path() == UNLIMITED_PATH {
        return next.run(request).await;
    }
    let Ok(_permit) = guard.limit.clone().try_acquire_owned() else {
        let mut response = ApiError::unavailable(format!(
            "the API is busy: api.max_concurrent_requests ({}) requests are being answered; try again shortly",
            guard.max
        ))
        .into_response();
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return response;
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostname_drops_the_port_and_keeps_ipv6_brackets_out() {
        assert_eq!(hostname("localhost:8080").as_deref(), Some("localhost"));
        assert_eq!(hostname("Dash.Example.").as_deref(), Some("dash.example"));
        assert_eq!(hostname("[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(hostname("[::1]").as_deref(), Some("::1"));
        assert_eq!(hostname("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(hostname("[::1]x"), None);
        assert_eq!(hostname("evil.example:http"), None);
        assert_eq!(hostname(":8080"), None);
    }

    #[test]
    fn localhost_addresses_and_the_listed_names_are_served() {
        let guard = Guard::new(&ApiConfig { allowed_hosts: vec!["Dash.Example".into()], ..ApiConfig::default() }, None);
        for host in ["localhost", "127.0.0.1", "::1", "10.1.2.3", "dash.example"] {
            assert!(guard.allows(host), "{host}");
        }
        for host in ["evil.example", "localhost.evil.example", "127.0.0.1.evil.example", "0x7f.1", "dash.example.evil"] {
            assert!(!guard.allows(host), "{host}");
        }
        let any = Guard::new(&ApiConfig { allowed_hosts: vec!["*".into()], ..ApiConfig::default() }, None);
        assert!(any.allows("evil.example"));
    }

    #[test]
    fn an_unchanged_limit_keeps_its_permits_across_a_restart() {
        let first = Guard::new(&ApiConfig::default(), None);
        let same = Guard::new(&ApiConfig::default(), Some(&first));
        assert!(Arc::ptr_eq(&first.limit, &same.limit));
        let other = Guard::new(&ApiConfig { max_concurrent_requests: 3, ..ApiConfig::default() }, Some(&first));
        assert_eq!(other.limit.available_permits(), 3);
    }
}
