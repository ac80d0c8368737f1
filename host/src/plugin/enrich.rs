//! The `enricher` world: loading an enrich plugin and calling it in batches,
//! in the host's records whatever contract version the plugin targets.

use std::sync::Arc;

use wasmtime::component::HasSelf;
use wasmtime::Store;

use super::error::call_error;
use super::geoip::GeoIp;
use super::instance::{identify, prelink, start_instance};
use super::wit::{since_v0_1_0, World};
use super::{HostState, PluginError, PluginInfo, PluginSpec, Slot};
use crate::stages::record::{Enriched, RawEvent, Refusal};

/// One result per input click, in input order.
pub type EnrichResults = Vec<Result<Enriched, Refusal>>;

/// A pre-linked enricher, by contract version.
enum Pre {
    V0_1_0(since_v0_1_0::enricher::EnricherPre<HostState>),
}

/// An instantiated enricher, by contract version.
enum Bindings {
    V0_1_0(since_v0_1_0::enricher::Enricher),
}

/// A compiled, checked enrich plugin, ready to instantiate.
pub struct LoadedEnrich {
    /// What was loaded.
    pub info: PluginInfo,
    spec: PluginSpec,
    pre: Pre,
    geoip: Option<Arc<GeoIp>>,
}

impl std::fmt::Debug for LoadedEnrich {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedEnrich").field("info", &self.info).finish()
    }
}

impl LoadedEnrich {
    /// Compiles `spec.path`, checks it is an enricher of a contract version
    /// this host loads, and instantiates and configures it once, so a broken
    /// plugin fails here rather than on the first batch.
    pub fn load(spec: PluginSpec, geoip: Option<Arc<GeoIp>>) -> Result<Arc<LoadedEnrich>, PluginError> {
        // One version today; a new one adds an arm here and in `Pre`.
        let (pre, info) = prelink(
            &spec,
            World::Enricher,
            |_, linker| since_v0_1_0::enricher::Enricher::add_to_linker::<_, HasSelf<_>>(linker, |s| s),
            |_, pre| Ok(Pre::V0_1_0(since_v0_1_0::enricher::EnricherPre::new(pre)?)),
        )?;
        let mut loaded = LoadedEnrich { info, spec, pre, geoip };
        let mut instance = EnrichInstance::new(&loaded)?;
        let (name, version) = instance.identity();
        identify(&mut loaded.info, &loaded.spec.limits, &mut instance.store, name, version)?;
        Ok(Arc::new(loaded))
    }
}

/// A live instance: one store, owned by one runner.
struct EnrichInstance {
    store: Store<HostState>,
    bindings: Bindings,
}

impl EnrichInstance {
    fn new(loaded: &LoadedEnrich) -> Result<EnrichInstance, PluginError> {
        let (store, bindings) = start_instance(&loaded.spec, &loaded.info, loaded.geoip.clone(), |store| match &loaded.pre {
            Pre::V0_1_0(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                let configured = bindings.call_configure(&mut *store, &loaded.spec.settings)?;
                Ok((Bindings::V0_1_0(bindings), configured))
            }
        })?;
        Ok(EnrichInstance { store, bindings })
    }

    fn identity(&mut self) -> (wasmtime::Result<String>, wasmtime::Result<String>) {
        match &self.bindings {
            Bindings::V0_1_0(b) => (b.call_name(&mut self.store), b.call_version(&mut self.store)),
        }
    }

    /// One call, converted at the boundary: the host's records in, the
    /// host's records out.
    fn enrich(&mut self, batch: &[RawEvent]) -> wasmtime::Result<EnrichResults> {
        match &self.bindings {
            Bindings::V0_1_0(b) => {
                let clicks: Vec<_> = batch.iter().map(Into::into).collect();
                let results = b.call_enrich(&mut self.store, &clicks)?;
                Ok(results.into_iter().map(|r| r.map(Into::into).map_err(Into::into)).collect())
            }
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
        EnrichRunner { slot, instance: None, memory_high_water: 0 }
    }

    /// Enriches one batch on the version live when the call starts, returning
    /// that version's info with exactly one result per input.
    pub fn enrich(&mut self, batch: &[RawEvent]) -> Result<(Arc<LoadedEnrich>, EnrichResults), PluginError> {
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
        let result = instance.enrich(batch);
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
