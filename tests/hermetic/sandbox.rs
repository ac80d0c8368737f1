//! The sandbox against hostile plugins: each way a plugin could hold the
//! host's thread, reach the network, or make the host allocate without
//! bound ends in a typed error, and the next batch is served.

use clickstream_testkit as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clickstream::plugin::compiled::MAX_PLUGIN_FILE_BYTES;
use clickstream::plugin::limits::MAX_LIFT_BYTES;
use clickstream::plugin::transform::{LoadedTransform, TransformRunner};
use clickstream::plugin::{PluginError, PluginLimits, PluginSpec, Slot};
use clickstream::stages::record::{RawEvent, TransformEvent};

fn spec(path: std::path::PathBuf, limits: PluginLimits) -> PluginSpec {
    PluginSpec { slot: "hostile".into(), path, settings: vec![], limits }
}

fn misbehave(limits: PluginLimits) -> TransformRunner {
    let loaded = LoadedTransform::load(spec(support::plugin("misbehave"), limits), None).unwrap();
    TransformRunner::new(Arc::new(Slot::new(loaded)))
}

fn click(user: &str, n: i64) -> TransformEvent {
    RawEvent {
        event_id: format!("{user}-{n}"),
        user_id: user.into(),
        timestamp_ms: 1_700_000_000_000 + n,
        url: "https://shop.example/".into(),
        ip: "8.8.8.8".into(),
        user_agent: "curl/8.4.0".into(),
        referrer: None,
        session_id: None,
    }
    .into()
}

fn still_serves(runner: &mut TransformRunner) {
    let (_, outcomes) = runner.transform(&[click("ok", 99)]).expect("the next batch is served");
    assert_eq!(outcomes.len(), 1);
}

/// A plugin waiting in a host function is out of the epoch's reach; each
/// way of waiting must still end at the deadline, not after the 20 s asked.
fn waiting_hits_the_deadline(user: &str) {
    let limits = PluginLimits { deadline: Duration::from_millis(300), ..PluginLimits::default() };
    let mut runner = misbehave(limits);
    let started = Instant::now();
    let err = runner.transform(&[click("ok", 1), click(user, 2)]).unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, PluginError::Deadline { deadline_ms: 300, .. }), "{user}: {err}");
    assert!(took < Duration::from_secs(10), "{user}: the call returned after {took:?}, not at its deadline");
    still_serves(&mut runner);
}

#[test]
fn a_plugin_sleeping_in_wasi_gets_a_deadline_error() {
    waiting_hits_the_deadline("sleep");
}

#[test]
fn a_plugin_polling_a_clock_gets_a_deadline_error() {
    waiting_hits_the_deadline("poll");
}

#[test]
fn a_plugin_blocking_on_a_pollable_gets_a_deadline_error() {
    waiting_hits_the_deadline("block");
}

#[test]
fn a_plugin_opening_a_socket_is_denied_by_name() {
    let mut runner = misbehave(PluginLimits::default());
    let err = runner.transform(&[click("socket", 1)]).unwrap_err();
    match &err {
        PluginError::Denied { call, .. } => assert_eq!(*call, "wasi:sockets/tcp-create-socket"),
        other => panic!("expected Denied, got {other}"),
    }
    assert_eq!(err.kind(), "denied");
    still_serves(&mut runner);
}

#[test]
fn results_aliasing_one_buffer_stop_at_the_lift_bound_as_a_contract_error() {
    // 200 cities of 1 MiB, all one buffer in the guest: 200 MiB to copy.
    let mut runner = misbehave(PluginLimits::default());
    let batch: Vec<TransformEvent> = (0..200).map(|n| click("alias", n)).collect();
    let err = runner.transform(&batch).unwrap_err();
    match &err {
        PluginError::Contract { reason, .. } => assert!(reason.contains(&MAX_LIFT_BYTES.to_string()), "{reason}"),
        other => panic!("expected a contract error, got {other}"),
    }
    still_serves(&mut runner);
}

#[test]
fn import_arguments_aliasing_one_buffer_stop_at_the_lift_bound_as_a_contract_error() {
    let mut runner = misbehave(PluginLimits::default());
    let err = runner.transform(&[click("alias-import", 1)]).unwrap_err();
    assert!(matches!(err, PluginError::Contract { .. }), "{err}");
    still_serves(&mut runner);
}

#[test]
fn a_plugin_answering_one_outcome_too_few_breaks_the_contract_and_the_next_batch_is_served() {
    let mut runner = misbehave(PluginLimits::default());
    let err = runner.transform(&[click("ok", 1), click("short", 2)]).unwrap_err();
    assert!(matches!(err, PluginError::Contract { ref reason, .. } if reason.contains("returned 1 outcomes for a batch of 2")), "{err}");
    still_serves(&mut runner);
}

#[test]
fn memories_under_the_cap_one_by_one_are_refused_together() {
    // Two memories of 160 MiB each: under the 256 MiB cap alone, 320 MiB together.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("several-memories.wasm");
    let wat = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/plugins/several-memories/component.wat");
    std::fs::write(&path, wat::parse_file(&wat).expect("the test component assembles")).unwrap();
    let err = match LoadedTransform::load(spec(path, PluginLimits::default()), None) {
        Ok(_) => panic!("a component holding 320 MiB of memory loaded under a 256 MiB cap"),
        Err(err) => err,
    };
    match err {
        PluginError::MemoryExceeded { requested, cap, .. } => {
            assert_eq!(cap, 256 << 20);
            assert_eq!(requested, 320 << 20);
        }
        other => panic!("expected MemoryExceeded, got {other}"),
    }
    // The host goes on loading plugins.
    still_serves(&mut misbehave(PluginLimits::default()));
}

#[test]
fn a_plugin_file_past_the_size_cap_is_refused_before_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.wasm");
    // Sparse: the length is what is checked, before anything is read.
    std::fs::File::create(&path).unwrap().set_len(MAX_PLUGIN_FILE_BYTES + 1).unwrap();
    let err = match LoadedTransform::load(spec(path, PluginLimits::default()), None) {
        Ok(_) => panic!("a file past the cap loaded"),
        Err(err) => err,
    };
    assert!(matches!(err, PluginError::TooLarge { bytes, .. } if bytes == MAX_PLUGIN_FILE_BYTES + 1), "{err}");
    assert_eq!(err.kind(), "too_large");
}
