//! `[plugins.*]`: which component serves each slot, with what limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::canary::CanaryPolicy;
use super::{PluginLimits, PluginSpec};
use crate::section::{in_range, invalid, Apply, ConfigError};

/// `[plugins]`: the aggregate plugin, and (before 0.2.0) the enrich plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The pre-chain form of a one-transform chain: accepted as
    /// `[[transforms]] name = "enrich"` when no `[[transforms]]` is given.
    #[serde(default)]
    pub enrich: Option<PluginConfig>,
    /// The aggregate plugin (`aggregator` world).
    pub aggregate: PluginConfig,
}

/// `[plugins.NAME]` or one `[[transforms]]` entry. A change swaps the plugin
/// live (golden batch first).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// A transform's name in the chain: unique, lower-case letters, digits,
    /// `-` and `_` (it names the transform in metrics, the API and the
    /// stored chain). Not used for the aggregate plugin.
    #[serde(default)]
    pub name: Option<String>,
    /// The component file; relative paths are relative to pipeline.toml.
    pub path: PathBuf,
    /// Most linear memory an instance may use, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: usize,
    /// Longest one call (one batch) may run, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// A directory the plugin may read, mounted at `/data`. None by default:
    /// plugins get no files, network or environment.
    #[serde(default)]
    pub read_only_dir: Option<PathBuf>,
    /// Passed to the plugin's `configure` as key/value strings.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// What a new build written to `path` does: `swap` serves it at once
    /// (after the golden batch); `shadow` runs it beside the serving version
    /// on `shadow_fraction` of the batches, compares, and stores nothing
    /// from it until promoted through the API; `canary` lets it serve
    /// `canary_fraction` of the batches and promotes or rolls it back by its
    /// figures. Transforms only; applies live, to the next build written.
    #[serde(default)]
    pub rollout: Rollout,
    /// The share of batches a shadow candidate runs on, in (0, 1].
    #[serde(default = "default_shadow_fraction")]
    pub shadow_fraction: f64,
    /// The share of batches a canary serves, in (0, 1): the serving version
    /// keeps the rest, and its figures are the canary's baseline.
    #[serde(default = "default_canary_fraction")]
    pub canary_fraction: f64,
    /// Batches a canary serves before it is judged.
    #[serde(default = "default_canary_batches")]
    pub canary_batches: u64,
    /// How far a canary's error, reject and drop rates may exceed the serving
    /// version's, as a share (0.01: one percentage point).
    #[serde(default = "default_canary_tolerance")]
    pub canary_tolerance: f64,
    /// Batches after a promotion during which a rise in errors or rejects
    /// (judged per `canary_batches`) rolls back to the previous version; 0
    /// for none.
    #[serde(default = "default_watch_batches")]
    pub watch_batches: u64,
}

/// How a new build of a transform goes into service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rollout {
    /// At once, after the golden batch.
    #[default]
    Swap,
    /// Beside the serving version, compared, until promoted or aborted.
    Shadow,
    /// Serving a share of the batches, promoted or rolled back by its figures.
    Canary,
}

const fn default_shadow_fraction() -> f64 {
    1.0
}
const fn default_canary_fraction() -> f64 {
    0.25
}
const fn default_canary_batches() -> u64 {
    20
}
const fn default_canary_tolerance() -> f64 {
    0.01
}
const fn default_watch_batches() -> u64 {
    100
}

const fn default_memory_mib() -> usize {
    256
}
const fn default_deadline_ms() -> u64 {
    1000
}

/// Names a transform may not take: the API's plugin paths use them.
const RESERVED_NAMES: [&str; 1] = ["aggregate"];

/// Checks a plugin table's file name and limits.
fn validate_plugin(file: &Path, key: &str, plugin: &PluginConfig) -> Result<(), ConfigError> {
    if !matches!(plugin.path.extension().and_then(|e| e.to_str()), Some("wasm" | "cwasm")) {
        return Err(invalid(
            file,
            &format!("{key}.path"),
            format!("is {}", plugin.path.display()),
            "point it at a .wasm component (build them with scripts/build-plugins), or a .cwasm from `clickstream plugin compile`",
        ));
    }
    in_range(file, &format!("{key}.memory_mib"), plugin.memory_mib, 16..=4096, default_memory_mib())?;
    in_range(file, &format!("{key}.deadline_ms"), plugin.deadline_ms, 10..=600_000, default_deadline_ms())?;
    if !(plugin.shadow_fraction > 0.0 && plugin.shadow_fraction <= 1.0) {
        return Err(invalid(
            file,
            &format!("{key}.shadow_fraction"),
            format!("is {}", plugin.shadow_fraction),
            "use a share of batches above 0 and at most 1 (default 1)",
        ));
    }
    if !(plugin.canary_fraction > 0.0 && plugin.canary_fraction < 1.0) {
        return Err(invalid(
            file,
            &format!("{key}.canary_fraction"),
            format!("is {}", plugin.canary_fraction),
            "use a share of batches above 0 and below 1 (default 0.25): the serving version's batches are the canary's baseline",
        ));
    }
    in_range(file, &format!("{key}.canary_batches"), plugin.canary_batches, 1..=1_000_000, default_canary_batches())?;
    if !(0.0..=1.0).contains(&plugin.canary_tolerance) {
        return Err(invalid(
            file,
            &format!("{key}.canary_tolerance"),
            format!("is {}", plugin.canary_tolerance),
            "use a share from 0 to 1 (default 0.01, one percentage point)",
        ));
    }
    if plugin.watch_batches > 10_000_000 {
        return Err(invalid(
            file,
            &format!("{key}.watch_batches"),
            format!("is {}", plugin.watch_batches),
            "use 0 to 10000000 (default 100)",
        ));
    }
    Ok(())
}

impl PluginsConfig {
    /// Checks the aggregate plugin's table; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        if self.aggregate.rollout != Rollout::Swap {
            return Err(invalid(
                file,
                "plugins.aggregate.rollout",
                "is not swap".into(),
                "shadow and canary rollouts are for transforms; remove the key",
            ));
        }
        validate_plugin(file, "plugins.aggregate", &self.aggregate)
    }

    /// Resolves relative paths against `base`, the folder of pipeline.toml.
    pub fn resolve(&mut self, base: &Path) {
        for plugin in self.enrich.iter_mut().chain([&mut self.aggregate]) {
            plugin.resolve(base);
        }
    }
}

/// The form `[plugins.enrich]` takes in the chain, for the error that shows it.
const CHAIN_FORM: &str = "[[transforms]]\nname = \"enrich\"\npath = \"target/plugins/enrich.wasm\"";

/// Turns a `[plugins.enrich]` table into the one-transform chain it stands
/// for; refuses a file that has both forms.
pub fn chain_of(file: &Path, legacy: Option<PluginConfig>, transforms: &mut Vec<PluginConfig>) -> Result<(), ConfigError> {
    match legacy {
        None => Ok(()),
        Some(_) if !transforms.is_empty() => Err(invalid(
            file,
            "plugins.enrich",
            "is set beside [[transforms]]".into(),
            &format!("move it into the chain as its first transform:\n{CHAIN_FORM}"),
        )),
        Some(enrich) => {
            transforms.push(PluginConfig { name: Some("enrich".into()), ..enrich });
            Ok(())
        }
    }
}

/// Checks every transform's name (present, well-formed, unique) and table.
pub fn validate_chain(file: &Path, transforms: &[PluginConfig]) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for (i, t) in transforms.iter().enumerate() {
        let key = format!("transforms[{i}]");
        let Some(name) = t.name.as_deref() else {
            return Err(invalid(file, &format!("{key}.name"), "is missing".into(), "name each transform, e.g. name = \"enrich\""));
        };
        let well_formed = !name.is_empty()
            && name.len() <= 64
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !well_formed || RESERVED_NAMES.contains(&name) {
            return Err(invalid(
                file,
                &format!("{key}.name"),
                format!("is {name:?}"),
                "use 1 to 64 lower-case letters, digits, - and _, not \"aggregate\"",
            ));
        }
        if !seen.insert(name) {
            return Err(invalid(file, &format!("{key}.name"), format!("is {name:?} again"), "give each transform its own name"));
        }
        validate_plugin(file, &key, t)?;
    }
    Ok(())
}

impl PluginConfig {
    /// Resolves relative paths against `base`, the folder of pipeline.toml.
    pub fn resolve(&mut self, base: &Path) {
        crate::section::resolve(base, &mut self.path);
        if let Some(dir) = self.read_only_dir.as_mut() {
            crate::section::resolve(base, dir);
        }
    }

    /// The transform's name in the chain (validated to be set).
    pub fn transform_name(&self) -> &str {
        self.name.as_deref().unwrap_or("transform")
    }

    /// The plugin host's view of this table.
    pub fn spec(&self, slot: &str) -> PluginSpec {
        PluginSpec {
            slot: slot.into(),
            path: self.path.clone(),
            settings: self.settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            limits: PluginLimits {
                memory_bytes: self.memory_mib << 20,
                deadline: Duration::from_millis(self.deadline_ms),
                read_only_dir: self.read_only_dir.clone(),
            },
        }
    }

    /// What a canary of a new build must show, by this table.
    pub fn canary_policy(&self) -> CanaryPolicy {
        CanaryPolicy {
            fraction: self.canary_fraction,
            batches: self.canary_batches,
            tolerance: self.canary_tolerance,
            watch_batches: self.watch_batches,
        }
    }

    /// How a change to this table applies: a swap of the slot's plugin. The
    /// rollout keys alone change nothing serving: they apply to the next build.
    pub fn change(&self, next: &PluginConfig) -> Apply {
        let loaded = |c: &PluginConfig| PluginConfig {
            rollout: Rollout::Swap,
            shadow_fraction: default_shadow_fraction(),
            canary_fraction: default_canary_fraction(),
            canary_batches: default_canary_batches(),
            canary_tolerance: default_canary_tolerance(),
            watch_batches: default_watch_batches(),
            ..c.clone()
        };
        if loaded(self) == loaded(next) {
            Apply::Unchanged
        } else {
            Apply::Live
        }
    }
}

/// Debug shows no secret setting (`api_key`, ...).
impl std::fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let PluginConfig {
            name,
            path,
            memory_mib,
            deadline_ms,
            read_only_dir,
            settings,
            rollout,
            shadow_fraction,
            canary_fraction,
            canary_batches,
            canary_tolerance,
            watch_batches,
        } = self;
        f.debug_struct("PluginConfig")
            .field("name", name)
            .field("path", path)
            .field("memory_mib", memory_mib)
            .field("deadline_ms", deadline_ms)
            .field("read_only_dir", read_only_dir)
            .field("settings", &crate::redact::settings(settings))
            .field("rollout", rollout)
            .field("shadow_fraction", shadow_fraction)
            .field("canary_fraction", canary_fraction)
            .field("canary_batches", canary_batches)
            .field("canary_tolerance", canary_tolerance)
            .field("watch_batches", watch_batches)
            .finish()
    }
}
