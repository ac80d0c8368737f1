//! Write clickstream plugins in Rust.
//!
//! This crate owns the WIT of every contract version it supports
//! (`wit/v0.1.0`, `wit/v0.2.0`; released versions are frozen) and turns a
//! plain Rust type into a component:
//!
//! ```ignore
//! use clickstream_plugin::{export_transformer, Event, Outcome, Transformer};
//!
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default, deny_unknown_fields)]
//! struct Settings { section_depth: u8 }
//!
//! struct Sections(Settings);
//!
//! impl Transformer for Sections {
//!     const NAME: &'static str = "sections";
//!     type Settings = Settings;
//!     fn new(settings: Settings) -> Result<Self, String> { Ok(Sections(settings)) }
//!     fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
//!         batch.into_iter().map(Outcome::Keep).collect()
//!     }
//! }
//!
//! export_transformer!(Sections);
//! ```
//!
//! Each world is a cargo feature (`transformer`, the default; `aggregator`;
//! `enricher`, the frozen 0.1.0 world): a plugin compiles only the world
//! it implements, since a component holding two contract versions is
//! refused.
//!
//! The settings table of pipeline.toml reaches [`Transformer::new`] as the
//! type the plugin declares ([`settings`]); a key it does not know is
//! refused with the key named, and the host refuses the plugin with that
//! message. A plugin is one instance per host worker: `&mut self` carries
//! caches from batch to batch.

#[cfg(feature = "aggregator")]
pub mod aggregator;
#[cfg(feature = "transformer")]
pub mod attributes;
pub mod hll;
pub mod settings;
#[cfg(feature = "transformer")]
pub mod transformer;

#[cfg(feature = "aggregator")]
pub use aggregator::{Aggregator, WindowRun};
#[cfg(feature = "transformer")]
pub use transformer::Transformer;

/// Contract 0.2.0: the `transformer` world, one link of the chain.
#[cfg(feature = "transformer")]
pub mod v0_2 {
    wit_bindgen::generate!({
        world: "transformer",
        path: "wit/v0.2.0",
        additional_derives: [PartialEq],
        default_bindings_module: "clickstream_plugin::v0_2",
        pub_export_macro: true,
        export_macro_name: "__export_transformer_v0_2",
    });
}

/// Contract 0.1.0 (frozen): the `aggregator` world, and the `enricher`
/// world that 0.2.0's transformer superseded (the host still runs it).
#[cfg(any(feature = "aggregator", feature = "enricher"))]
pub mod v0_1 {
    /// The `aggregator` world.
    #[cfg(feature = "aggregator")]
    pub mod aggregator {
        wit_bindgen::generate!({
            world: "aggregator",
            path: "wit/v0.1.0",
            additional_derives: [PartialEq],
            default_bindings_module: "clickstream_plugin::v0_1::aggregator",
            pub_export_macro: true,
            export_macro_name: "__export_aggregator_v0_1",
        });
    }

    /// The `enricher` world: kept so plugins built for 0.1.0 can still be
    /// rebuilt; new plugins are transformers.
    #[cfg(feature = "enricher")]
    pub mod enricher {
        wit_bindgen::generate!({
            world: "enricher",
            path: "wit/v0.1.0",
            default_bindings_module: "clickstream_plugin::v0_1::enricher",
            pub_export_macro: true,
            export_macro_name: "export_enricher_v0_1",
        });
    }
}

#[cfg(feature = "aggregator")]
pub use v0_1::aggregator::clickstream::pipeline::types::{AggregateParams, AggregateRow, StoredClick};
#[cfg(feature = "transformer")]
pub use v0_2::clickstream::pipeline::geoip::{self, Location};
#[cfg(feature = "transformer")]
pub use v0_2::clickstream::pipeline::log::{self, Level};
#[cfg(feature = "transformer")]
pub use v0_2::clickstream::pipeline::types::{Attribute, DeviceClass, Event, Outcome, Rejection, Value};

/// Keeps a plugin's instance between calls. A component runs on one
/// thread, so the instance needs no lock.
#[doc(hidden)]
pub mod __private {
    pub use std::cell::RefCell;
    pub use std::thread_local;
    pub use std::{result::Result, string::String, vec::Vec};
}
