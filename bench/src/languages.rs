//! `languages`, a transform in JavaScript against the same logic in Rust:
//! plugins/utm (JavaScript, componentize-qjs: QuickJS) and its Rust twin
//! tests/plugins/utm-rust, and the same JavaScript built with jco's other
//! engine, StarlingMonkey, when `scripts/bench` built it
//! (target/plugins/utm-starlingmonkey.wasm). Per build: component size,
//! compile time, precompiled artifact size and load time, events/s on one
//! core through the host's runner at the default batch size (with the
//! longest batch, against the 1 s deadline) and at 512, and linear memory. The outcomes must be
//! equal on every event, or the comparison means nothing.

use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::data::raw_clicks;
use super::stats::{rate, ratio};
use super::{progress, Bench};
use clickstream::plugin::artifact::{self, ArtifactKey};
use clickstream::plugin::transform::{LoadedTransform, TransformRunner};
use clickstream::plugin::{PluginSpec, Slot};
use clickstream::stages::record::{attributes_json, Outcome, TransformEvent};

/// The builds compared, by installed name, and what each is.
const BUILDS: [(&str, &str); 3] = [
    ("utm-rust", "Rust (wit-bindgen)"),
    ("utm", "JavaScript, QuickJS (componentize-qjs)"),
    ("utm-starlingmonkey", "JavaScript, StarlingMonkey (componentize-js)"),
];

/// Runs `languages`.
pub async fn run(bench: &Bench) -> anyhow::Result<Value> {
    tokio::task::block_in_place(|| run_blocking(bench))
}

fn run_blocking(bench: &Bench) -> anyhow::Result<Value> {
    let clicks: Vec<TransformEvent> = raw_clicks(bench, bench.sizes.enrich_events).into_iter().map(TransformEvent::from).collect();
    // The default batch size, and a smaller one.
    let sizes = [bench.sizes.batch_size, 512];
    let mut builds = Vec::new();
    let mut reference: Option<Vec<String>> = None;
    for (name, what) in BUILDS {
        let Ok(path) = bench.plugin(name) else {
            progress(format_args!("  {name}: not built, skipped (scripts/bench builds it)"));
            continue;
        };
        let source = std::fs::read(&path)?;
        let engine = clickstream::plugin::engine();
        let key = ArtifactKey::from_bytes([0; 32]);
        let t = Instant::now();
        let sealed = artifact::compile(engine, &key, &source)?;
        let compile_ms = t.elapsed().as_secs_f64() * 1000.0;
        let hash = clickstream::plugin::content_hash(&source);
        let mut loads: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                artifact::open(engine, &key, &sealed, Some(&hash)).map(|_| t.elapsed().as_secs_f64() * 1000.0)
            })
            .collect::<Result<_, _>>()?;
        loads.sort_by(f64::total_cmp);
        let spec = PluginSpec { slot: "utm".into(), path: path.clone(), settings: vec![], limits: Default::default() };
        let mut runner = TransformRunner::new(Arc::new(Slot::new(LoadedTransform::load(spec, None)?)));

        // Same outcome for every event as the first build, or the figures compare different work.
        let (_, outcomes) = runner.transform(&clicks[..clicks.len().min(4096)])?;
        let seen: Vec<String> = outcomes.iter().map(summary).collect();
        match &reference {
            None => reference = Some(seen),
            Some(first) => {
                if let Some(i) = (0..first.len()).find(|&i| first[i] != seen[i]) {
                    anyhow::bail!("{name} and {} disagree on event {i}: {} vs {}", BUILDS[0].0, first[i], seen[i]);
                }
            }
        }
        let mut per_size = Vec::new();
        for size in sizes {
            for chunk in clicks.chunks(size).take(2) {
                runner.transform(chunk)?;
            }
            let t = Instant::now();
            let mut longest = 0f64;
            for chunk in clicks.chunks(size) {
                let batch = Instant::now();
                std::hint::black_box(runner.transform(chunk)?);
                longest = longest.max(batch.elapsed().as_secs_f64());
            }
            let per_s = rate(clicks.len() as f64, t.elapsed().as_secs_f64());
            per_size.push(
                json!({ "batch_size": size, "events_per_s": per_s, "us_per_event": 1e6 / per_s, "longest_batch_ms": longest * 1000.0 }),
            );
        }
        let at_default = per_size[0]["events_per_s"].as_f64().unwrap_or(0.0);
        progress(format_args!(
            "  {name}: {:.1} MiB, compile {compile_ms:.0} ms, precompiled {:.1} MiB loads in {:.1} ms, {at_default:.0} events/s at batch {}, memory {:.1} MiB",
            source.len() as f64 / 1048576.0,
            sealed.len() as f64 / 1048576.0,
            loads[2],
            sizes[0],
            runner.memory_high_water as f64 / 1048576.0
        ));
        builds.push(json!({
            "build": name,
            "what": what,
            "component_mib": source.len() as f64 / 1048576.0,
            "compile_ms": compile_ms,
            "precompiled_mib": sealed.len() as f64 / 1048576.0,
            "precompiled_load_ms_median": loads[2],
            "events_per_s": at_default,
            "batches": per_size,
            "memory_high_water_mib": runner.memory_high_water as f64 / 1048576.0,
        }));
    }
    anyhow::ensure!(builds.len() >= 2, "`languages` needs utm and utm-rust: run scripts/build-plugins");
    let rust = builds[0]["events_per_s"].as_f64();
    for build in &mut builds {
        build["over_rust"] = json!(ratio(build["events_per_s"].as_f64(), rust));
    }
    Ok(json!({
        "events": clicks.len(),
        "builds": builds,
        "checked": "every build's outcome equal to the Rust build's on the first 4096 events",
        "measures": "utm of already-decoded clicks, one thread (one core), through TransformRunner::transform (convert, lower, call, lift, convert) on a warm instance, at the default batch size and at 512; compile = Engine::precompile_component (Cranelift); load = opening the sealed artifact (Component::deserialize), median of 5; memory = the instance's linear memory high water",
    }))
}

/// What became of an event, comparable across builds.
fn summary(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Keep(e) => format!("keep {} {}", e.raw.url, attributes_json(&e.attributes)),
        Outcome::Drop(reason) => format!("drop {reason}"),
        Outcome::Reject(r) => format!("reject {r:?}"),
    }
}
