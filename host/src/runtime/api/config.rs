//! `[api]`: the HTTP service.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::config::{invalid, Apply, ConfigError};

/// `[api]`. The server binds once per process: a new `listen` takes effect
/// when the process restarts; a new token restarts the pipeline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address. Env: `CLICKSTREAM_API_LISTEN`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer token that `POST /api/plugins/{name}/reload` requires; the
    /// endpoint refuses every request when unset.
    #[serde(default)]
    pub reload_token: Option<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: default_listen(), reload_token: None }
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
