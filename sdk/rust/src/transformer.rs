//! The `transformer` world (contract 0.2.0) as a trait.

use std::cell::RefCell;

use serde::de::DeserializeOwned;

use crate::{settings, Event, Outcome};

/// One link of the chain. The host calls [`new`](Self::new) once per
/// instance with the transform's settings, then [`transform`](Self::transform)
/// once per batch.
pub trait Transformer: Sized + 'static {
    /// The name the host records, with the version, in the chain of every
    /// event the plugin keeps (e.g. `enrich`).
    const NAME: &'static str;

    /// The `settings` table of pipeline.toml, decoded by [`settings::from_pairs`]:
    /// a struct with `#[serde(deny_unknown_fields)]` refuses a mistyped key
    /// by name. `()`-like plugins use [`settings::NoSettings`].
    type Settings: DeserializeOwned;

    /// Makes the instance; an error refuses the plugin with this message.
    fn new(settings: Self::Settings) -> Result<Self, String>;

    /// Exactly one outcome per event, in order. Whatever the plugin needs
    /// from the host for the whole batch (GeoIP lookups) is one call.
    fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome>;
}

/// `configure`: the instance made from the settings, or why not.
#[doc(hidden)]
pub fn configure<T: Transformer>(slot: &RefCell<Option<T>>, pairs: Vec<(String, String)>) -> Result<(), String> {
    settings::configure(slot, pairs, T::new)
}

/// `transform`, on the configured instance.
#[doc(hidden)]
pub fn transform<T: Transformer>(slot: &RefCell<Option<T>>, batch: Vec<Event>) -> Vec<Outcome> {
    settings::instance(slot, T::new, T::NAME).transform(batch)
}

/// Exports a [`Transformer`] as the component's `transformer` world
/// (contract 0.2.0). The version the host records is the crate's
/// (`CARGO_PKG_VERSION`) unless given: `export_transformer!(T, version = "1.2.0-rc")`.
#[macro_export]
macro_rules! export_transformer {
    ($ty:ty) => {
        $crate::export_transformer!($ty, version = env!("CARGO_PKG_VERSION"));
    };
    ($ty:ty, version = $version:expr) => {
        const _: () = {
            $crate::__private::thread_local! {
                static INSTANCE: $crate::__private::RefCell<Option<$ty>> = const { $crate::__private::RefCell::new(None) };
            }

            #[allow(dead_code)] // named by the exports, which a native build leaves out
            struct Component;

            impl $crate::v0_2::Guest for Component {
                fn name() -> $crate::__private::String {
                    <$ty as $crate::Transformer>::NAME.into()
                }

                fn version() -> $crate::__private::String {
                    $crate::__private::String::from($version)
                }

                fn configure(
                    settings: $crate::__private::Vec<($crate::__private::String, $crate::__private::String)>,
                ) -> $crate::__private::Result<(), $crate::__private::String> {
                    INSTANCE.with(|slot| $crate::transformer::configure(slot, settings))
                }

                fn transform(batch: $crate::__private::Vec<$crate::Event>) -> $crate::__private::Vec<$crate::Outcome> {
                    INSTANCE.with(|slot| $crate::transformer::transform(slot, batch))
                }
            }

            // Exported from the component only: a native build (the plugin's
            // unit tests) has no use for the symbols, and its linker refuses
            // the component model's export names.
            #[cfg(target_arch = "wasm32")]
            $crate::__export_transformer!(Component);
        };
    };
}

/// The world's own export macro, as wit-bindgen generated it.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_transformer {
    ($component:ident) => {
        $crate::v0_2::__export_transformer_v0_2!($component with_types_in $crate::v0_2);
    };
}
