//! A transform of the chain: loading one and calling it in batches, in the
//! host's records whatever contract version it targets (a 0.2.0
//! `transformer`, or a 0.1.0 `enricher` adapted into the chain).

use std::sync::Arc;

use wasmtime::component::{Func, HasSelf};
use wasmtime::Store;

use super::error::call_error;
use super::geoip::GeoIp;
use super::instance::{identify, prelink, start_instance};
use super::wit::{since_v0_1_0, since_v0_2_0, World};
use super::{HostState, PluginError, PluginInfo, PluginSpec, Slot, Tiering};
use crate::stages::record::{Outcome, TransformEvent};

/// A pre-linked transform, by contract version.
#[derive(Clone)]
enum Pre {
    V0_1_0(since_v0_1_0::enricher::EnricherPre<HostState>),
    V0_2_0(since_v0_2_0::transformer::TransformerPre<HostState>),
}

/// An instantiated transform, by contract version (for 0.2.0, with its
/// `transform` export, called with the host's records lowered directly).
enum Bindings {
    V0_1_0(since_v0_1_0::enricher::Enricher),
    V0_2_0(since_v0_2_0::transformer::Transformer, Func),
}

/// A compiled, checked transform, ready to instantiate.
pub struct LoadedTransform {
    /// What was loaded; `slot` is the transform's name in the chain.
    pub info: PluginInfo,
    spec: PluginSpec,
    pre: Pre,
    geoip: Option<Arc<GeoIp>>,
}

impl std::fmt::Debug for LoadedTransform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedTransform").field("info", &self.info).finish()
    }
}

impl LoadedTransform {
    /// Compiles `spec.path`, checks it is a transformer (0.2.0) or an
    /// enricher (0.1.0), and instantiates and configures it once, so a
    /// broken plugin fails here rather than on the first batch.
    pub fn load(spec: PluginSpec, geoip: Option<Arc<GeoIp>>) -> Result<Arc<LoadedTransform>, PluginError> {
        Self::load_tiered(spec, geoip, Tiering::Optimized)
    }

    /// How it was loaded.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// This build (its compiled code, whatever the file holds now) with the
    /// settings and limits of `spec`, instantiated and configured once. What
    /// a settings edit in pipeline.toml swaps in: it changes the settings,
    /// never the code, so during a rollout the serving build stays the
    /// serving build (the file on disk is then the candidate).
    pub fn reconfigured(&self, spec: PluginSpec) -> Result<Arc<LoadedTransform>, PluginError> {
        let info = PluginInfo { slot: spec.slot.clone(), loaded_at: std::time::SystemTime::now(), ..self.info.clone() };
        let loaded = LoadedTransform { info, spec, pre: self.pre.clone(), geoip: self.geoip.clone() };
        TransformInstance::new(&loaded)?;
        Ok(Arc::new(loaded))
    }

    /// [`LoadedTransform::load`], compiling as `tiering` allows.
    pub fn load_tiered(spec: PluginSpec, geoip: Option<Arc<GeoIp>>, tiering: Tiering) -> Result<Arc<LoadedTransform>, PluginError> {
        let (pre, info) = prelink(
            &spec,
            tiering,
            &[World::Transformer, World::Enricher],
            |version, linker| {
                if version >= since_v0_2_0::MIN_VERSION {
                    since_v0_2_0::transformer::Transformer::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
                } else {
                    since_v0_1_0::enricher::Enricher::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
                }
            },
            |version, pre| {
                Ok(if version >= since_v0_2_0::MIN_VERSION {
                    Pre::V0_2_0(since_v0_2_0::transformer::TransformerPre::new(pre)?)
                } else {
                    Pre::V0_1_0(since_v0_1_0::enricher::EnricherPre::new(pre)?)
                })
            },
        )?;
        let mut loaded = LoadedTransform { info, spec, pre, geoip };
        let mut instance = TransformInstance::new(&loaded)?;
        let (name, version) = instance.identity();
        identify(&mut loaded.info, &loaded.spec.limits, &mut instance.store, name, version)?;
        Ok(Arc::new(loaded))
    }
}

/// A live instance: one store, owned by one runner.
struct TransformInstance {
    store: Store<HostState>,
    bindings: Bindings,
}

impl TransformInstance {
    fn new(loaded: &LoadedTransform) -> Result<TransformInstance, PluginError> {
        let settings = &loaded.spec.settings;
        let (store, bindings) = start_instance(&loaded.spec, &loaded.info, loaded.geoip.clone(), |store| match &loaded.pre {
            Pre::V0_1_0(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                let configured = bindings.call_configure(&mut *store, settings)?;
                Ok((Bindings::V0_1_0(bindings), configured))
            }
            Pre::V0_2_0(pre) => {
                let instance = pre.instance_pre().instantiate(&mut *store)?;
                let bindings = since_v0_2_0::transformer::Transformer::new(&mut *store, &instance)?;
                let transform =
                    instance.get_func(&mut *store, "transform").ok_or_else(|| wasmtime::format_err!("no `transform` export"))?;
                let configured = bindings.call_configure(&mut *store, settings)?;
                Ok((Bindings::V0_2_0(bindings, transform), configured))
            }
        })?;
        Ok(TransformInstance { store, bindings })
    }

    fn identity(&mut self) -> (wasmtime::Result<String>, wasmtime::Result<String>) {
        match &self.bindings {
            Bindings::V0_1_0(b) => (b.call_name(&mut self.store), b.call_version(&mut self.store)),
            Bindings::V0_2_0(b, _) => (b.call_name(&mut self.store), b.call_version(&mut self.store)),
        }
    }

    /// One call, converted at the boundary. `None` when the plugin broke the
    /// one-outcome-per-input rule (the count it returned).
    fn transform(&mut self, batch: &[TransformEvent]) -> wasmtime::Result<Result<Vec<Outcome>, usize>> {
        match &self.bindings {
            Bindings::V0_1_0(b) => {
                let clicks: Vec<_> = batch.iter().map(|e| (&e.raw).into()).collect();
                let results = b.call_enrich(&mut self.store, &clicks)?;
                if results.len() != batch.len() {
                    return Ok(Err(results.len()));
                }
                Ok(Ok(batch.iter().zip(results).map(|(input, r)| since_v0_1_0::outcome(input, r)).collect()))
            }
            Bindings::V0_2_0(_, transform) => {
                let outcomes = since_v0_2_0::call_transform(&mut self.store, *transform, batch)?;
                if outcomes.len() != batch.len() {
                    return Ok(Err(outcomes.len()));
                }
                Ok(Ok(outcomes))
            }
        }
    }
}

/// Calls the live version of one transform's slot, one batch at a time.
/// Owned by one worker; a failed call drops the instance and the next call
/// starts afresh.
pub struct TransformRunner {
    slot: Arc<Slot<LoadedTransform>>,
    instance: Option<(Arc<LoadedTransform>, TransformInstance)>,
    /// Largest linear memory any instance of this runner reached, in bytes.
    pub memory_high_water: usize,
}

impl TransformRunner {
    /// A runner over `slot`.
    pub fn new(slot: Arc<Slot<LoadedTransform>>) -> TransformRunner {
        TransformRunner { slot, instance: None, memory_high_water: 0 }
    }

    /// The slot it runs.
    pub fn slot(&self) -> &Arc<Slot<LoadedTransform>> {
        &self.slot
    }

    /// Transforms one batch on the version live when the call starts,
    /// returning that version's info with exactly one outcome per input.
    pub fn transform(&mut self, batch: &[TransformEvent]) -> Result<(Arc<LoadedTransform>, Vec<Outcome>), PluginError> {
        let live = self.slot.current();
        let reuse = matches!(&self.instance, Some((loaded, _)) if Arc::ptr_eq(loaded, &live));
        if !reuse {
            let instance = TransformInstance::new(&live).inspect_err(|e| self.slot.counters().failed(e))?;
            self.instance = Some((live.clone(), instance));
        }
        let (loaded, instance) = self.instance.as_mut().expect("instance set above");
        let limits = &loaded.spec.limits;
        super::instance::arm(&mut instance.store, limits);
        let counters = self.slot.counters();
        counters.calls.inc();
        let result = instance.transform(batch);
        self.memory_high_water = self.memory_high_water.max(instance.store.data().limiter.high_water);
        counters.memory(self.memory_high_water);
        let outcome = match result {
            Ok(Ok(outcomes)) => Ok((live, outcomes)),
            Ok(Err(returned)) => Err(PluginError::Contract {
                plugin: loaded.info.slot.clone(),
                version: loaded.info.version.clone(),
                reason: format!("returned {returned} outcomes for a batch of {}", batch.len()),
            }),
            Err(e) => Err(call_error(e, &mut instance.store, &loaded.info, limits)),
        };
        if let Err(e) = &outcome {
            self.instance = None;
            counters.failed(e);
        }
        outcome
    }

    /// The version a call made now would use.
    pub fn live(&self) -> Arc<LoadedTransform> {
        self.slot.current()
    }
}
