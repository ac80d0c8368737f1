//! A plugin project on disk: its language (from the manifest it holds), its
//! name, and where its build goes.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// The language a plugin project is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, built with cargo for `wasm32-wasip2` and wit-bindgen.
    Rust,
    /// JavaScript, built with componentize-qjs (QuickJS) from npm.
    Js,
    /// Python, built with componentize-py from PyPI.
    Python,
}

/// The world a plugin implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// A link of the transform chain (contract 0.2.0).
    Transformer,
    /// The aggregator (contract 0.1.0).
    Aggregator,
}

/// A plugin project directory.
pub struct Project {
    pub dir: PathBuf,
    pub name: String,
    pub lang: Lang,
}

impl Project {
    /// Reads the project in `dir`: a Cargo.toml makes it Rust, a
    /// package.json JavaScript, a pyproject.toml Python.
    pub fn open(dir: &Path) -> anyhow::Result<Project> {
        let cargo = dir.join("Cargo.toml");
        let npm = dir.join("package.json");
        let python = dir.join("pyproject.toml");
        let (lang, name) = if cargo.is_file() {
            (Lang::Rust, toml_name(&cargo, "package")?)
        } else if python.is_file() {
            (Lang::Python, toml_name(&python, "project")?)
        } else if npm.is_file() {
            let text = std::fs::read_to_string(&npm).with_context(|| format!("reading {}", npm.display()))?;
            let manifest: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", npm.display()))?;
            let name = manifest.get("name").and_then(|n| n.as_str());
            (Lang::Js, name.with_context(|| format!("{} has no \"name\"", npm.display()))?.to_string())
        } else {
            anyhow::bail!(
                "{} is not a plugin project: it has no Cargo.toml, package.json or pyproject.toml (start one with `clickstream plugin new NAME`)",
                dir.display()
            );
        };
        Ok(Project { dir: dir.to_path_buf(), name, lang })
    }

    /// The built component: dist/NAME.wasm.
    pub fn wasm(&self) -> PathBuf {
        self.dir.join("dist").join(format!("{}.wasm", self.name))
    }

    /// A file of the project.
    pub fn file(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }
}

/// The `name` of the `table` of a TOML manifest.
pub fn toml_name(path: &Path, table: &str) -> anyhow::Result<String> {
    let manifest = read_toml(path)?;
    let name = manifest.get(table).and_then(|p| p.get("name")).and_then(|n| n.as_str());
    Ok(name.with_context(|| format!("{} has no [{table}] name", path.display()))?.to_string())
}

/// A TOML file, parsed.
pub fn read_toml(path: &Path) -> anyhow::Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse().with_context(|| format!("{} is not valid TOML", path.display()))
}

/// A name usable as a directory, a crate, an npm and a Python package, and by the host
/// as a transform name: lower-case ASCII letters, digits and `-`, starting
/// with a letter, at most 64 bytes.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    anyhow::ensure!(
        ok,
        "`{name}` is not a plugin name: use lower-case letters, digits and `-`, starting with a letter (e.g. `utm-attribution`)"
    );
    Ok(())
}
