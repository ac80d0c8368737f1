//! What the integration tests (`tests/`) and the benchmark (`bench/`) share:
//! the stack's addresses, fresh databases, the `clickstream run` process,
//! private servers for fault tests, the built plugins, test-built MMDB files,
//! a headless Chromium for the dashboard, and the metrics of
//! docs/aggregates.md computed independently of the aggregate plugin.
//!
//! Helpers only tests call panic, as a test would; what the benchmark calls
//! returns errors, so one failing arm does not end the run.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

mod broker;
pub mod browser;
mod db;
mod fixture;
mod host;
mod logs;
pub mod mmdb;
mod pipeline;
mod plugins;
mod postgres;
pub mod procfs;
pub mod records;
pub mod reference;
mod running;
mod search;
mod services;

pub use broker::PrivateBroker;
pub use db::{aggregation_caught_up, connect_server, count, create_database, drop_database, fresh_database, reconciled, unique, DbError};
pub use fixture::{pool, Fixture};
pub use host::{host_binary, Host, HostError};
pub use logs::{init_logs, tail};
pub use pipeline::{
    city_db, downloaded_geoip_databases, load_config, set_chain, set_source_key, try_load_config, use_plugin, write_pipeline,
    GEOIP_DATABASES,
};
pub use plugins::{enrich_version, plugin, unseen_build};
pub use postgres::PrivatePostgres;
pub use running::InProcess;
pub use search::PrivateSearch;
pub use services::{brokers, database_url, search_url, services, Services, OVERRIDES};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit/ has a parent folder").to_path_buf()
}

/// Waits until `check` returns true, polling; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
