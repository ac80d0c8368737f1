//! `[store]`: PostgreSQL.

use std::path::Path;

use serde::Deserialize;

use crate::config::{invalid, Apply, ConfigError};

/// `[store]`. Any change needs a restart (new connections, maybe new tables).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Connection URL. Env: `DATABASE_URL`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Batches queued between stages before reading pauses (backpressure).
    #[serde(default = "default_max_in_flight_batches")]
    pub max_in_flight_batches: usize,
}

fn default_database_url() -> String {
    "postgres://postgres@127.0.0.1:5432/test".into()
}
const fn default_max_in_flight_batches() -> usize {
    4
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig { database_url: default_database_url(), max_in_flight_batches: default_max_in_flight_batches() }
    }
}

impl StoreConfig {
    /// Checks ranges; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if !self.database_url.starts_with("postgres://") && !self.database_url.starts_with("postgresql://") {
            return Err(invalid(
                file,
                "store.database_url",
                format!("is {:?}", self.database_url),
                "use a postgres://user@host:port/db URL",
            ));
        }
        if !(1..=64).contains(&self.max_in_flight_batches) {
            return Err(invalid(
                file,
                "store.max_in_flight_batches",
                format!("is {}", self.max_in_flight_batches),
                "use 1 to 64 (default 4)",
            ));
        }
        Ok(())
    }

    /// How a change to this section applies.
    pub fn change(&self, next: &StoreConfig) -> Apply {
        if self == next {
            Apply::Unchanged
        } else {
            Apply::Restart
        }
    }
}
