//! `[plugins.*]`: which component serves each slot, with what limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{PluginLimits, PluginSpec};
use crate::config::{invalid, Apply, ConfigError};

/// `[plugins]`: one table per slot.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// The enrich plugin (`enricher` world).
    pub enrich: PluginConfig,
    /// The aggregate plugin (`aggregator` world).
    pub aggregate: PluginConfig,
}

/// `[plugins.NAME]`. A change swaps the plugin live (golden batch first).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
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
}

const fn default_memory_mib() -> usize {
    256
}
const fn default_deadline_ms() -> u64 {
    1000
}

impl PluginsConfig {
    /// The slots, by name.
    pub fn slots(&self) -> [(&'static str, &PluginConfig); 2] {
        [("enrich", &self.enrich), ("aggregate", &self.aggregate)]
    }

    /// Checks every slot's file name and limits; touches nothing.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        for (name, plugin) in self.slots() {
            if plugin.path.extension().and_then(|e| e.to_str()) != Some("wasm") {
                return Err(invalid(
                    file,
                    &format!("plugins.{name}.path"),
                    format!("is {}", plugin.path.display()),
                    "point it at a .wasm component (build them with scripts/build-plugins)",
                ));
            }
            if !(16..=4096).contains(&plugin.memory_mib) {
                return Err(invalid(
                    file,
                    &format!("plugins.{name}.memory_mib"),
                    format!("is {}", plugin.memory_mib),
                    "use 16 to 4096 (default 256)",
                ));
            }
            if !(10..=600_000).contains(&plugin.deadline_ms) {
                return Err(invalid(
                    file,
                    &format!("plugins.{name}.deadline_ms"),
                    format!("is {}", plugin.deadline_ms),
                    "use 10 to 600000 (default 1000)",
                ));
            }
        }
        Ok(())
    }

    /// Resolves relative paths against `base`, the folder of pipeline.toml.
    pub fn resolve(&mut self, base: &Path) {
        for plugin in [&mut self.enrich, &mut self.aggregate] {
            crate::config::resolve(base, &mut plugin.path);
            if let Some(dir) = plugin.read_only_dir.as_mut() {
                crate::config::resolve(base, dir);
            }
        }
    }
}

impl PluginConfig {
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

    /// How a change to this table applies: a swap of the slot's plugin.
    pub fn change(&self, next: &PluginConfig) -> Apply {
        if self == next {
            Apply::Unchanged
        } else {
            Apply::Live
        }
    }
}
