//! The clickstream pipeline runtime: Kafka → WASM enrich → PostgreSQL →
//! WASM aggregate → Elasticsearch. See `docs/ARCHITECTURE.md` for the map.
#![deny(missing_docs)]

pub mod aggregate;
pub mod api;
pub mod bench;
pub mod check;
pub mod config;
pub mod dead_letters;
pub mod decode;
pub mod enrich;
pub mod geoip;
pub mod index;
pub mod kafka;
pub mod pipeline;
pub mod plugin;
pub mod produce;
pub mod reload;
pub mod source;
pub mod stats;
pub mod store;
