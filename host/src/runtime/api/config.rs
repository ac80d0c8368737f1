//! `[api]`: the HTTP service.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::section::{in_range, invalid, Apply, ConfigError};

/// `[api]`. The server binds once per process: a new `listen` takes effect
/// when the process restarts. Any other change restarts the pipeline, and
/// the API applies it when the pipeline is back (a new token, pool, limit,
/// host list or preview setting).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address. Env: `CLICKSTREAM_API_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token that `POST /api/plugins/{name}/reload` requires; the
    /// endpoint refuses every request when unset.
    #[serde(default)]
    pub reload_token: Option<String>,
    /// Connections of the API's own PostgreSQL pool (dead letters, failing
    /// windows). Ingest, aggregation and publishing never wait for these,
    /// and a request flood never takes theirs.
    #[serde(default = "default_db_connections")]
    pub db_connections: u32,
    /// `statement_timeout` of the API's connections, and how long a request
    /// waits for one of them: a slow query answers 503, it does not pile up.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// Requests answered at once; more are refused with 503 at once instead
    /// of queueing. `/health` is not counted (liveness must not fail under load).
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Host names the API answers to besides `localhost`, on any port; a
    /// request whose `Host` header names another is refused with 421 (DNS
    /// rebinding). An address (`127.0.0.1`, `[::1]`, the listen address) is
    /// always answered: there is no name to rebind. `"*"` answers any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Whether `/api/dead-letters` shows the start of each payload. Off by
    /// default: payloads are what clients sent and may hold personal data.
    #[serde(default)]
    pub dead_letter_previews: bool,
    /// `/ready` answers 503 naming a stage that has held its work (a batch
    /// being transformed or stored, an aggregation or indexing pass) this
    /// many seconds without finishing it: stuck, not slow.
    #[serde(default = "default_ready_stall_secs")]
    pub ready_stall_secs: u64,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
const fn default_db_connections() -> u32 {
    2
}
const fn default_statement_timeout_ms() -> u64 {
    5_000
}
const fn default_max_concurrent_requests() -> usize {
    16
}
const fn default_ready_stall_secs() -> u64 {
    120
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: default_listen(),
            reload_token: None,
            db_connections: default_db_connections(),
            statement_timeout_ms: default_statement_timeout_ms(),
            max_concurrent_requests: default_max_concurrent_requests(),
            allowed_hosts: Vec::new(),
            dead_letter_previews: false,
            ready_stall_secs: default_ready_stall_secs(),
        }
    }
}

impl ApiConfig {
    /// Checks the address and the token's length; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(invalid(file, "api.listen", format!("is {:?}", self.listen), "use an address such as 127.0.0.1:8080"));
        }
        if matches!(&self.reload_token, Some(t) if t.len() < 16) {
            return Err(invalid(
                file,
                "api.reload_token",
                "is shorter than 16 characters".into(),
                "use a long random token, or remove the key to disable the reload endpoint",
            ));
        }
        in_range(file, "api.db_connections", self.db_connections, 1..=32, default_db_connections())?;
        in_range(file, "api.statement_timeout_ms", self.statement_timeout_ms, 100..=600_000, default_statement_timeout_ms())?;
        in_range(file, "api.max_concurrent_requests", self.max_concurrent_requests, 1..=4096, default_max_concurrent_requests())?;
        in_range(file, "api.ready_stall_secs", self.ready_stall_secs, 1..=86_400, default_ready_stall_secs())?;
        if let Some(bad) = self.allowed_hosts.iter().find(|h| !is_host_name(h)) {
            return Err(invalid(
                file,
                "api.allowed_hosts",
                format!("holds {bad:?}, which is no host name"),
                "list host names without scheme, port or path, e.g. [\"dashboard.example\"] (addresses are always answered), or [\"*\"] for any",
            ));
        }
        Ok(())
    }

    /// How a change to this section applies.
    pub fn change(&self, next: &ApiConfig) -> Apply {
        if self == next {
            Apply::Unchanged
        } else {
            Apply::Restart
        }
    }
}

/// A host name as `api.allowed_hosts` takes it: `*`, or letters, digits,
/// `-`, `.` and `_` (an address needs no entry: every one is answered).
fn is_host_name(host: &str) -> bool {
    host == "*"
        || (!host.is_empty() && host.len() <= 253 && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
}

/// Debug shows no token (a config printed in a log or a failed assertion).
impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ApiConfig {
            listen,
            reload_token,
            db_connections,
            statement_timeout_ms,
            max_concurrent_requests,
            allowed_hosts,
            dead_letter_previews,
            ready_stall_secs,
        } = self;
        f.debug_struct("ApiConfig")
            .field("listen", listen)
            .field("reload_token", &reload_token.as_ref().map(|_| crate::redact::HIDDEN))
            .field("db_connections", db_connections)
            .field("statement_timeout_ms", statement_timeout_ms)
            .field("max_concurrent_requests", max_concurrent_requests)
            .field("allowed_hosts", allowed_hosts)
            .field("dead_letter_previews", dead_letter_previews)
            .field("ready_stall_secs", ready_stall_secs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_hosts_are_names_without_port_or_scheme() {
        for good in ["*", "localhost", "dash.example", "dash-1.internal_zone"] {
            assert!(is_host_name(good), "{good}");
        }
        for bad in ["", "http://dash.example", "dash.example:8080", "dash example", "a/b", "[::1]"] {
            assert!(!is_host_name(bad), "{bad}");
        }
    }

    #[test]
    fn limits_are_checked() {
        let file = Path::new("pipeline.toml");
        assert!(ApiConfig::default().validate(file).is_ok());
        for config in [
            ApiConfig { db_connections: 0, ..ApiConfig::default() },
            ApiConfig { statement_timeout_ms: 10, ..ApiConfig::default() },
            ApiConfig { max_concurrent_requests: 0, ..ApiConfig::default() },
            ApiConfig { allowed_hosts: vec!["https://x".into()], ..ApiConfig::default() },
        ] {
            assert!(config.validate(file).is_err(), "{config:?}");
        }
    }
}
