//! `clickstream plugin new`: a plugin project that builds and passes its
//! own test from the first minute, against the newest contract.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::project::{check_name, Kind, Lang};

/// The contract a new transformer targets, and its WIT.
const TRANSFORMER: (&str, &str) = ("0.2.0", include_str!("../../../../wit/v0.2.0/pipeline.wit"));

/// The contract a new aggregator targets, and its WIT.
const AGGREGATOR: (&str, &str) = ("0.1.0", include_str!("../../../../wit/v0.1.0/pipeline.wit"));

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
    ("Cargo.toml", include_str!("../../../templates/plugin/rust-transformer/Cargo.toml")),
    ("src/lib.rs", include_str!("../../../templates/plugin/rust-aggregator/src/lib.rs")),
    ("fixtures/expected.ndjson", include_str!("../../../templates/plugin/rust-aggregator/fixtures/expected.ndjson")),
];

/// Files of the JavaScript transformer project.
const JS_TRANSFORMER: &[(&str, &str)] = &[
    ("package.json", include_str!("../../../templates/plugin/js-transformer/package.json")),
    ("src/index.js", include_str!("../../../templates/plugin/js-transformer/src/index.js")),
    TRANSFORMER_EXPECTED,
];

/// Files of the Python transformer project.
const PYTHON_TRANSFORMER: &[(&str, &str)] = &[
    ("pyproject.toml", include_str!("../../../templates/plugin/python-transformer/pyproject.toml")),
    ("app.py", include_str!("../../../templates/plugin/python-transformer/app.py")),
    TRANSFORMER_EXPECTED,
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
    for (path, text) in files.iter().chain(COMMON) {
        write(&dir, path, &fill(text))?;
    }
    write(&dir, "wit/pipeline.wit", wit)?;
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
