//! The plugin author's loop through the real toolchains: `clickstream plugin
//! new`, `build` (cargo for wasm32-wasip2; npm and componentize-qjs for JavaScript) and
//! `test`, from an empty directory. Both templates share one expected file,
//! so the two languages are held to the same outcomes.

use clickstream_testkit as support;

use std::path::Path;
use std::process::Output;

fn clickstream(dir: &Path, args: &[&str]) -> Output {
    let binary = support::host_binary().unwrap_or_else(|e| panic!("{e}"));
    std::process::Command::new(binary)
        .args(args)
        .current_dir(dir)
        // The Rust projects share their dependencies' builds, as an author
        // with several plugins would (the first test to build builds them).
        .env("CARGO_TARGET_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/plugin-author"))
        .output()
        .expect("run clickstream")
}

fn succeeds(dir: &Path, args: &[&str]) -> String {
    let out = clickstream(dir, args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "clickstream {} failed:\n{text}", args.join(" "));
    text
}

/// `new`, `build` and `test` pass; then a change to the plugin's code makes
/// `test` fail with a diff that names the event (or row) and the field,
/// until `--bless` accepts it.
fn author_loop(lang: &str, source: &str, from: &str, to: &str) {
    author_loop_of(
        "transformer",
        lang,
        source,
        (from, to),
        ("event e2 (fixtures/in.ndjson line 2):", "event e1", "keep.attributes.section: expected \"home\", got \"index\""),
    );
}

/// [`author_loop`] for `world`; the change `from` → `to` must produce the
/// `differs` header and `field` line, and not the `same` header.
fn author_loop_of(world: &str, lang: &str, source: &str, (from, to): (&str, &str), (differs, same, field): (&str, &str, &str)) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("artifact.key");
    let key = key.to_str().unwrap();
    succeeds(dir.path(), &["plugin", "new", "utm2", "--lang", lang, "--world", world]);
    // A Rust project's WIT comes with its copy of the SDK, which owns it.
    let wit = if lang == "rust" { "utm2/clickstream-plugin/wit/v0.2.0/pipeline.wit" } else { "utm2/wit/pipeline.wit" };
    assert!(dir.path().join(wit).is_file(), "{wit} missing");
    let built = succeeds(dir.path(), &["plugin", "build", "utm2", "--key", key]);
    assert!(dir.path().join("utm2/dist/utm2.wasm").is_file(), "{built}");
    assert!(dir.path().join("utm2/dist/utm2.cwasm").is_file(), "{built}");
    let tested = succeeds(dir.path(), &["plugin", "test", "utm2"]);
    assert!(tested.contains("ok: all 4 "), "{tested}");

    let file = dir.path().join("utm2").join(source);
    let code = std::fs::read_to_string(&file).unwrap();
    assert!(code.contains(from), "{source} has no {from}");
    std::fs::write(&file, code.replace(from, to)).unwrap();
    succeeds(dir.path(), &["plugin", "build", "utm2", "--no-precompile"]);
    let out = clickstream(dir.path(), &["plugin", "test", "utm2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a changed outcome passed:\n{stdout}");
    assert!(stdout.contains(differs), "{stdout}");
    assert!(stdout.contains(field), "{stdout}");
    assert!(!stdout.contains(same), "only one line changed:\n{stdout}");

    succeeds(dir.path(), &["plugin", "test", "utm2", "--bless"]);
    succeeds(dir.path(), &["plugin", "test", "utm2"]);
}

#[test]
fn a_javascript_plugin_goes_from_new_to_a_passing_test_and_a_change_fails_it_with_a_diff() {
    author_loop("js", "src/index.js", "|| 'home'", "|| 'index'");
}

#[test]
fn a_rust_plugin_goes_from_new_to_a_passing_test_and_a_change_fails_it_with_a_diff() {
    author_loop("rust", "src/lib.rs", "home: \"home\"", "home: \"index\"");
}

#[test]
fn a_rust_aggregator_goes_from_new_to_a_passing_test_and_a_change_fails_it_with_a_diff() {
    author_loop_of(
        "aggregator",
        "rust",
        "src/lib.rs",
        ("group.time_spent_total_ms += spent as u64;", "group.time_spent_total_ms += 2 * spent as u64;"),
        (
            "row window 1795860000000 url https://shop.example/products/shoes country unknown:",
            "url / country",
            "row.time_spent_total_ms: expected 2000, got 4000",
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = clickstream(dir.path(), &["plugin", "new", "agg", "--lang", "js", "--world", "aggregator"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the aggregator template is in Rust only"));
}

#[test]
fn a_project_is_not_created_over_files_and_a_bad_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("taken")).unwrap();
    std::fs::write(dir.path().join("taken/notes.txt"), "mine").unwrap();
    let out = clickstream(dir.path(), &["plugin", "new", "taken", "--lang", "js"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists and is not empty"));
    assert_eq!(std::fs::read_to_string(dir.path().join("taken/notes.txt")).unwrap(), "mine");
    let out = clickstream(dir.path(), &["plugin", "new", "Bad_Name"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a plugin name"));
    let out = clickstream(dir.path(), &["plugin", "test", "taken"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a plugin project"));
}

#[test]
fn a_python_plugin_goes_from_new_to_a_passing_test_and_a_change_fails_it_with_a_diff() {
    author_loop("python", "app.py", "or \"home\"", "or \"index\"");
}

/// A project's fixtures run with the GeoIP data they name and no other:
/// run from a folder whose pipeline.toml lists other databases, `plugin
/// test` still answers as it does in the project (it once took the
/// pipeline's databases, and a fixture passed in one folder and failed in
/// another).
#[test]
fn plugin_test_gives_the_same_answer_wherever_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (gb, au) = (dir.path().join("gb.mmdb"), dir.path().join("au.mmdb"));
    support::mmdb::write_mmdb(
        &serde_json::json!([
            {"path": gb, "ip_version": 4, "layout": "flat", "networks": [["81.2.69.0/24", "GB", "London"]]},
            {"path": au, "ip_version": 4, "layout": "flat", "networks": [["81.2.69.0/24", "AU", "Sydney"]]},
        ])
        .to_string(),
    );
    // A project around the built enrich plugin, which sets the country.
    let project = dir.path().join("geo");
    std::fs::create_dir_all(project.join("dist")).unwrap();
    std::fs::create_dir_all(project.join("fixtures")).unwrap();
    std::fs::write(project.join("Cargo.toml"), "[package]\nname = \"geo\"\nversion = \"0.1.0\"\n").unwrap();
    std::fs::copy(support::plugin("enrich"), project.join("dist/geo.wasm")).unwrap();
    std::fs::copy(&gb, project.join("fixtures/city.mmdb")).unwrap();
    std::fs::write(
        project.join("fixtures/in.ndjson"),
        r#"{"event_id":"e1","user_id":"u1","timestamp":1764000000000,"url":"https://shop.example/","ip":"81.2.69.142","user_agent":"Mozilla/5.0"}
"#,
    )
    .unwrap();
    std::fs::write(project.join("fixtures/settings.toml"), "[geoip]\ndatabases = [\"fixtures/city.mmdb\"]\n").unwrap();
    succeeds(&project, &["plugin", "test", ".", "--bless"]);
    let expected = std::fs::read_to_string(project.join("fixtures/expected.ndjson")).unwrap();
    assert!(expected.contains("\"country\":\"GB\""), "{expected}");

    // From a folder whose pipeline.toml names the other database.
    std::fs::write(dir.path().join("pipeline.toml"), format!("[geoip]\ndatabases = [\"{}\"]\n", au.display())).unwrap();
    let tested = succeeds(dir.path(), &["plugin", "test", "geo"]);
    assert!(tested.contains("ok: all 1 "), "{tested}");

    // Without [geoip] the fixture runs with none, wherever it runs: the
    // pipeline's database is not taken instead.
    std::fs::write(project.join("fixtures/settings.toml"), "").unwrap();
    let out = clickstream(dir.path(), &["plugin", "test", "geo"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && stdout.contains("keep.country: expected \"GB\", got nothing"), "{stdout}");
}
