//! The `aggregator` world (contract 0.1.0) as two traits: the plugin, and
//! one run over a range of windows.

use std::cell::RefCell;

use serde::de::DeserializeOwned;

use crate::{settings, AggregateParams, AggregateRow, StoredClick};

/// An aggregation. The host makes one [`WindowRun`] per range of windows it
/// (re)computes, pushes the range's stored clicks in batches, and stores
/// the rows [`WindowRun::finish`] returns.
pub trait Aggregator: Sized + 'static {
    /// The name the host reports (e.g. `aggregate`).
    const NAME: &'static str;

    /// The `[plugins.aggregate] settings` table, as for a transformer.
    type Settings: DeserializeOwned;

    /// One run over a range.
    type Run: WindowRun;

    /// Makes the instance; an error refuses the plugin with this message.
    fn new(settings: Self::Settings) -> Result<Self, String>;

    /// Starts a run over the windows of `[from_ms, to_ms)`.
    fn run(&self, params: AggregateParams, from_ms: i64, to_ms: i64) -> Self::Run;
}

/// A run over a range: the host pushes clicks sorted by (user id, time,
/// event id), with each user's next click after the range for time on page.
pub trait WindowRun: 'static {
    /// Takes the next batch; an error fails this range's windows (the host
    /// keeps them dirty and retries), not the others.
    fn push(&mut self, batch: Vec<StoredClick>) -> Result<(), String>;

    /// The rows of the range's windows.
    fn finish(&mut self) -> Vec<AggregateRow>;
}

/// `configure`: the instance made from the settings, or why not.
#[doc(hidden)]
pub fn configure<A: Aggregator>(slot: &RefCell<Option<A>>, pairs: Vec<(String, String)>) -> Result<(), String> {
    settings::configure(slot, pairs, A::new)
}

/// `window-run` constructor, on the configured instance.
#[doc(hidden)]
pub fn start<A: Aggregator>(slot: &RefCell<Option<A>>, params: AggregateParams, from_ms: i64, to_ms: i64) -> A::Run {
    settings::instance(slot, A::new, A::NAME).run(params, from_ms, to_ms)
}

/// Exports an [`Aggregator`] as the component's `aggregator` world
/// (contract 0.1.0); the version as for [`export_transformer!`](crate::export_transformer).
#[macro_export]
macro_rules! export_aggregator {
    ($ty:ty) => {
        $crate::export_aggregator!($ty, version = env!("CARGO_PKG_VERSION"));
    };
    ($ty:ty, version = $version:expr) => {
        const _: () = {
            $crate::__private::thread_local! {
                static INSTANCE: $crate::__private::RefCell<Option<$ty>> = const { $crate::__private::RefCell::new(None) };
            }

            #[allow(dead_code)] // named by the exports, which a native build leaves out
            struct Component;

            impl $crate::v0_1::aggregator::Guest for Component {
                fn name() -> $crate::__private::String {
                    <$ty as $crate::Aggregator>::NAME.into()
                }

                fn version() -> $crate::__private::String {
                    $crate::__private::String::from($version)
                }

                fn configure(
                    settings: $crate::__private::Vec<($crate::__private::String, $crate::__private::String)>,
                ) -> $crate::__private::Result<(), $crate::__private::String> {
                    INSTANCE.with(|slot| $crate::aggregator::configure(slot, settings))
                }
            }

            impl $crate::v0_1::aggregator::exports::clickstream::pipeline::aggregation::Guest for Component {
                type WindowRun = Run;
            }

            #[allow(dead_code)]
            struct Run($crate::__private::RefCell<<$ty as $crate::Aggregator>::Run>);

            impl $crate::v0_1::aggregator::exports::clickstream::pipeline::aggregation::GuestWindowRun for Run {
                fn new(params: $crate::AggregateParams, from_ms: i64, to_ms: i64) -> Self {
                    Run($crate::__private::RefCell::new(INSTANCE.with(|slot| $crate::aggregator::start(slot, params, from_ms, to_ms))))
                }

                fn push(
                    &self,
                    batch: $crate::__private::Vec<$crate::StoredClick>,
                ) -> $crate::__private::Result<(), $crate::__private::String> {
                    $crate::WindowRun::push(&mut *self.0.borrow_mut(), batch)
                }

                fn finish(&self) -> $crate::__private::Vec<$crate::AggregateRow> {
                    $crate::WindowRun::finish(&mut *self.0.borrow_mut())
                }
            }

            // Exported from the component only: a native build (the plugin's
            // unit tests) has no use for the symbols, and its linker refuses
            // the component model's export names.
            #[cfg(target_arch = "wasm32")]
            $crate::__export_aggregator!(Component);
        };
    };
}

/// The world's own export macro, as wit-bindgen generated it.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_aggregator {
    ($component:ident) => {
        $crate::v0_1::aggregator::__export_aggregator_v0_1!($component with_types_in $crate::v0_1::aggregator);
    };
}
