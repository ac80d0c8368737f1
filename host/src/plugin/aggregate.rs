//! The `aggregator` world: loading an aggregate plugin and streaming a run
//! through it in batches, in the host's records whatever contract version
//! the plugin targets.

use std::sync::Arc;

use wasmtime::component::ResourceAny;
use wasmtime::Store;

use super::error::call_error;
use super::instance::{identify, prelink, start_instance};
use super::wit::{since_v0_1_0, World};
use super::{HostState, PluginCounters, PluginError, PluginInfo, PluginSpec, Slot, Tiering};
use crate::stages::record::{AggregateParams, AggregateRow, StoredEvent};

/// A pre-linked aggregator, by contract version.
enum Pre {
    V0_1_0(since_v0_1_0::aggregator::AggregatorPre<HostState>),
}

/// An instantiated aggregator, by contract version.
enum Bindings {
    V0_1_0(since_v0_1_0::aggregator::Aggregator),
}

/// A compiled, checked aggregate plugin, ready to instantiate.
pub struct LoadedAggregate {
    /// What was loaded.
    pub info: PluginInfo,
    spec: PluginSpec,
    pre: Pre,
}

impl std::fmt::Debug for LoadedAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAggregate").field("info", &self.info).finish()
    }
}

impl LoadedAggregate {
    /// Compiles `spec.path`, checks it is an aggregator of a contract
    /// version this host loads, and instantiates and configures it once.
    pub fn load(spec: PluginSpec) -> Result<Arc<LoadedAggregate>, PluginError> {
        Self::load_tiered(spec, Tiering::Optimized)
    }

    /// [`LoadedAggregate::load`], compiling as `tiering` allows.
    pub fn load_tiered(spec: PluginSpec, tiering: Tiering) -> Result<Arc<LoadedAggregate>, PluginError> {
        // The aggregator imports nothing of the host's but WASI.
        let (pre, info) = prelink(
            &spec,
            tiering,
            &[World::Aggregator],
            |_, _| Ok(()),
            |_, pre| Ok(Pre::V0_1_0(since_v0_1_0::aggregator::AggregatorPre::new(pre)?)),
        )?;
        let mut loaded = LoadedAggregate { info, spec, pre };
        let mut instance = AggregateInstance::new(&loaded)?;
        let (name, version) = match &instance.bindings {
            Bindings::V0_1_0(b) => (b.call_name(&mut instance.store), b.call_version(&mut instance.store)),
        };
        identify(&mut loaded.info, &loaded.spec.limits, &mut instance.store, name, version)?;
        Ok(Arc::new(loaded))
    }
}

struct AggregateInstance {
    store: Store<HostState>,
    bindings: Bindings,
}

impl AggregateInstance {
    fn new(loaded: &LoadedAggregate) -> Result<AggregateInstance, PluginError> {
        let (store, bindings) = start_instance(&loaded.spec, &loaded.info, None, |store| match &loaded.pre {
            Pre::V0_1_0(pre) => {
                let bindings = pre.instantiate(&mut *store)?;
                let configured = bindings.call_configure(&mut *store, &loaded.spec.settings)?;
                Ok((Bindings::V0_1_0(bindings), configured))
            }
        })?;
        Ok(AggregateInstance { store, bindings })
    }
}

/// One aggregation run in progress on a fresh instance of the version live
/// when it started. Each call is bounded by the plugin's deadline separately,
/// so a long run streams through as many batches as it needs.
pub struct AggregateRun {
    loaded: Arc<LoadedAggregate>,
    instance: AggregateInstance,
    run: ResourceAny,
    counters: Arc<PluginCounters>,
}

impl AggregateRun {
    /// Starts a run over the windows of `[from_ms, to_ms)`.
    pub fn start(slot: &Slot<LoadedAggregate>, params: AggregateParams, from_ms: i64, to_ms: i64) -> Result<AggregateRun, PluginError> {
        let loaded = slot.current();
        let counters = slot.counters().clone();
        counters.calls.inc();
        let started = AggregateInstance::new(&loaded).and_then(|mut instance| {
            super::instance::arm(&mut instance.store, &loaded.spec.limits);
            let run = match &instance.bindings {
                Bindings::V0_1_0(b) => {
                    b.clickstream_pipeline_aggregation().window_run().call_constructor(&mut instance.store, params.into(), from_ms, to_ms)
                }
            }
            .map_err(|e| call_error(e, &mut instance.store, &loaded.info, &loaded.spec.limits))?;
            Ok((instance, run))
        });
        match started {
            Ok((instance, run)) => Ok(AggregateRun { loaded, instance, run, counters }),
            Err(e) => {
                counters.failed(&e);
                Err(e)
            }
        }
    }

    /// Counts a call's outcome and the instance's memory.
    fn counted<T>(&self, result: Result<T, PluginError>) -> Result<T, PluginError> {
        self.counters.calls.inc();
        self.counters.memory(self.instance.store.data().limiter.high_water);
        if let Err(e) = &result {
            self.counters.failed(e);
        }
        result
    }

    /// The version doing this run.
    pub fn plugin(&self) -> &PluginInfo {
        &self.loaded.info
    }

    /// Pushes the next batch, continuing the (user, time, event id) order.
    pub fn push(&mut self, batch: &[StoredEvent]) -> Result<(), PluginError> {
        let AggregateRun { loaded, instance, run, .. } = self;
        super::instance::arm(&mut instance.store, &loaded.spec.limits);
        let pushed = match &instance.bindings {
            Bindings::V0_1_0(b) => {
                let clicks: Vec<_> = batch.iter().map(Into::into).collect();
                b.clickstream_pipeline_aggregation().window_run().call_push(&mut instance.store, *run, &clicks)
            }
        };
        let result = match pushed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(PluginError::Contract {
                plugin: loaded.info.slot.clone(),
                version: loaded.info.version.clone(),
                reason: format!("refused a batch: {reason}"),
            }),
            Err(e) => Err(call_error(e, &mut instance.store, &loaded.info, &loaded.spec.limits)),
        };
        self.counted(result)
    }

    /// Ends the run and returns its rows.
    pub fn finish(mut self) -> Result<Vec<AggregateRow>, PluginError> {
        let AggregateRun { loaded, instance, run, .. } = &mut self;
        super::instance::arm(&mut instance.store, &loaded.spec.limits);
        let rows = match &instance.bindings {
            Bindings::V0_1_0(b) => b
                .clickstream_pipeline_aggregation()
                .window_run()
                .call_finish(&mut instance.store, *run)
                .map(|rows| rows.into_iter().map(Into::into).collect()),
        }
        .map_err(|e| call_error(e, &mut instance.store, &loaded.info, &loaded.spec.limits));
        let rows = self.counted(rows)?;
        let AggregateRun { instance, run, .. } = &mut self;
        // The instance is dropped with the run; dropping the resource first
        // keeps the guest's accounting honest should instances ever be reused.
        let _ = run.resource_drop(&mut instance.store);
        Ok(rows)
    }
}
