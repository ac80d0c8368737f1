//! `GET /api/enrichment-data`: the data the enrichment reads besides the
//! events, which is refreshed while the pipeline runs — each GeoIP
//! database's file, type, build date, when it was loaded, and the last new
//! version of it that was refused.

use std::time::SystemTime;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::{Api, ApiResult};
use crate::plugin::geoip::DatabaseInfo;

/// The GeoIP databases in lookup order, as they serve now.
pub(super) async fn enrichment_data(State(api): State<Api>) -> ApiResult<Json<Value>> {
    let pipeline = api.live()?;
    let databases: Vec<Value> = pipeline.geoip.databases().iter().map(database_json).collect();
    Ok(Json(json!({ "geoip": databases })))
}

fn database_json(database: &DatabaseInfo) -> Value {
    json!({
        "name": database.name,
        "path": database.path,
        "database_type": database.database_type,
        "ip_version": database.ip_version,
        "build_epoch": database.build_epoch,
        "built_at": database.built_at(),
        "loaded_at": rfc3339(database.loaded_at),
        "last_refusal": database.last_refusal.as_ref().map(|refusal| json!({ "at": rfc3339(refusal.at), "reason": refusal.reason })),
    })
}

fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339()
}
