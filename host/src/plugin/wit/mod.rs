//! The plugin contract, one module per released WIT version (`wit/vX.Y.Z/`,
//! frozen once released): each declares its `VERSION` and `MIN_VERSION`,
//! runs `bindgen!` for the version's worlds, serves its imports and converts
//! its types to and from the host's records. A new version is a new module;
//! the runners dispatch over an enum of versions.
//!
//! Which version and world a component targets is read from its imports and
//! exports before it is linked, so a plugin built for another contract is
//! refused with what it targets and what this host supports, not with a
//! link error.

pub mod since_v0_1_0;
pub mod since_v0_2_0;

use std::fmt;

use wasmtime::component::Component;

/// A contract (package) version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u64, pub u64, pub u64);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

impl Version {
    fn parse(text: &str) -> Option<Version> {
        let core = text.split(['-', '+']).next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let version = Version(parts.next()??, parts.next()??, parts.next()??);
        parts.next().is_none().then_some(version)
    }
}

/// The package every plugin world belongs to.
pub const PACKAGE: &str = "clickstream:pipeline";

/// The oldest and newest contract versions this host loads.
pub const SUPPORTED: (Version, Version) = (since_v0_1_0::MIN_VERSION, since_v0_2_0::VERSION);

/// A world of the contract: what a plugin is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    /// 0.1.0: enriches raw clicks; runs in the chain as a transform.
    Enricher,
    /// 0.2.0: one link of the transform chain.
    Transformer,
    /// Aggregates stored clicks (the aggregate slot).
    Aggregator,
}

impl World {
    /// The world's name in the WIT.
    pub fn name(self) -> &'static str {
        match self {
            World::Enricher => "enricher",
            World::Transformer => "transformer",
            World::Aggregator => "aggregator",
        }
    }
}

/// What a component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The contract version of its `clickstream:pipeline` imports and exports.
    pub version: Version,
    /// The world its exports implement.
    pub world: World,
}

/// Why a component's target could not be read or is not served here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum TargetError {
    /// No `clickstream:pipeline` import or export names a version, or its
    /// exports fit no world.
    #[error("it does not implement a {PACKAGE} world: {0}")]
    NotAPlugin(String),
    /// Built for a version this host does not load.
    #[error("it targets {PACKAGE}@{found}; this host supports {}..{}", SUPPORTED.0, SUPPORTED.1)]
    Unsupported { found: Version },
}

/// Reads the contract version and world of a compiled component from the
/// names of its imports and exports (`clickstream:pipeline/geoip@0.1.0`,
/// `clickstream:pipeline/aggregation@0.1.0`, the `enrich` function), and
/// checks the version is one this host loads.
pub fn target(component: &Component) -> Result<Target, TargetError> {
    let ty = component.component_type();
    let engine = component.engine();
    let imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let prefix = format!("{PACKAGE}/");
    let mut versions =
        imports.iter().chain(&exports).filter_map(|name| name.strip_prefix(&prefix)?.split_once('@').and_then(|(_, v)| Version::parse(v)));
    let Some(version) = versions.next() else {
        return Err(TargetError::NotAPlugin(format!("it imports {} and exports {}", list(&imports), list(&exports))));
    };
    if let Some(other) = versions.find(|v| *v != version) {
        return Err(TargetError::NotAPlugin(format!("it mixes contract versions {version} and {other}")));
    }
    let world = if exports.iter().any(|e| e == "transform") {
        World::Transformer
    } else if exports.iter().any(|e| e == "enrich") {
        World::Enricher
    } else if exports.iter().any(|e| e.starts_with(&format!("{prefix}aggregation@"))) {
        World::Aggregator
    } else {
        return Err(TargetError::NotAPlugin(format!("its exports ({}) are neither an enricher's nor an aggregator's", list(&exports))));
    };
    if version < SUPPORTED.0 || version > SUPPORTED.1 {
        return Err(TargetError::Unsupported { found: version });
    }
    Ok(Target { version, world })
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_like_semver_cores() {
        assert_eq!(Version::parse("0.1.0"), Some(Version(0, 1, 0)));
        assert_eq!(Version::parse("0.2.0-rc.1"), Some(Version(0, 2, 0)));
        assert_eq!(Version::parse("1.2"), None);
        assert!(Version(0, 10, 0) > Version(0, 9, 3));
        assert_eq!(
            TargetError::Unsupported { found: Version(0, 3, 0) }.to_string(),
            "it targets clickstream:pipeline@0.3.0; this host supports 0.1.0..0.2.0"
        );
    }
}
