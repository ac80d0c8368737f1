//! `clickstream plugin new`: a plugin project that builds and passes its
//! own test from the first minute, against the newest contract.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::project::{check_name, Kind, Lang};

/// The contract a new transformer targets, and its WIT.
const TRANSFORMER: (&str, &str) = ("0.2.0", include_str!("../../../../sdk/rust/wit/v0.2.0/pipeline.wit"));

/// The contract a new aggregator targets, and its WIT.
const AGGREGATOR: (&str, &str) = ("0.1.0", include_str!("../../../../sdk/rust/wit/v0.1.0/pipeline.wit"));

/// What a transformer's fixture events should become (the same for every language).
const TRANSFORMER_EXPECTED: (&str, &str) =
    ("fixtures/expected.ndjson", include_str!("../../../templates/plugin/common/fixtures/transformer-expected.ndjson"));

/// Files of the Rust transformer project.
const RUST_TRANSFORMER: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../templates/plugin/rust-transformer/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../templates/plugin/rust-transformer/src/lib.rs")),
    TRANSFORMER_EXPECTED,
];

/// Files of the Rust aggregator project.
const RUST_AGGREGATOR: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../../templates/plugin/rust-aggregator/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../templates/plugin/rust-aggregator/src/lib.rs")),
    ("fixtures/expected.ndjson", include_str!("../../../templates/plugin/rust-aggregator/fixtures/expected.ndjson")),
];

/// Files of the JavaScript transformer project.
const JS_TRANSFORMER: &[(&str, &str)] = &[
    ("package.json", include_str!("../../../templates/plugin/js-transformer/package.json")),
    ("jsconfig.json", include_str!("../../../templates/plugin/js-transformer/jsconfig.json")),
    ("src/index.js", include_str!("../../../templates/plugin/js-transformer/src/index.js")),
    TRANSFORMER_EXPECTED,
];

/// The JavaScript SDK (`sdk/js`), written as is into each JavaScript
/// project: the helper module beside src/index.js (the build bundles it),
/// and TypeScript declarations for editors (the helpers', and the
/// contract's as `jco guest-types` generates them from the WIT).
const JS_SDK: &[(&str, &str)] = &[
    ("src/clickstream-plugin.js", include_str!("../../../../sdk/js/clickstream-plugin.js")),
    ("src/clickstream-plugin.d.ts", include_str!("../../../../sdk/js/clickstream-plugin.d.ts")),
    ("types/transformer.d.ts", include_str!("../../../../sdk/js/types/transformer.d.ts")),
    (
        "types/interfaces/clickstream-pipeline-geoip.d.ts",
        include_str!("../../../../sdk/js/types/interfaces/clickstream-pipeline-geoip.d.ts"),
    ),
    ("types/interfaces/clickstream-pipeline-log.d.ts", include_str!("../../../../sdk/js/types/interfaces/clickstream-pipeline-log.d.ts")),
    (
        "types/interfaces/clickstream-pipeline-types.d.ts",
        include_str!("../../../../sdk/js/types/interfaces/clickstream-pipeline-types.d.ts"),
    ),
];

/// Files of the Python transformer project.
const PYTHON_TRANSFORMER: &[(&str, &str)] = &[
    ("pyproject.toml", include_str!("../../../templates/plugin/python-transformer/pyproject.toml")),
    ("app.py", include_str!("../../../templates/plugin/python-transformer/app.py")),
    TRANSFORMER_EXPECTED,
];

/// The Python SDK (`sdk/python`), written as is beside app.py.
const PYTHON_SDK: &[(&str, &str)] = &[("clickstream_plugin.py", include_str!("../../../../sdk/python/clickstream_plugin.py"))];

/// The Rust SDK (`sdk/rust`), written into each Rust project so it builds
/// with the toolchain alone; it owns the WIT, so a Rust project has no
/// `wit/` of its own.
const RUST_SDK: &[(&str, &str)] = &[
    ("clickstream-plugin/Cargo.toml", include_str!("../../../../sdk/rust/Cargo.toml")),
    ("clickstream-plugin/src/lib.rs", include_str!("../../../../sdk/rust/src/lib.rs")),
    ("clickstream-plugin/src/aggregator.rs", include_str!("../../../../sdk/rust/src/aggregator.rs")),
    ("clickstream-plugin/src/attributes.rs", include_str!("../../../../sdk/rust/src/attributes.rs")),
    ("clickstream-plugin/src/hll.rs", include_str!("../../../../sdk/rust/src/hll.rs")),
    ("clickstream-plugin/src/settings.rs", include_str!("../../../../sdk/rust/src/settings.rs")),
    ("clickstream-plugin/src/transformer.rs", include_str!("../../../../sdk/rust/src/transformer.rs")),
    ("clickstream-plugin/wit/v0.1.0/pipeline.wit", include_str!("../../../../sdk/rust/wit/v0.1.0/pipeline.wit")),
    ("clickstream-plugin/wit/v0.2.0/pipeline.wit", include_str!("../../../../sdk/rust/wit/v0.2.0/pipeline.wit")),
];

/// Files every project has.
const COMMON: &[(&str, &str)] = &[
    ("README.md", include_str!("../../../templates/plugin/common/README.md")),
    (".gitignore", include_str!("../../../templates/plugin/common/gitignore")),
    ("fixtures/in.ndjson", include_str!("../../../templates/plugin/common/fixtures/in.ndjson")),
];

/// Creates the project `name` in `dir` (default ./NAME), which must not exist
/// or be empty.
pub fn new(name: &str, lang: Lang, world: Kind, dir: Option<PathBuf>) -> anyhow::Result<()> {
    check_name(name)?;
    let (contract, wit, files) = match (lang, world) {
        (Lang::Rust, Kind::Transformer) => (TRANSFORMER.0, TRANSFORMER.1, RUST_TRANSFORMER),
        (Lang::Js, Kind::Transformer) => (TRANSFORMER.0, TRANSFORMER.1, JS_TRANSFORMER),
        (Lang::Python, Kind::Transformer) => (TRANSFORMER.0, TRANSFORMER.1, PYTHON_TRANSFORMER),
        (Lang::Rust, Kind::Aggregator) => (AGGREGATOR.0, AGGREGATOR.1, RUST_AGGREGATOR),
        (_, Kind::Aggregator) => anyhow::bail!(
            "the aggregator template is in Rust only (--lang rust): the aggregator world exports a resource, which the \
             JavaScript and Python templates do not cover yet"
        ),
    };
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() {
        let empty = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?.next().is_none();
        anyhow::ensure!(empty, "{} already exists and is not empty: choose another name or --dir", dir.display());
    }
    let (language, toolchain, source) = match lang {
        Lang::Rust => ("Rust", "cargo build --release --target wasm32-wasip2", "src/lib.rs"),
        Lang::Js => ("JavaScript", "npm install (first time), then npm run build: componentize-qjs, the QuickJS engine", "src/index.js"),
        Lang::Python => ("Python", "a .venv with componentize-py (first time), then componentize-py componentize app", "app.py"),
    };
    let world_name = match world {
        Kind::Transformer => "transformer",
        Kind::Aggregator => "aggregator",
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{world}}", world_name)
            .replace("{{contract}}", contract)
            .replace("{{language}}", language)
            .replace("{{toolchain}}", toolchain)
            .replace("{{source}}", source)
    };
    let wit_dir = match lang {
        Lang::Rust => "clickstream-plugin/wit/",
        Lang::Js | Lang::Python => "wit/",
    };
    let fill = |text: &str| fill(text).replace("{{wit}}", wit_dir);
    for (path, text) in files.iter().chain(COMMON) {
        write(&dir, path, &fill(text))?;
    }
    let sdk = match lang {
        Lang::Rust => RUST_SDK,
        Lang::Js => JS_SDK,
        Lang::Python => PYTHON_SDK,
    };
    sdk.iter().try_for_each(|(path, text)| write(&dir, path, text))?;
    if lang != Lang::Rust {
        write(&dir, "wit/pipeline.wit", wit)?;
    }
    println!("created {} ({language} {world_name} against clickstream:pipeline@{contract})", dir.display());
    println!("next: clickstream plugin build {0} && clickstream plugin test {0}", dir.display());
    Ok(())
}

fn write(dir: &Path, relative: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file added to the SDK and left off [`RUST_SDK`] would be missing
    /// from every new Rust project, which would then not build.
    #[test]
    fn every_file_of_the_rust_sdk_is_written_into_a_new_rust_project() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/rust");
        let mut found = Vec::new();
        let mut dirs = vec![sdk.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    found.push(format!("clickstream-plugin/{}", path.strip_prefix(&sdk).unwrap().display()));
                }
            }
        }
        found.sort();
        let mut written: Vec<String> = RUST_SDK.iter().map(|(path, _)| path.to_string()).collect();
        written.sort();
        assert_eq!(found, written);
    }

    /// The files of `sdk/NAME` (its README and tests aside), by content.
    fn sdk_files(name: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk").join(name)];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    if file != "__pycache__" && file != "node_modules" {
                        dirs.push(path);
                    }
                } else if file != "README.md" && !file.contains(".test.") && !file.ends_with(".pyc") {
                    found.push(std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        found.sort();
        found
    }

    /// A file added to `sdk/js` or `sdk/python` and left off [`JS_SDK`] or
    /// [`PYTHON_SDK`] would be missing from every new project.
    #[test]
    fn every_file_of_the_js_and_python_sdks_is_written_into_a_new_project() {
        for (name, written) in [("js", JS_SDK), ("python", PYTHON_SDK)] {
            let mut written: Vec<String> = written.iter().map(|(_, text)| text.to_string()).collect();
            written.sort();
            assert!(sdk_files(name) == written, "sdk/{name} and the files `plugin new` writes differ");
        }
    }
}
