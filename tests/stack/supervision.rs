//! Every failure is loud and fenced: a pipeline that cannot start exits
//! non-zero with one error line instead of serving a live API in front of
//! nothing; `validate` finds the same problems first; a stage that dies
//! takes the process down (a supervisor restarts it and nothing is lost);
//! a stage that stalls is named by `/ready`.

use clickstream_testkit as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a failing host is given to exit: far more than it needs
/// (docs/commands.md promises seconds for `clickstream run`), so a loaded
/// machine does not fail the test, while a host that hangs (the old
/// behaviour: until SIGTERM) still does.
const EXIT_WAIT: Duration = Duration::from_secs(60);

/// A pipeline file for the test stack with `edit` applied to its text.
fn pipeline(dir: &Path, db: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
    let path = support::write_pipeline(dir, &support::unique("supervision"), &support::unique("supervision"), db, "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// Starts `clickstream run` and waits for it to exit on its own; its exit
/// code and log.
fn run_until_exit(pipeline: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let log = pipeline.with_extension("log");
    let mut host = support::Host::try_start(pipeline, &log, env).unwrap();
    let started = Instant::now();
    while host.child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < EXIT_WAIT, "the host still runs {EXIT_WAIT:?} after start:\n{}", host.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    (host.wait(), host.log())
}

/// The lines of a log that report an error.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.starts_with("error: ")).collect()
}

/// `clickstream validate ARGS`: its exit code and output.
fn validate(args: &[&str]) -> (Option<i32>, String) {
    let binary = support::host_binary().unwrap();
    let mut command = Command::new(binary);
    for name in support::OVERRIDES {
        command.env_remove(name);
    }
    let out = command.arg("validate").args(args).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// A file that is no MMDB database.
fn not_an_mmdb(dir: &Path) -> PathBuf {
    let path = dir.join("broken.mmdb");
    std::fs::write(&path, b"this is not a MaxMind database").unwrap();
    path
}

/// The start-up failures a user makes most: a transform's file missing, a
/// GeoIP file that is no database, a Kafka property librdkafka refuses.
fn broken_pipelines(dir: &Path, db: &str) -> Vec<(&'static str, PathBuf, &'static str)> {
    let missing = dir.join("missing");
    std::fs::create_dir(&missing).unwrap();
    let geoip = dir.join("geoip");
    std::fs::create_dir(&geoip).unwrap();
    let kafka = dir.join("kafka");
    std::fs::create_dir(&kafka).unwrap();
    let broken_db = not_an_mmdb(&geoip);
    vec![
        (
            "a missing plugin",
            pipeline(&missing, db, |t| t.replace(&support::plugin("enrich").display().to_string(), "/nowhere/enrich.wasm")),
            "/nowhere/enrich.wasm",
        ),
        (
            "a file that is no GeoIP database",
            pipeline(&geoip, db, |t| {
                let city = support::city_db().display().to_string();
                t.replace(&city, &broken_db.display().to_string())
            }),
            "broken.mmdb",
        ),
        (
            "a Kafka property librdkafka refuses",
            pipeline(&kafka, db, |t| format!("{t}\n[source.kafka]\n\"no.such.property\" = \"1\"\n")),
            "no.such.property",
        ),
    ]
}

#[test]
fn a_pipeline_that_cannot_start_exits_non_zero_with_one_error_line_naming_the_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::database_url();
    for (what, pipeline, named) in broken_pipelines(dir.path(), &db) {
        let (code, log) = run_until_exit(&pipeline, &[]);
        assert_eq!(code, Some(1), "{what}: exit code; log:\n{log}");
        let errors = error_lines(&log);
        assert_eq!(errors.len(), 1, "{what}: one error line; log:\n{log}");
        assert!(errors[0].contains(named), "{what}: the error names {named}: {}", errors[0]);
        // Each cause once: the error chain used to repeat its source.
        let mut parts: Vec<&str> = errors[0].split(": ").collect();
        parts.sort_unstable();
        let before = parts.len();
        parts.dedup();
        assert_eq!(parts.len(), before, "{what}: a cause printed twice: {}", errors[0]);
    }
}

#[test]
fn validate_finds_each_start_up_failure_before_running() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::database_url();
    for (what, pipeline, named) in broken_pipelines(dir.path(), &db) {
        let (code, out) = validate(&["--offline", pipeline.to_str().unwrap()]);
        assert_eq!(code, Some(1), "{what}: validate fails; output:\n{out}");
        assert!(out.contains("error: ") && out.contains(named), "{what}: names {named}:\n{out}");
    }
}

#[tokio::test]
async fn validate_reports_the_migrations_a_database_lacks_without_applying_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = support::fresh_database("validate_migrations").await;
    let file = pipeline(dir.path(), &db, |t| t);
    let (code, out) = validate(&[file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    let known = clickstream::stages::store::migrations::MIGRATOR.iter().count();
    assert!(out.contains(&format!("store: 0 of {known} migrations applied")), "{out}");
    assert!(out.contains("store: pending migration 0001 "), "{out}");
    let pool = support::pool(&db).await;
    let tables: i64 = support::count(&pool, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").await;
    assert_eq!(tables, 0, "validate applied nothing");

    let windows = clickstream::stages::record::WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 };
    clickstream::stages::store::Store::connect(&db, windows).await.unwrap();
    let (code, out) = validate(&[file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("store: {known} of {known} migrations applied")) && !out.contains("pending"), "{out}");

    let unreachable = pipeline(dir.path(), "postgres://postgres@127.0.0.1:1/none", |t| t);
    let (code, out) = validate(&[unreachable.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--offline"), "the error says how to check the file alone: {out}");
}

/// Events for a topic, so that a batch reaches the transform stage.
async fn produce(topic: &str, events: u64) {
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, topic, 1).await.unwrap();
    let config = clickstream::produce::GeneratorConfig { events, seed: 3, ..Default::default() };
    clickstream::produce::to_kafka(
        clickstream::produce::Generator::new(config),
        &brokers,
        topic,
        None,
        &Default::default(),
        &indicatif::ProgressBar::hidden(),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_panics_stops_the_process_non_zero_and_a_restart_stores_every_event_once() {
    let f = support::Fixture::new("stage_panics").await;
    produce(&f.topic, 300).await;

    let (code, log) = tokio::task::spawn_blocking({
        let file = f.pipeline.clone();
        move || run_until_exit(&file, &[("CLICKSTREAM_TEST_FAULT", "panic:transform")])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{log}");
    let errors = error_lines(&log);
    assert_eq!(errors.len(), 1, "{log}");
    assert!(errors[0].contains("the transform stage panicked: CLICKSTREAM_TEST_FAULT"), "{}", errors[0]);

    let host = support::Host::start(&f.pipeline, &f.dir.path().join("again.log"));
    support::wait_until(Duration::from_secs(120), "every event stored after the restart", || async {
        support::count(&f.pool, "SELECT count(*) FROM events").await >= 300
    })
    .await;
    host.stop().unwrap();
    assert_eq!(support::count(&f.pool, "SELECT count(DISTINCT event_id) FROM events").await, 300);
    assert_eq!(support::count(&f.pool, "SELECT count(*) FROM events").await, 300, "each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_a_stage_that_holds_its_batch_past_the_stall_limit() {
    let f = support::Fixture::with("stage_stalls", "ready_stall_secs = 1\n").await;
    let host =
        support::Host::try_start(&f.pipeline, &f.dir.path().join("host.log"), &[("CLICKSTREAM_TEST_FAULT", "stall:transform")]).unwrap();
    // The API binds port 0 and logs the address it got.
    const AT: &str = "HTTP API and dashboard at http://";
    support::wait_until(Duration::from_secs(60), "the API's address in the log", || async { host.log().contains(AT) }).await;
    let log = host.log();
    let listen = log[log.find(AT).unwrap() + AT.len()..].split('/').next().unwrap().to_string();
    let ready = format!("http://{listen}/ready");
    let client = reqwest::Client::new();
    // Ready before the first batch: nothing is held yet.
    support::wait_until(Duration::from_secs(120), "ready before any batch", || async {
        client.get(&ready).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    produce(&f.topic, 50).await;
    support::wait_until(Duration::from_secs(120), "/ready naming the stalled stage", || async {
        let Ok(response) = client.get(&ready).send().await else { return false };
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let stages = &body["checks"]["stages"];
        status == 503
            && stages["ok"] == false
            && stages["error"].as_str().is_some_and(|e| e.starts_with("the transform stage has held a batch of "))
    })
    .await;
    drop(host);
}
