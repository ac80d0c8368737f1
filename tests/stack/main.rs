//! The integration tests that run against the dev stack (`scripts/services
//! up`: Kafka, PostgreSQL, the search server, GeoIP data): ingest, poison,
//! the chain, reloads and rollouts, aggregation and indexing, the API and
//! the dashboard, supervision and the soak. `scripts/test` runs them
//! (`cargo test --test stack`); plain `cargo test` leaves them out, and a
//! run without the stack stops at the first test with the command that
//! starts it.
//!
//! One binary with a module per area: linking the host once instead of once
//! per file is most of what a test build costs.

mod reloading;

mod aggregate;
mod api;
mod api_limits;
mod chain;
mod dashboard;
mod geoip_refresh;
mod index;
mod ingest;
mod javascript;
mod offsets;
mod partitions;
mod poison;
mod reload;
mod rollout;
mod soak;
mod supervision;
mod windows;
