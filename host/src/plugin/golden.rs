//! The golden batch: sample clicks every new plugin version must handle
//! before it serves (hot reload), and that `plugin check` runs when given no
//! events of the author's own.

use std::sync::Arc;

use super::aggregate::{AggregateRun, LoadedAggregate};
use super::geoip::GeoIp;
use super::transform::{LoadedTransform, TransformRunner};
use super::{PluginError, PluginSpec, Slot, Tiering};
use crate::stages::record::{AggregateParams, RawEvent, StoredEvent};

/// Why a plugin failed its proof.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum ProofError {
    /// It failed to load or to run.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// It ran, but answered wrongly.
    #[error("plugin `{plugin}` failed the golden batch: {reason}")]
    Golden { plugin: String, reason: String },
}

/// Five clicks: two of one user (a time on page), an IPv6 address, a bot,
/// and an address that is none.
pub fn batch() -> Vec<RawEvent> {
    let click = |id: &str, user: &str, ts: i64, url: &str, ip: &str, ua: &str| RawEvent {
        event_id: id.into(),
        user_id: user.into(),
        timestamp_ms: ts,
        url: url.into(),
        ip: ip.into(),
        user_agent: ua.into(),
        referrer: None,
        session_id: None,
    };
    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    vec![
        click("golden-1", "golden-user-1", 1_764_000_000_000, "https://shop.example/", "81.2.69.142", CHROME),
        click("golden-2", "golden-user-1", 1_764_000_012_000, "https://shop.example/cart", "81.2.69.142", CHROME),
        click("golden-3", "golden-user-2", 1_764_000_005_000, "https://shop.example/", "2001:4860:4860::8888", IPHONE),
        click(
            "golden-4",
            "golden-bot",
            1_764_000_007_000,
            "https://shop.example/robots.txt",
            "66.249.66.1",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        ),
        click("golden-5", "golden-user-3", 1_764_000_009_000, "https://shop.example/", "not-an-ip", ""),
    ]
}

/// Clicks as an aggregator sees them (country unknown), in the (user, time,
/// event id) order it requires.
pub fn as_stored(events: Vec<RawEvent>) -> Vec<StoredEvent> {
    let mut stored: Vec<StoredEvent> = events
        .into_iter()
        .map(|c| StoredEvent {
            event_id: c.event_id,
            user_id: c.user_id,
            timestamp_ms: c.timestamp_ms,
            url: c.url,
            country: "unknown".into(),
        })
        .collect();
    stored.sort_by(|a, b| (&a.user_id, a.timestamp_ms, &a.event_id).cmp(&(&b.user_id, b.timestamp_ms, &b.event_id)));
    stored
}

/// The default metric parameters (60 s windows, 30 min session timeout).
pub const PARAMS: AggregateParams = AggregateParams { window_ms: 60_000, session_timeout_ms: 30 * 60_000, keep_query: false };

/// Loads a transform and proves it on the golden batch: one outcome per
/// click, in a call that neither traps nor runs out of time or memory. (What
/// it keeps, drops or rejects is its own business.)
pub fn prove_transform(spec: PluginSpec, geoip: Option<Arc<GeoIp>>, tiering: Tiering) -> Result<Arc<LoadedTransform>, ProofError> {
    prove_loaded(LoadedTransform::load_tiered(spec, geoip, tiering)?)
}

/// Proves a build with other settings ([`LoadedTransform::reconfigured`])
/// on the golden batch.
pub fn prove_reconfigured(build: &LoadedTransform, spec: PluginSpec) -> Result<Arc<LoadedTransform>, ProofError> {
    prove_loaded(build.reconfigured(spec)?)
}

fn prove_loaded(loaded: Arc<LoadedTransform>) -> Result<Arc<LoadedTransform>, ProofError> {
    let mut runner = TransformRunner::new(Arc::new(Slot::new(loaded.clone())));
    let events: Vec<_> = batch().into_iter().map(Into::into).collect();
    runner.transform(&events)?;
    Ok(loaded)
}

/// Loads an aggregate plugin and proves it on the golden batch: every click
/// counted.
pub fn prove_aggregate(spec: PluginSpec, tiering: Tiering) -> Result<Arc<LoadedAggregate>, ProofError> {
    let loaded = LoadedAggregate::load_tiered(spec, tiering)?;
    let stored = as_stored(batch());
    let slot = Slot::new(loaded.clone());
    let mut run = AggregateRun::start(&slot, PARAMS, i64::MIN / 2, i64::MAX / 2)?;
    run.push(&stored)?;
    let rows = run.finish()?;
    let counted: u64 = rows.iter().map(|r| r.clicks).sum();
    if counted != stored.len() as u64 {
        return Err(ProofError::Golden {
            plugin: loaded.info.slot.clone(),
            reason: format!("counted {counted} clicks in a golden batch of {}", stored.len()),
        });
    }
    Ok(loaded)
}
