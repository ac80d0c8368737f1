//! `clickstream plugin …`: the plugin author's loop. `new` scaffolds a
//! project, `build` runs the language's toolchain and precompiles, `test`
//! diffs outcomes against fixtures, `check` runs any component or chain on
//! sample events, and `compile` seals a precompiled artifact.

mod build;
mod check;
mod compile;
mod new;
mod project;
mod test;

use std::path::PathBuf;

use super::parse_setting;
pub use project::{Kind, Lang};

/// Plugin author tools.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run transforms (one file, several files as a chain, or the chain of a
    /// pipeline.toml) or an aggregator on sample events, and print what
    /// became of each event.
    Check {
        /// .wasm components: one aggregator, or transforms run as a chain in
        /// the order given.
        #[arg(required_unless_present = "chain")]
        files: Vec<PathBuf>,
        /// Run the `[[transforms]]` chain of this pipeline.toml, with its
        /// settings, limits and GeoIP databases.
        #[arg(long, conflicts_with_all = ["files", "settings"])]
        chain: Option<PathBuf>,
        /// NDJSON events in the pipeline's event format (default: a built-in sample).
        #[arg(long)]
        events: Option<PathBuf>,
        /// A setting passed to every file's configure, as KEY=VALUE (repeatable).
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// GeoIP databases for the `geoip` import (default: those of the
        /// chain's pipeline.toml, or of ./pipeline.toml when present).
        #[arg(long = "geoip")]
        geoip: Vec<PathBuf>,
    },
    /// Precompile components into `.cwasm` artifacts this host's engine
    /// loads without compiling (a swap in milliseconds). Write the `.cwasm`
    /// beside the `.wasm` before the `.wasm` itself.
    Compile {
        /// .wasm components.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to write the artifact (one file only) [default: FILE.cwasm beside FILE.wasm].
        #[arg(long, short)]
        out: Option<PathBuf>,
        /// The artifact key that seals it, created when absent [default:
        /// $CLICKSTREAM_ARTIFACT_KEY, else artifact.key in the host's cache dir].
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Start a plugin project: the contract's WIT files, a minimal plugin
    /// that builds, test fixtures and a README.
    New {
        /// The plugin's name and directory (lower-case letters, digits and `-`).
        name: String,
        /// The language it is written in.
        #[arg(long, value_enum, default_value_t = Lang::Rust)]
        lang: Lang,
        /// The world it implements.
        #[arg(long, value_enum, default_value_t = Kind::Transformer)]
        world: Kind,
        /// Where to create the project directory [default: ./NAME].
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin project with its language's toolchain (cargo for
    /// wasm32-wasip2; componentize-qjs for JavaScript, componentize-py for Python,
    /// installed into the project when missing) into dist/NAME.wasm, and
    /// precompile dist/NAME.cwasm.
    Build {
        /// The project directory [default: .].
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Skip the precompiled artifact.
        #[arg(long)]
        no_precompile: bool,
        /// The artifact key that seals it (as for `plugin compile`).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Run a built plugin on fixtures/in.ndjson and compare each event's
    /// outcome with fixtures/expected.ndjson; exits non-zero on a difference.
    Test {
        /// The project directory [default: .].
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Write the outcomes to fixtures/expected.ndjson instead of comparing.
        #[arg(long)]
        bless: bool,
        /// A setting passed to configure, as KEY=VALUE (repeatable); added
        /// to those of fixtures/settings.toml.
        #[arg(long = "setting", value_parser = parse_setting)]
        settings: Vec<(String, String)>,
        /// GeoIP databases for the `geoip` import (default: those the
        /// `[geoip] databases` of fixtures/settings.toml lists, else none;
        /// never those of a pipeline.toml, so the answer is the same
        /// wherever the command runs).
        #[arg(long = "geoip")]
        geoip: Vec<PathBuf>,
    },
}

/// Runs a plugin subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { files, chain, events, settings, geoip } => check::check(&files, chain, events, &settings, &geoip),
        Command::Compile { files, out, key } => compile::compile(&files, out, key),
        Command::New { name, lang, world, dir } => new::new(&name, lang, world, dir),
        Command::Build { dir, no_precompile, key } => build::build(&dir, !no_precompile, key).map(|_| ()),
        Command::Test { dir, bless, settings, geoip } => test::test(&dir, bless, settings, &geoip),
    }
}
