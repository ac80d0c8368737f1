//! `[store]`: PostgreSQL.

use std::path::Path;

use serde::Deserialize;

use crate::section::{in_range, invalid, Apply, ConfigError};

/// `[store]`. Any change needs a restart (new connections, maybe new tables).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Connection URL. Env: `DATABASE_URL`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// Batches queued between stages before reading pauses (backpressure).
    #[serde(default = "default_max_in_flight_batches")]
    pub max_in_flight_batches: usize,
    /// Writers storing batches side by side, each on its own connection with
    /// its own transaction; a partition always goes to the same writer.
    #[serde(default = "default_writers")]
    pub writers: usize,
    /// Days of events and dead letters kept: a day partition is dropped once
    /// it is older; an event older than that is dead-lettered (`expired`).
    /// 0 keeps everything.
    #[serde(default)]
    pub retention_days: u32,
}

fn default_database_url() -> String {
    "postgres://postgres@127.0.0.1:5432/test".into()
}
const fn default_max_in_flight_batches() -> usize {
    4
}
const fn default_writers() -> usize {
    4
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            database_url: default_database_url(),
            max_in_flight_batches: default_max_in_flight_batches(),
            writers: default_writers(),
            retention_days: 0,
        }
    }
}

impl StoreConfig {
    /// Checks ranges; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if !self.database_url.starts_with("postgres://") && !self.database_url.starts_with("postgresql://") {
            return Err(invalid(
                file,
                "store.database_url",
                format!("is {:?}", crate::redact::url(&self.database_url)),
                "use a postgres://user@host:5432/db URL",
            ));
        }
        in_range(file, "store.max_in_flight_batches", self.max_in_flight_batches, 1..=64, default_max_in_flight_batches())?;
        in_range(file, "store.writers", self.writers, 1..=64, default_writers())?;
        if self.retention_days > 36_500 {
            return Err(invalid(file, "store.retention_days", format!("is {}", self.retention_days), "use 0 (keep everything) to 36500"));
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

/// Debug shows the URL without its password.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let StoreConfig { database_url, max_in_flight_batches, writers, retention_days } = self;
        f.debug_struct("StoreConfig")
            .field("database_url", &crate::redact::url(database_url))
            .field("max_in_flight_batches", max_in_flight_batches)
            .field("writers", writers)
            .field("retention_days", retention_days)
            .finish()
    }
}
