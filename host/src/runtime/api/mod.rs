//! The HTTP service: health, readiness, Prometheus metrics, the aggregates
//! query API, plugin management, dead letters and the dashboard.
//!
//! The server lives as long as the process; the pipeline behind it may
//! restart (a reload that changes connection settings), so handlers read the
//! pipeline's live parts from a swappable handle and answer 503 while there
//! are none.

mod aggregates;
pub mod config;
mod db;
mod enrichment;
mod guard;
mod history;
mod metrics;
mod plugins;
mod thread;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;

use crate::plugin::PluginInfo;
use crate::runtime::pipeline::Pipeline;
use crate::runtime::reload::ReloadAction;
use crate::stats::Stats;

pub use aggregates::{AggregateGroup, AggregatesQuery, AggregatesResponse, SeriesPoint};
pub use db::APPLICATION_NAME as DB_APPLICATION_NAME;
pub use metrics::render as render_metrics;

/// How long `/ready` waits for each dependency.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The page served at `/`: one file, no external assets.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Pending dead letters are counted up to this many: counting them all
/// would read the whole table.
const PENDING_COUNT_CAP: i64 = 10_000;

/// How long a pending count is reused. Bounded as it is, a count per
/// request at thousands of requests a second would be most of the
/// database's work (docs/BENCHMARKS.md, arm `api-load`).
const PENDING_COUNT_TTL: Duration = Duration::from_secs(1);

/// The API's state: process-wide metrics, the current pipeline, if any,
/// and what guards the API (its own database pool, the request checks).
#[derive(Clone, Default)]
pub struct Api {
    stats: Arc<Stats>,
    pipeline: Arc<ArcSwapOption<Pipeline>>,
    /// The API's own pool on the current pipeline's database.
    db: Arc<ArcSwapOption<PgPool>>,
    /// Host check and concurrency limit, from `[api]`.
    guard: Arc<ArcSwap<guard::Guard>>,
    /// The last pending dead-letter count, and when it was taken.
    pending: Arc<std::sync::Mutex<Option<(std::time::Instant, i64)>>>,
    /// The main counters over the last half hour, for `/api/history`.
    history: Arc<history::History>,
}

/// An error answer: a status and a JSON body `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

impl Api {
    /// An API over `stats`, with no pipeline yet and the default `[api]`
    /// settings until [`configure`](Self::configure) or a pipeline says others.
    pub fn new(stats: Arc<Stats>) -> Api {
        Api { stats, ..Api::default() }
    }

    /// Applies `[api]`'s host list and concurrency limit to the requests
    /// from now on.
    pub fn configure(&self, config: &config::ApiConfig) {
        let next = guard::Guard::new(config, Some(&self.guard.load()));
        self.guard.store(Arc::new(next));
    }

    /// Points the API at a (re)started pipeline: its `[api]` settings, and a
    /// pool of the API's own on its database (the previous one is closed).
    pub fn serve_pipeline(&self, pipeline: &Pipeline) {
        let api = &pipeline.config.api;
        self.configure(api);
        let pool = match db::pool(&pipeline.config.store.database_url, api) {
            Ok(pool) => Some(Arc::new(pool)),
            Err(e) => {
                tracing::error!(error = %e, "cannot make the API's PostgreSQL pool; the endpoints that read PostgreSQL answer 503");
                None
            }
        };
        *self.pending.lock().expect("never poisoned") = None;
        if let Some(old) = self.db.swap(pool) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { old.close().await });
            }
        }
        self.pipeline.store(Some(Arc::new(pipeline.clone())));
    }

    /// The routes.
    pub fn router(&self) -> Router {
        // POST /api/plugins/{name}/reload, /shadow, /canary, /promote and
        // /abort: one route per action, named as the reloader names it.
        let actions = ReloadAction::ALL.into_iter().fold(Router::new(), |router, action| {
            router.route(&format!("/api/plugins/{{name}}/{}", action.as_str()), plugins::action_route(action))
        });
        actions
            .route("/", get(dashboard))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(prometheus))
            .route("/api/stats", get(stats))
            .route("/api/history", get(counter_history))
            .route("/api/aggregates", get(aggregates))
            .route("/api/plugins", get(plugins::list))
            .route("/api/enrichment-data", get(enrichment::enrichment_data))
            .route("/api/dead-letters", get(dead_letters))
            .route("/api/windows/failing", get(failing_windows))
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint; see docs/http-api.md") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint; see docs/http-api.md")
            })
            .layer(axum::middleware::from_fn_with_state(self.clone(), guard::check))
            .layer(DefaultBodyLimit::max(guard::MAX_BODY_BYTES))
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` turns true.
    pub async fn serve(self, listener: tokio::net::TcpListener, mut shutdown: watch::Receiver<bool>) -> std::io::Result<()> {
        tokio::spawn(self.history.clone().sample_until(self.stats.clone(), shutdown.clone()));
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await
    }

    /// The running pipeline, or why there is none to answer from.
    fn live(&self) -> ApiResult<Arc<Pipeline>> {
        let pipeline = self
            .pipeline
            .load_full()
            .ok_or_else(|| ApiError::unavailable("the pipeline is starting (connecting to PostgreSQL, Kafka and the search server)"))?;
        if *pipeline.draining.borrow() {
            return Err(ApiError::unavailable("the pipeline is draining (stopping, or restarting after a pipeline.toml change)"));
        }
        Ok(pipeline)
    }

    /// The API's pool on the running pipeline's database.
    fn db(&self) -> ApiResult<Arc<PgPool>> {
        self.db.load_full().ok_or_else(|| ApiError::unavailable("the API has no PostgreSQL pool (see the log)"))
    }

    /// Pending dead letters up to [`PENDING_COUNT_CAP`] + 1, counted at most
    /// once per [`PENDING_COUNT_TTL`].
    async fn pending_dead_letters(&self, pool: &PgPool) -> Result<i64, sqlx::Error> {
        if let Some((at, n)) = *self.pending.lock().expect("never poisoned") {
            if at.elapsed() < PENDING_COUNT_TTL {
                return Ok(n);
            }
        }
        let n = crate::runtime::dead_letters::pending_up_to(pool, PENDING_COUNT_CAP + 1).await?;
        *self.pending.lock().expect("never poisoned") = Some((std::time::Instant::now(), n));
        Ok(n)
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn health(State(api): State<Api>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": api.stats.started_at.elapsed().unwrap_or_default().as_secs(),
    }))
}

/// One dependency's readiness.
fn check(result: Result<Value, String>) -> Value {
    match result {
        Ok(detail) => json!({ "ok": true, "detail": detail }),
        Err(error) => json!({ "ok": false, "error": error }),
    }
}

async fn ready(State(api): State<Api>) -> Response {
    let pipeline = match api.live() {
        Ok(pipeline) => pipeline,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": e.message }))).into_response(),
    };
    let postgres = async {
        let ping = sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(pipeline.store.pool());
        match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(json!(crate::redact::url(&pipeline.config.store.database_url))),
            Ok(Err(e)) => Err(crate::redact::in_text(&format!("PostgreSQL: {e}")).into_owned()),
            Err(_) => Err(format!("PostgreSQL did not answer within {CHECK_TIMEOUT:?}")),
        }
    };
    let kafka = async {
        let consumer = pipeline.consumer.clone();
        let topic = pipeline.config.source.topics[0].clone();
        let brokers = crate::redact::in_text(&pipeline.config.source.brokers).into_owned();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            consumer
                .fetch_metadata(Some(&topic), CHECK_TIMEOUT)
                .map(
                    |m| json!({ "brokers": brokers, "topic": topic, "partitions": m.topics().first().map_or(0, |t| t.partitions().len()) }),
                )
                .map_err(|e| crate::redact::in_text(&format!("Kafka ({brokers}): {e}")).into_owned())
        })
        .await
        .unwrap_or_else(|e| Err(format!("Kafka check failed: {e}")))
    };
    let search = async {
        pipeline
            .indexer
            .ping()
            .await
            .map(|()| json!(crate::redact::url(&pipeline.config.index.url)))
            .map_err(|e| crate::redact::in_text(&e.to_string()).into_owned())
    };
    let (postgres, kafka, search) = tokio::join!(postgres, kafka, search);
    let plugins: serde_json::Map<String, Value> =
        pipeline.plugins().iter().map(|p| (p.info.slot.clone(), json!(version_of(&p.info)))).collect();
    let plugins = Ok(Value::Object(plugins));
    let stalled = pipeline.stages.stalled(Duration::from_secs(pipeline.config.api.ready_stall_secs));
    let stages = match stalled.as_slice() {
        [] => Ok(json!("every stage is moving")),
        stalled => Err(stalled.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")),
    };
    let ready = postgres.is_ok() && kafka.is_ok() && search.is_ok() && stages.is_ok();
    let body = json!({
        "ready": ready,
        "checks": {
            "postgres": check(postgres),
            "kafka": check(kafka),
            "search": check(search),
            "plugins": check(plugins),
            "stages": check(stages),
        }
    });
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

fn version_of(info: &PluginInfo) -> String {
    format!("{} {}", info.name, info.version)
}

async fn prometheus(State(api): State<Api>) -> Response {
    let pipeline = api.live().ok();
    match metrics::render(&api.stats, pipeline.as_deref()) {
        Ok(body) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}")).into_response(),
    }
}

async fn stats(State(api): State<Api>) -> Json<Value> {
    let s = &api.stats;
    let offsets = s.partitions();
    let lag_total: i64 = offsets.values().filter_map(|o| o.lag()).sum();
    let partitions: Vec<Value> = offsets
        .into_iter()
        .map(|((topic, partition), o)| {
            json!({ "topic": topic, "partition": partition, "high_watermark": o.high_watermark, "stored_next": o.stored_next, "lag": o.lag() })
        })
        .collect();
    let store = metrics::batch_seconds_quantiles(s, crate::stats::BatchStage::Store, &[0.5, 0.99]);
    Json(json!({
        "uptime_s": s.started_at.elapsed().unwrap_or_default().as_secs_f64(),
        "consumed": s.consumed.get(),
        "consumed_bytes": s.consumed_bytes.get(),
        "stored": s.stored.get(),
        "dead_lettered": s.dead_lettered.get(),
        "redelivered": s.redelivered.get(),
        "duplicates": s.duplicates.get(),
        "windows_aggregated": s.windows_aggregated.get(),
        "documents_indexed": s.documents_indexed.get(),
        "documents_rejected": s.documents_rejected.get(),
        "lag_total": lag_total,
        "partitions": partitions,
        "store_batch_seconds_p50": store[0],
        "store_batch_seconds_p99": store[1],
    }))
}

/// The main counters sampled over the last half hour (see `history.rs`).
async fn counter_history(State(api): State<Api>) -> Json<history::HistoryAnswer> {
    Json(api.history.answer(history::Sample::of(&api.stats)))
}

async fn aggregates(State(api): State<Api>, Query(raw): Query<Vec<(String, String)>>) -> ApiResult<Json<AggregatesResponse>> {
    let query = AggregatesQuery::parse(&raw, chrono::Utc::now().timestamp_millis()).map_err(ApiError::bad_request)?;
    let pipeline = api.live()?;
    let window_ms = pipeline.config.aggregate.window_secs as i64 * 1000;
    aggregates::run(&pipeline.indexer, &query, window_ms).await.map(Json).map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterParams {
    limit: Option<String>,
    after: Option<String>,
    all: Option<String>,
}

fn parse_number(name: &str, value: Option<&str>, default: i64, max: i64) -> ApiResult<i64> {
    let Some(value) = value else { return Ok(default) };
    match value.parse::<i64>() {
        Ok(n) if (0..=max).contains(&n) => Ok(n),
        _ => Err(ApiError::bad_request(format!("{name}={value:?}: expected a whole number from 0 to {max}"))),
    }
}

fn parse_bool(name: &str, value: Option<&str>) -> ApiResult<bool> {
    match value {
        None | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") | Some("") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!("{name}={other:?}: expected true or false"))),
    }
}

/// A page of dead letters, serialized as it is (no JSON tree built first:
/// rows are most of the API's work under load).
#[derive(serde::Serialize)]
struct DeadLetterPage {
    pending: i64,
    pending_capped: bool,
    limit: i64,
    after: i64,
    next: Option<i64>,
    previews: bool,
    items: Vec<crate::runtime::dead_letters::DeadLetterRow>,
}

/// A page of dead letters after the cursor `after` (an id; the `next` of
/// the previous page), oldest first, read by keyset on the API's pool.
async fn dead_letters(
    State(api): State<Api>,
    params: Result<Query<DeadLetterParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<DeadLetterPage>> {
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(format!("{}; the parameters are limit, after (the `next` of the previous page) and all", e.body_text()))
    })?;
    let limit = parse_number("limit", params.limit.as_deref(), 50, 1000)?;
    if limit == 0 {
        return Err(ApiError::bad_request("limit=\"0\": expected a whole number from 1 to 1000"));
    }
    let after = parse_number("after", params.after.as_deref(), 0, i64::MAX)?;
    let all = parse_bool("all", params.all.as_deref())?;
    let pipeline = api.live()?;
    let (pool, config) = (api.db()?, &pipeline.config.api);
    let failed = |e| db::error(e, config);
    let pending = api.pending_dead_letters(&pool).await.map_err(failed)?;
    let items = crate::runtime::dead_letters::list(&pool, !all, after, limit, config.dead_letter_previews).await.map_err(failed)?;
    let next = items.last().filter(|_| items.len() as i64 == limit).map(|last| last.id);
    Ok(Json(DeadLetterPage {
        pending: pending.min(PENDING_COUNT_CAP),
        pending_capped: pending > PENDING_COUNT_CAP,
        limit,
        after,
        next,
        previews: config.dead_letter_previews,
        items,
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FailingParams {
    limit: Option<String>,
}

/// Windows set aside after a failed aggregation, with their errors.
async fn failing_windows(
    State(api): State<Api>,
    params: Result<Query<FailingParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(format!("{}; the only parameter is limit", e.body_text())))?;
    let limit = parse_number("limit", params.limit.as_deref(), 100, 1000)?;
    let pipeline = api.live()?;
    let items = crate::stages::aggregate::failing_windows(&*api.db()?, limit).await.map_err(|e| db::error(e, &pipeline.config.api))?;
    Ok(Json(json!({ "failing": api.stats.windows_failing.get(), "items": items })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_parameters_are_checked() {
        assert_eq!(parse_number("limit", None, 50, 1000).unwrap(), 50);
        assert_eq!(parse_number("limit", Some("7"), 50, 1000).unwrap(), 7);
        assert!(parse_number("limit", Some("1001"), 50, 1000).is_err());
        assert!(parse_number("limit", Some("-1"), 50, 1000).is_err());
        assert!(parse_number("limit", Some("ten"), 50, 1000).unwrap_err().message.contains("ten"));
        assert!(parse_bool("all", Some("yes")).is_err());
        assert!(parse_bool("all", Some("true")).unwrap());
    }
}
