//! `clickstream plugin build`: the language's own toolchain makes the
//! component, the host checks it is a plugin it can run, and seals a
//! precompiled artifact beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use super::compile::Sealer;
use super::project::{read_toml, Lang, Project};

/// Builds the project in `dir` into dist/NAME.wasm (and dist/NAME.cwasm
/// when `precompile`), and returns the component's path.
pub fn build(dir: &Path, precompile: bool, key: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let project = Project::open(dir)?;
    let started = std::time::Instant::now();
    let out = project.wasm();
    std::fs::create_dir_all(out.parent().expect("dist/")).with_context(|| format!("creating {}/dist", dir.display()))?;
    let before = std::fs::metadata(&out).and_then(|m| m.modified()).ok();
    match project.lang {
        Lang::Rust => build_rust(&project, &out)?,
        Lang::Js => build_js(&project)?,
        Lang::Python => build_python(&project, &out)?,
    }
    let written = std::fs::metadata(&out).with_context(|| format!("the build wrote no {}", out.display()))?;
    anyhow::ensure!(before.is_none() || written.modified().ok() != before, "the build did not write {}", out.display());
    let size = written.len();
    println!("built {} ({:.1} MiB) in {:.1} s", out.display(), size as f64 / 1048576.0, started.elapsed().as_secs_f64());
    if precompile {
        Sealer::open(key)?.seal(&out, clickstream::plugin::artifact::beside(&out))?;
    }
    Ok(out)
}

fn build_rust(project: &Project, out: &Path) -> anyhow::Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    if installed.map(|o| !String::from_utf8_lossy(&o.stdout).lines().any(|l| l == "wasm32-wasip2")).unwrap_or(false) {
        eprintln!("installing the wasm32-wasip2 target (rustup target add wasm32-wasip2)...");
        run(Command::new("rustup").args(["target", "add", "wasm32-wasip2"]), "rustup target add wasm32-wasip2")?;
    }
    // Cargo's own convention: a CARGO_TARGET_DIR the author set is where
    // cargo builds (several projects then share their dependencies' builds).
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| project.file("target"));
    eprintln!("cargo build --release --target wasm32-wasip2 in {}...", project.dir.display());
    run(
        Command::new("cargo")
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(project.file("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target_dir),
        "cargo build (is Rust installed? https://rustup.rs)",
    )?;
    let built = target_dir.join("wasm32-wasip2/release").join(format!("{}.wasm", project.name.replace('-', "_")));
    std::fs::copy(&built, out).with_context(|| format!("copying {} to {}", built.display(), out.display()))?;
    Ok(())
}

/// `npm install` when the project has no node_modules yet, then its own
/// `npm run build` (its package.json says how: edit it to change the engine).
fn build_js(project: &Project) -> anyhow::Result<()> {
    let npm_missing = "npm is not installed: install Node.js 20 or newer with npm (e.g. `apt-get install nodejs npm`)";
    if !project.file("node_modules/.bin").is_dir() {
        eprintln!(
            "installing the JavaScript toolchain (package.json's devDependencies) into {}/node_modules with npm...",
            project.dir.display()
        );
        run(Command::new("npm").args(["install", "--no-audit", "--no-fund"]).current_dir(&project.dir), npm_missing)?;
    }
    eprintln!("npm run build in {}...", project.dir.display());
    run(Command::new("npm").args(["run", "build"]).current_dir(&project.dir), npm_missing)
}

/// A .venv with the `build` extra of pyproject.toml (componentize-py) when
/// it has no componentize-py yet, then `componentize-py componentize app`.
fn build_python(project: &Project, out: &Path) -> anyhow::Result<()> {
    // Absolute: the tools run in the project directory.
    let venv = std::path::absolute(project.file(".venv")).context("the project's .venv")?;
    let tool = venv.join("bin/componentize-py");
    if !tool.exists() {
        let manifest = read_toml(&project.file("pyproject.toml"))?;
        let wanted: Vec<String> = manifest
            .get("project")
            .and_then(|p| p.get("optional-dependencies"))
            .and_then(|d| d.get("build"))
            .and_then(|b| b.as_array())
            .map(|list| list.iter().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_else(|| vec!["componentize-py".into()]);
        eprintln!("installing the Python toolchain ({}) into {}/.venv...", wanted.join(", "), project.dir.display());
        let python_missing = "python3 with venv is not installed (e.g. `apt-get install python3 python3-venv`)";
        run(Command::new("python3").args(["-m", "venv", ".venv"]).current_dir(&project.dir), python_missing)?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet"]).args(&wanted).current_dir(&project.dir), python_missing)?;
    }
    eprintln!("componentize-py componentize app in {}...", project.dir.display());
    run(
        Command::new(&tool)
            .args(["-d", "wit", "-w", "transformer", "componentize", "app", "-o"])
            .arg(out.strip_prefix(&project.dir).unwrap_or(out))
            .current_dir(&project.dir),
        "componentize-py is missing from .venv: delete .venv and build again",
    )
}

/// Runs a tool with its output passed through; a failure names the tool
/// and its exit status, `missing` says what to do when it is not installed.
fn run(command: &mut Command, missing: &str) -> anyhow::Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let status = match command.status() {
        Ok(status) => status,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => anyhow::bail!("{program} not found: {missing}"),
        Err(e) => return Err(e).with_context(|| format!("running {program}")),
    };
    anyhow::ensure!(status.success(), "{program} failed ({status}); its output is above");
    Ok(())
}
