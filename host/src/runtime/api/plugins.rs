//! Plugin management: what serves and what is on trial (`/api/plugins`),
//! and the actions that change it (`/api/plugins/{name}/reload`, `shadow`,
//! `canary`, `promote`, `abort`). Apart from the read-only endpoints
//! because these are the ones the reload token guards, and the only
//! ones that change what the pipeline runs.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::{post, MethodRouter};
use axum::Json;
use serde_json::{json, Value};

use super::{Api, ApiError, ApiResult};
use crate::runtime::pipeline::PluginView;
use crate::runtime::reload::{ReloadAction, ReloadRequest};
use crate::stats::{ReloadOutcome, Stats};

/// How long a forced reload may take before the request gives up waiting
/// (the reload itself still completes or fails on its own).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// A shadow run's report as `/api/plugins` shows it: the sampled
/// differences keep their serving and candidate values only for a request
/// bearing `api.reload_token`. Those values are what clients sent and what
/// the builds made of it (client IPs, URLs, user agents), and the endpoint
/// answers anyone; whoever decides a rollout holds the token anyway. The
/// counts by field are always shown.
fn shadow_report_json(report: &crate::plugin::shadow::ShadowReport, values: bool) -> Value {
    let mut report = json!(report);
    if !values {
        for difference in report["sample"].as_array_mut().into_iter().flatten() {
            if let Some(difference) = difference.as_object_mut() {
                difference.remove("serving");
                difference.remove("candidate");
            }
        }
    }
    report
}

fn plugin_json(plugin: &PluginView, stats: &Stats, shadow_samples: bool) -> Value {
    let (info, counters) = (&plugin.info, &plugin.counters);
    let errors = counters.errors();
    let mut body = json!({
        "slot": info.slot,
        "kind": plugin.kind,
        "name": info.name,
        "version": info.version,
        "contract": info.contract,
        "path": info.path,
        "content_hash": info.content_hash,
        "origin": info.origin,
        "loaded_at": chrono::DateTime::<chrono::Utc>::from(info.loaded_at).to_rfc3339(),
        "calls": counters.calls.get(),
        "errors": errors.values().sum::<u64>(),
        "errors_by_kind": errors,
        "memory_high_water_bytes": counters.memory_high_water(),
        "reloads_accepted": stats.reloads_of(&info.slot, ReloadOutcome::Accepted),
        "reloads_rejected": stats.reloads_of(&info.slot, ReloadOutcome::Rejected),
    });
    if plugin.kind == "transform" {
        let dropped = counters.dropped_by();
        body["records_in"] = json!(counters.records_in.get());
        body["kept"] = json!(counters.kept.get());
        body["rejected"] = json!(counters.rejected.get());
        body["dropped"] = json!(dropped.values().sum::<u64>());
        body["dropped_by_reason"] = json!(dropped);
        body["shadow"] = match &plugin.shadow {
            Some(shadow) => {
                let candidate = shadow.info();
                json!({
                    "candidate": { "name": candidate.name, "version": candidate.version, "content_hash": candidate.content_hash },
                    "fraction": shadow.fraction(),
                    "samples": shadow_samples,
                    "report": shadow_report_json(&shadow.report(), shadow_samples),
                })
            }
            None => Value::Null,
        };
        body["canary"] = match &plugin.canary {
            Some(canary) => {
                let candidate = canary.info();
                json!({
                    "candidate": { "name": candidate.name, "version": candidate.version, "content_hash": candidate.content_hash },
                    "report": canary.report(),
                })
            }
            None => Value::Null,
        };
    }
    body
}

/// The plugins, and the reload history. A request bearing the reload token
/// also gets the values of shadow samples; one bearing a wrong token is
/// refused rather than answered as if it bore none, so that a client with
/// a stale token is told.
pub(super) async fn list(State(api): State<Api>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let pipeline = api.live()?;
    let samples = match bearer(&headers) {
        None => false,
        Some(token) if pipeline.config.api.reload_token.as_deref().is_some_and(|t| constant_time_eq(token.as_bytes(), t.as_bytes())) => {
            true
        }
        Some(_) => return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token: send Authorization: Bearer <api.reload_token> for the values of shadow samples, or no token for the rest",
        )),
    };
    let plugins: Vec<Value> = pipeline.plugins().iter().map(|p| plugin_json(p, &api.stats, samples)).collect();
    Ok(Json(json!({ "plugins": plugins, "reload_history": api.stats.reload_history() })))
}

/// The route of `action`. Every action is asked for and answered the same
/// way, so one handler serves them all.
pub(super) fn action_route(action: ReloadAction) -> MethodRouter<Api> {
    post(move |State(api): State<Api>, Path(name): Path<String>, headers: HeaderMap| act(api, name, headers, action))
}

/// A plugin action that needs the bearer token: reload; start a shadow or a
/// canary of the file; promote or abort the candidate.
async fn act(api: Api, name: String, headers: HeaderMap, action: ReloadAction) -> ApiResult<Json<Value>> {
    let pipeline = api.live()?;
    let Some(expected) = pipeline.config.api.reload_token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "plugin reload through the API is disabled: set api.reload_token in pipeline.toml (16+ characters) to enable it",
        ));
    };
    if !bearer(&headers).is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes())) {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token (Authorization: Bearer <api.reload_token>)"));
    }
    let known: Vec<String> = pipeline.plugins().into_iter().map(|p| p.info.slot).collect();
    if !known.contains(&name) {
        let known = known.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
        return Err(ApiError::new(StatusCode::NOT_FOUND, format!("no plugin named `{name}`; the plugins are {known}")));
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    pipeline
        .reload
        .send(ReloadRequest { slot: name, action, reply })
        .await
        .map_err(|_| ApiError::unavailable("the pipeline is restarting; try again"))?;
    match tokio::time::timeout(RELOAD_TIMEOUT, answer).await {
        Ok(Ok(Ok(info))) => Ok(Json(json!({ "reloaded": action == ReloadAction::Reload, "action": action.as_str(), "plugin": {
            "slot": info.slot, "name": info.name, "version": info.version, "content_hash": info.content_hash, "origin": info.origin,
        }}))),
        Ok(Ok(Err(reason))) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{action:?} refused; the serving version is unchanged: {reason}")))
        }
        Ok(Err(_)) => Err(ApiError::unavailable("the pipeline stopped before the reload finished")),
        Err(_) => Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "the reload is still running; check GET /api/plugins")),
    }
}

/// The token an `Authorization: Bearer <token>` header presents.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// Compares secrets without revealing through timing how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!constant_time_eq(b"abcdefghijklmnop", b"abcdefghijklmnoq"));
        assert!(!constant_time_eq(b"abc", b"abcdefghijklmnop"));
    }
}
