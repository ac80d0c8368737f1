//! The `enricher` world: loading an enrich plugin and calling it in batches.

use std::sync::Arc;

use wasmtime::component::HasSelf;
use wasmtime::Store;

use super::{call_error, identify, new_store, prelink, HostState, PluginError, PluginInfo, PluginSpec, Slot};
use crate::geoip::GeoIp;

mod bindings {
    wasmtime::component::bindgen!({
        world: "enricher",
        path: "../wit/v0.1.0",
    });
}

pub use bindings::clickstream::pipeline::geoip::Location;
pub use bindings::clickstream::pipeline::types::{DeviceClass, EnrichError, EnrichedClick, RawClick};
use bindings::{Enricher, EnricherPre};

/// The name a device class is stored and indexed under.
pub fn device_name(device: DeviceClass) -> &'static str {
    match device {
        DeviceClass::Desktop => "desktop",
        DeviceClass::Mobile => "mobile",
        DeviceClass::Tablet => "tablet",
        DeviceClass::Bot => "bot",
        DeviceClass::Unknown => "unknown",
    }
}

/// One result per input click, in input order.
pub type EnrichResults = Vec<Result<EnrichedClick, EnrichError>>;

impl bindings::clickstream::pipeline::geoip::Host for HostState {
    fn lookup(&mut self, ip: String) -> Option<Location> {
        let found = self.geoip.as_ref()?.lookup(&ip)?;
        Some(Location {
            country: found.country,
            city: found.city,
        })
    }
}

impl bindings::clickstream::pipeline::types::Host for HostState {}

/// A compiled, checked enrich plugin, ready to instantiate.
pub struct LoadedEnrich {
    /// What was loaded.
    pub info: PluginInfo,
    spec: PluginSpec,
    pre: EnricherPre<HostState>,
    geoip: Option<Arc<GeoIp>>,
}

impl std::fmt::Debug for LoadedEnrich {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedEnrich").field("info", &self.info).finish()
    }
}

impl LoadedEnrich {
    /// Compiles `spec.path`, checks it implements the `enricher` world, and
    /// instantiates and configures it once, so a broken plugin fails here
    /// rather than on the first batch.
    pub fn load(spec: PluginSpec, geoip: Option<Arc<GeoIp>>) -> Result<Arc<LoadedEnrich>, PluginError> {
        let (pre, info) = prelink(&spec, "enricher", |linker| Enricher::add_to_linker::<_, HasSelf<_>>(linker, |s| s))?;
        let pre = EnricherPre::new(pre).map_err(|e| PluginError::WrongWorld {
            plugin: spec.slot.clone(),
            path: spec.path.clone(),
            world: "enricher",
            reason: format!("{e:#}"),
        })?;
        let mut loaded = LoadedEnrich { info, spec, pre, geoip };
        let EnrichInstance { mut store, bindings } = EnrichInstance::new(&loaded)?;
        let (name, version) = (bindings.call_name(&mut store), bindings.call_version(&mut store));
        identify(&mut loaded.info, &loaded.spec.limits, &mut store, name, version)?;
        Ok(Arc::new(loaded))
    }

}

/// A live instance: one store, owned by one runner.
struct EnrichInstance {
    store: Store<HostState>,
    bindings: Enricher,
}

impl EnrichInstance {
    fn new(loaded: &LoadedEnrich) -> Result<EnrichInstance, PluginError> {
        let mut store = new_store(&loaded.spec.limits, loaded.geoip.clone());
        store.set_epoch_deadline(loaded.spec.limits.deadline_ticks());
        let bindings = loaded
            .pre
            .instantiate(&mut store)
            .map_err(|e| call_error(e, &mut store, &loaded.info, &loaded.spec.limits))?;
        match bindings.call_configure(&mut store, &loaded.spec.settings) {
            Ok(Ok(())) => Ok(EnrichInstance { store, bindings }),
            Ok(Err(reason)) => Err(PluginError::Configure {
                plugin: loaded.spec.slot.clone(),
                reason,
            }),
            Err(e) => Err(call_error(e, &mut store, &loaded.info, &loaded.spec.limits)),
        }
    }
}

/// Calls the live enrich plugin of a slot, one batch at a time. Owned by one
/// worker; a failed call drops the instance and the next call starts afresh.
pub struct EnrichRunner {
    slot: Arc<Slot<LoadedEnrich>>,
    instance: Option<(Arc<LoadedEnrich>, EnrichInstance)>,
    /// Largest linear memory any instance of this runner reached, in bytes.
    pub memory_high_water: usize,
}

impl EnrichRunner {
    /// A runner over `slot`.
    pub fn new(slot: Arc<Slot<LoadedEnrich>>) -> EnrichRunner {
        EnrichRunner {
            slot,
            instance: None,
            memory_high_water: 0,
        }
    }

    /// Enriches one batch on the version live when the call starts, returning
    /// that version's info with exactly one result per input.
    pub fn enrich(&mut self, batch: &[RawClick]) -> Result<(Arc<LoadedEnrich>, EnrichResults), PluginError> {
        let live = self.slot.current();
        let reuse = matches!(&self.instance, Some((loaded, _)) if Arc::ptr_eq(loaded, &live));
        if !reuse {
            let instance = EnrichInstance::new(&live).inspect_err(|e| self.slot.counters().failed(e))?;
            self.instance = Some((live.clone(), instance));
        }
        let (loaded, instance) = self.instance.as_mut().expect("instance set above");
        let limits = &loaded.spec.limits;
        instance.store.set_epoch_deadline(limits.deadline_ticks());
        let counters = self.slot.counters();
        counters.calls.inc();
        let result = instance.bindings.call_enrich(&mut instance.store, batch);
        self.memory_high_water = self.memory_high_water.max(instance.store.data().limiter.high_water);
        counters.memory(self.memory_high_water);
        let outcome = match result {
            Ok(results) if results.len() == batch.len() => Ok((live, results)),
            Ok(results) => {
                let err = PluginError::Contract {
                    plugin: loaded.info.slot.clone(),
                    version: loaded.info.version.clone(),
                    reason: format!("returned {} results for a batch of {}", results.len(), batch.len()),
                };
                self.instance = None;
                Err(err)
            }
            Err(e) => {
                let err = call_error(e, &mut instance.store, &loaded.info, limits);
                self.instance = None;
                Err(err)
            }
        };
        if let Err(e) = &outcome {
            counters.failed(e);
        }
        outcome
    }

    /// The version a call made now would use.
    pub fn live(&self) -> Arc<LoadedEnrich> {
        self.slot.current()
    }
}
