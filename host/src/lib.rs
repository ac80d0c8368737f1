//! The clickstream pipeline runtime: Kafka → WASM enrich → PostgreSQL →
//! WASM aggregate → Elasticsearch. See `docs/ARCHITECTURE.md` for the map.
//!
//! - [`stages`]: the data plane, one module per stage in data-flow order;
//! - [`plugin`]: the WASM plugin host and the versioned contract;
//! - [`runtime`]: the control plane (wiring, hot reload, HTTP API);
//! - [`config`]: pipeline.toml, composed from each component's section;
//!   [`section`] what every section shares (errors, range checks, how a
//!   change applies), a leaf so the sections need not import `config`;
//! - shared infrastructure: [`kafka`], [`postgres`], [`stats`], [`redact`]
//!   (secrets out of URLs wherever they are shown), [`backoff`] (how retry
//!   loops wait), and the load generator [`produce`];
//! - [`fuzzing`]: the properties the fuzz targets in `fuzz/` check.
#![deny(missing_docs)]

pub mod backoff;
pub mod config;
pub mod fence;
pub mod fuzzing;
pub mod kafka;
pub mod plugin;
pub mod postgres;
pub mod produce;
pub mod redact;
pub mod runtime;
pub mod section;
pub mod stages;
pub mod stats;
