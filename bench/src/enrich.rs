//! `enrich-wasm`, native vs WASM enrich: the enrich transform's logic compiled
//! natively into the bench (`clickstream_enrich::transform_batch`, the same
//! crate) against the component through the host's runner
//! (`TransformRunner` over `LoadedTransform`), both with the real GeoIP
//! databases, over batch sizes. Isolates what WASM costs: lowering and
//! lifting the batch, the sandboxed code, and the `geoip.lookup-batch` call.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use serde_json::{json, Value};

use super::data::{device, native_geoip, native_settings, raw_clicks, to_native};
use super::stats::{rate, ratio};
use super::{progress, Bench};
use clickstream::plugin::transform::{LoadedTransform, TransformRunner};
use clickstream::plugin::Slot;
use clickstream::stages::record::{Outcome, TransformEvent};

/// The batch sizes of the sweep, the default batch size included.
pub fn batch_sizes(default: usize) -> Vec<usize> {
    let mut sizes = vec![1, 64, 512, 4096, default];
    sizes.sort_unstable();
    sizes.dedup();
    sizes
}

/// Runs `enrich-wasm`.
pub async fn run(bench: &Bench) -> anyhow::Result<Value> {
    tokio::task::block_in_place(|| run_blocking(bench))
}

fn run_blocking(bench: &Bench) -> anyhow::Result<Value> {
    let geoip = bench.geoip()?;
    let clicks: Vec<TransformEvent> = raw_clicks(bench, bench.sizes.enrich_events).into_iter().map(TransformEvent::from).collect();
    let native_clicks: Vec<clickstream_enrich::Event> = clicks.iter().map(|c| to_native(&c.raw)).collect();
    let pipeline = bench.write_pipeline("enrich", "unused", "postgres://unused/unused", &bench.plugin("enrich")?)?;
    let config = bench.load_pipeline(&pipeline)?;
    let t = Instant::now();
    let spec = spec_of(&config)?;
    let loaded = LoadedTransform::load(spec, Some(geoip.clone()))?;
    let load_s = t.elapsed().as_secs_f64();
    let mut runner = TransformRunner::new(Arc::new(Slot::new(loaded)));
    let settings = native_settings();
    let lookup = native_geoip(&geoip);

    // Same answers both ways, or the comparison means nothing.
    let sample = 2000.min(clicks.len());
    let (_, wasm_out) = runner.transform(&clicks[..sample])?;
    let native_out = clickstream_enrich::Enricher::new(settings.clone()).transform_batch(native_clicks[..sample].to_vec(), &lookup);
    for (i, (w, n)) in wasm_out.iter().zip(&native_out).enumerate() {
        let w = match w {
            Outcome::Keep(e) => {
                let x = &e.enrichment;
                Some((x.country.clone(), x.city.clone(), x.browser.clone(), x.os.clone(), x.device.map_or("unknown", |d| d.as_str())))
            }
            _ => None,
        };
        let n = match n {
            clickstream_enrich::Outcome::Keep(e) => {
                Some((e.country.clone(), e.city.clone(), e.browser.clone(), e.os.clone(), device(e.device)))
            }
            _ => None,
        };
        anyhow::ensure!(w == n, "native and WASM enrich disagree on event {i}: {w:?} vs {n:?}");
    }

    // One enricher across batches, as the component keeps one per instance.
    let mut native = clickstream_enrich::Enricher::new(settings);
    let mut sweep = Vec::new();
    for size in batch_sizes(bench.sizes.batch_size) {
        // Warm-up: caches, allocator, the instance's memory.
        for chunk in clicks.chunks(size).take(3) {
            runner.transform(chunk)?;
            native.transform_batch(native_clicks[..chunk.len()].to_vec(), &lookup);
        }
        let t = Instant::now();
        for chunk in native_clicks.chunks(size) {
            let out = native.transform_batch(chunk.to_vec(), &lookup);
            std::hint::black_box(out);
        }
        let native_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for chunk in clicks.chunks(size) {
            let out = runner.transform(chunk)?;
            std::hint::black_box(out);
        }
        let wasm_s = t.elapsed().as_secs_f64();
        let (n, w) = (rate(clicks.len() as f64, native_s), rate(clicks.len() as f64, wasm_s));
        progress(format_args!("  batch {size}: native {n:.0} events/s, WASM {w:.0} events/s ({:.2}×)", w / n));
        sweep.push(json!({
            "batch_size": size,
            "native_events_per_s": n,
            "wasm_events_per_s": w,
            "wasm_over_native": ratio(Some(w), Some(n)),
            "native_us_per_event": native_s * 1e6 / clicks.len() as f64,
            "wasm_us_per_event": wasm_s * 1e6 / clicks.len() as f64,
        }));
    }
    let tiers = tiers(bench, &spec_of(&config)?, &geoip, &clicks, sweep.iter().find(|s| s["batch_size"] == bench.sizes.batch_size))?;
    let at_default = sweep.iter().find(|s| s["batch_size"] == bench.sizes.batch_size).and_then(|s| s["wasm_over_native"].as_f64());
    Ok(json!({
        "events": clicks.len(),
        "default_batch_size": bench.sizes.batch_size,
        "wasm_over_native_at_default": at_default,
        "component_load_seconds": load_s,
        "wasm_memory_high_water_mib": runner.memory_high_water as f64 / 1048576.0,
        "sweep": sweep,
        "tiers": tiers,
        "checked": format!("native and WASM results equal on the first {sample} events"),
        "measures": "enrich of already-decoded clicks, one thread; native = clickstream_enrich::Enricher::transform_batch (one enricher across batches, as the component keeps one per instance) on a clone of the batch; WASM = TransformRunner::transform (convert, lower, call, lift, convert) on a warm instance; both with the host's GeoIp",
    }))
}

fn spec_of(config: &clickstream::config::PipelineConfig) -> anyhow::Result<clickstream::plugin::PluginSpec> {
    config.transform_specs().into_iter().next().context("the bench pipeline has an enrich transform")
}

/// The two compilers side by side: compile time of the component by each,
/// and the baseline (Winch) build's throughput at the default batch size
/// against the optimised (Cranelift) one measured in the sweep.
fn tiers(
    bench: &Bench,
    spec: &clickstream::plugin::PluginSpec,
    geoip: &Arc<clickstream::plugin::geoip::GeoIp>,
    clicks: &[TransformEvent],
    optimized: Option<&Value>,
) -> anyhow::Result<Value> {
    let source = std::fs::read(&spec.path)?;
    let key = clickstream::plugin::artifact::ArtifactKey::from_bytes([0; 32]);
    let t = Instant::now();
    clickstream::plugin::artifact::compile(clickstream::plugin::engine(), &key, &source)?;
    let cranelift_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let baseline = LoadedTransform::load_tiered(spec.clone(), Some(geoip.clone()), clickstream::plugin::Tiering::BaselineOnly)?;
    let winch_ms = t.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(baseline.info.origin == clickstream::plugin::Origin::Baseline, "the baseline build came from {}", baseline.info.origin);
    let mut runner = TransformRunner::new(Arc::new(Slot::new(baseline)));
    let size = bench.sizes.batch_size;
    for chunk in clicks.chunks(size).take(3) {
        runner.transform(chunk)?;
    }
    let t = Instant::now();
    for chunk in clicks.chunks(size) {
        std::hint::black_box(runner.transform(chunk)?);
    }
    let winch = rate(clicks.len() as f64, t.elapsed().as_secs_f64());
    let cranelift = optimized.and_then(|s| s["wasm_events_per_s"].as_f64());
    progress(format_args!(
        "  compile: Cranelift {cranelift_ms:.0} ms, Winch {winch_ms:.0} ms (with instantiation); Winch build {winch:.0} events/s at batch {size}"
    ));
    Ok(json!({
        "cranelift_compile_ms": cranelift_ms,
        "winch_load_ms": winch_ms,
        "winch_events_per_s": winch,
        "cranelift_events_per_s": cranelift,
        "winch_over_cranelift": ratio(Some(winch), cranelift),
        "measures": "Cranelift: Engine::precompile_component of the enrich component (compile only); Winch: LoadedTransform::load_tiered(BaselineOnly) (compile, link, instantiate, configure); throughput at the default batch size as in the sweep",
    }))
}
