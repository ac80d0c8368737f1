//! `clickstream plugin compile`: precompile components into sealed
//! `.cwasm` artifacts for a swap in milliseconds (also the last step of
//! `plugin build`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clickstream::plugin::artifact::{self, ArtifactKey};
use clickstream::plugin::compiled;
use clickstream::plugin::wit::{self, PACKAGE};

/// Writes a sealed artifact per file, each checked by loading it back.
pub fn compile(files: &[PathBuf], out: Option<PathBuf>, key: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::ensure!(out.is_none() || files.len() == 1, "--out takes one file; several files each get FILE.cwasm beside them");
    let key = Sealer::open(key)?;
    for file in files {
        key.seal(file, out.clone().unwrap_or_else(|| artifact::beside(file)))?;
    }
    Ok(())
}

/// The host's engine and the artifact key that seals what it compiles.
pub struct Sealer {
    key: ArtifactKey,
}

impl Sealer {
    /// Opens the key at `path`, or the host's default one ($CLICKSTREAM_ARTIFACT_KEY,
    /// else artifact.key in its cache dir), creating it when absent.
    pub fn open(path: Option<PathBuf>) -> anyhow::Result<Sealer> {
        let path = path.or_else(|| compiled::artifact_key_path().map(Path::to_path_buf)).context("no artifact key: pass --key FILE")?;
        let key = ArtifactKey::load_or_create(&path).with_context(|| format!("artifact key {}", path.display()))?;
        println!(
            "engine fingerprint {}; key {}",
            &artifact::hex(&artifact::fingerprint(clickstream::plugin::engine()))[..16],
            path.display()
        );
        Ok(Sealer { key })
    }

    /// Compiles `file` into a sealed artifact at `dest`, written atomically
    /// and loaded back before it is reported.
    pub fn seal(&self, file: &Path, dest: PathBuf) -> anyhow::Result<()> {
        let engine = clickstream::plugin::engine();
        let started = std::time::Instant::now();
        let source = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        anyhow::ensure!(!artifact::is_artifact(&source), "{} is already a precompiled artifact", file.display());
        eprintln!("compiling {} ({:.1} MiB)...", file.display(), source.len() as f64 / 1048576.0);
        let sealed =
            artifact::compile(engine, &self.key, &source).with_context(|| format!("{} is not a WebAssembly component", file.display()))?;
        let hash = clickstream::plugin::content_hash(&source);
        let (component, _) =
            artifact::open(engine, &self.key, &sealed, Some(&hash)).context("the artifact just written does not load back")?;
        let target = wit::target(&component).with_context(|| format!("{} is not a clickstream plugin", file.display()))?;
        anyhow::ensure!(dest != file, "the artifact would overwrite its source {}", file.display());
        let tmp = dest.with_extension("cwasm.tmp");
        std::fs::write(&tmp, &sealed).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &dest).with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
        println!(
            "{}: world {} of {PACKAGE}@{}, sha256 {}; wrote {} ({:.1} MiB) in {} ms",
            file.display(),
            target.world.name(),
            target.version,
            &hash[..12],
            dest.display(),
            sealed.len() as f64 / 1048576.0,
            started.elapsed().as_millis()
        );
        Ok(())
    }
}
