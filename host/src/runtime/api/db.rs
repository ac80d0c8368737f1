//! The API's own PostgreSQL pool. The store's pool serves ingest,
//! aggregation and publishing; were the API to share it, a flood of
//! requests (or a few slow ones) would hold the connections a batch needs
//! and ingestion would pause. This pool is small (`api.db_connections`),
//! read-only, and every statement on it is bounded by
//! `api.statement_timeout_ms`, as is the wait for a connection.

use std::time::Duration;

use axum::http::StatusCode;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::ConnectOptions;

use super::config::ApiConfig;
use super::ApiError;

/// How the API's connections name themselves in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "clickstream-api";

/// SQLSTATE of a statement cancelled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";

/// A pool on `database_url` as `config` says; connects on first use.
pub(super) fn pool(database_url: &str, config: &ApiConfig) -> Result<PgPool, sqlx::Error> {
    let timeout = Duration::from_millis(config.statement_timeout_ms);
    let options: PgConnectOptions = database_url.parse()?;
    let options = options
        .application_name(APPLICATION_NAME)
        .options([
            ("statement_timeout", config.statement_timeout_ms.to_string()),
            // The API only reads: a mistake in a handler cannot write.
            ("default_transaction_read_only", "on".to_string()),
        ])
        .log_statements(tracing::log::LevelFilter::Trace);
    Ok(PgPoolOptions::new()
        .max_connections(config.db_connections)
        .min_connections(0)
        .acquire_timeout(timeout)
        .idle_timeout(Duration::from_secs(60))
        // No ping before each query (a round trip per request): a broken
        // connection fails one request with 503 and is replaced.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// The answer for a query that failed on this pool: 503, saying whether it
/// ran out of time, found no free connection, or PostgreSQL failed.
pub(super) fn error(e: sqlx::Error, config: &ApiConfig) -> ApiError {
    let message = match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(QUERY_CANCELED) => format!(
            "PostgreSQL did not answer within api.statement_timeout_ms ({} ms); the query was cancelled",
            config.statement_timeout_ms
        ),
        sqlx::Error::PoolTimedOut => format!(
            "every API connection to PostgreSQL (api.db_connections = {}) stayed busy for api.statement_timeout_ms ({} ms); try again",
            config.db_connections, config.statement_timeout_ms
        ),
        other => format!("PostgreSQL: {other}"),
    };
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
}
