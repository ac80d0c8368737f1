//! The dev stack, written once: `scripts/services` runs its `services`
//! command, and the test kit asks it where the services' programs are and
//! whether one answers, so the two cannot drift apart.
//!
//! Standard library only: it is built first on a fresh machine, before any
//! dependency is.
#![deny(missing_docs)]

pub mod probe;
pub mod services;
pub mod tools;

/// The PostgreSQL server used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The Kafka broker used when `KAFKA_BROKERS` is not set.
pub const DEFAULT_BROKERS: &str = "127.0.0.1:9092";
/// The search server used when `ELASTICSEARCH_URL` is not set.
pub const DEFAULT_SEARCH_URL: &str = "http://127.0.0.1:9200";
