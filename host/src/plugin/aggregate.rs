//! The `aggregator` world: loading an aggregate plugin and streaming a run
//! through it in batches.

use std::sync::Arc;

use wasmtime::component::ResourceAny;
use wasmtime::Store;

use super::{call_error, identify, new_store, prelink, HostState, PluginCounters, PluginError, PluginInfo, PluginSpec, Slot};

mod bindings {
    wasmtime::component::bindgen!({
        world: "aggregator",
        path: "../wit/v0.1.0",
    });
}

pub use bindings::clickstream::pipeline::types::{AggregateParams, AggregateRow, StoredClick};
use bindings::{Aggregator, AggregatorPre};

/// A compiled, checked aggregate plugin, ready to instantiate.
pub struct LoadedAggregate {
    /// What was loaded.
    pub info: PluginInfo,
    spec: PluginSpec,
    pre: AggregatorPre<HostState>,
}

impl std::fmt::Debug for LoadedAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedAggregate").field("info", &self.info).finish()
    }
}

impl LoadedAggregate {
    /// Compiles `spec.path`, checks it implements the `aggregator` world, and
    /// instantiates and configures it once.
    pub fn load(spec: PluginSpec) -> Result<Arc<LoadedAggregate>, PluginError> {
        let (pre, info) = prelink(&spec, "aggregator", |_| Ok(()))?;
        let pre = AggregatorPre::new(pre).map_err(|e| PluginError::WrongWorld {
            plugin: spec.slot.clone(),
            path: spec.path.clone(),
            world: "aggregator",
            reason: format!("{e:#}"),
        })?;
        let mut loaded = LoadedAggregate { info, spec, pre };
        let AggregateInstance { mut store, bindings } = AggregateInstance::new(&loaded)?;
        let (name, version) = (bindings.call_name(&mut store), bindings.call_version(&mut store));
        identify(&mut loaded.info, &loaded.spec.limits, &mut store, name, version)?;
        Ok(Arc::new(loaded))
    }

}

struct AggregateInstance {
    store: Store<HostState>,
    bindings: Aggregator,
}

impl AggregateInstance {
    fn new(loaded: &LoadedAggregate) -> Result<AggregateInstance, PluginError> {
        let mut store = new_store(&loaded.spec.limits, None);
        store.set_epoch_deadline(loaded.spec.limits.deadline_ticks());
        let bindings = loaded
            .pre
            .instantiate(&mut store)
            .map_err(|e| call_error(e, &mut store, &loaded.info, &loaded.spec.limits))?;
        match bindings.call_configure(&mut store, &loaded.spec.settings) {
            Ok(Ok(())) => Ok(AggregateInstance { store, bindings }),
            Ok(Err(reason)) => Err(PluginError::Configure {
                plugin: loaded.spec.slot.clone(),
                reason,
            }),
            Err(e) => Err(call_error(e, &mut store, &loaded.info, &loaded.spec.limits)),
        }
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
            instance.store.set_epoch_deadline(loaded.spec.limits.deadline_ticks());
            let run = instance
                .bindings
                .clickstream_pipeline_aggregation()
                .window_run()
                .call_constructor(&mut instance.store, params, from_ms, to_ms)
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
    pub fn push(&mut self, batch: &[StoredClick]) -> Result<(), PluginError> {
        let AggregateRun { loaded, instance, run, .. } = self;
        instance.store.set_epoch_deadline(loaded.spec.limits.deadline_ticks());
        let result = match instance
            .bindings
            .clickstream_pipeline_aggregation()
            .window_run()
            .call_push(&mut instance.store, *run, batch)
        {
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
        instance.store.set_epoch_deadline(loaded.spec.limits.deadline_ticks());
        let rows = instance
            .bindings
            .clickstream_pipeline_aggregation()
            .window_run()
            .call_finish(&mut instance.store, *run)
            .map_err(|e| call_error(e, &mut instance.store, &loaded.info, &loaded.spec.limits));
        let rows = self.counted(rows)?;
        let AggregateRun { instance, run, .. } = &mut self;
        // The instance is dropped with the run; dropping the resource first
        // keeps the guest's accounting honest should instances ever be reused.
        let _ = run.resource_drop(&mut instance.store);
        Ok(rows)
    }
}
