//! Databases of their own for each test and each benchmark arm, and the
//! counts tests wait on.

use std::path::Path;

use sqlx::{Connection, PgConnection, PgPool};

use crate::services::database_url;

/// Why a database could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The server does not answer.
    #[error("PostgreSQL at {url} does not answer ({reason}): run `scripts/services up`")]
    Unreachable {
        /// The URL tried.
        url: String,
        /// The driver's error.
        reason: sqlx::Error,
    },
    /// The URL has no `/NAME` to replace with the new database's name.
    #[error("{url} names no database: expected postgres://USER@HOST:PORT/NAME")]
    NoDatabaseName {
        /// The URL given.
        url: String,
    },
    /// A statement failed.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

/// A name no other test or run uses.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{name}_{}_{nanos}", std::process::id())
}

/// Connects to the database `server_url` names, to create and drop others.
pub async fn connect_server(server_url: &str) -> Result<PgConnection, DbError> {
    PgConnection::connect(server_url).await.map_err(|reason| DbError::Unreachable { url: server_url.into(), reason })
}

/// Creates database `name` empty on the server of `server_url` (dropping one
/// of that name first, left by an earlier run) and returns its URL.
pub async fn create_database(conn: &mut PgConnection, server_url: &str, name: &str) -> Result<String, DbError> {
    let (server, _) = server_url.rsplit_once('/').ok_or_else(|| DbError::NoDatabaseName { url: server_url.into() })?;
    drop_database(conn, name).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\"")).execute(&mut *conn).await?;
    Ok(format!("{server}/{name}"))
}

/// Drops database `name` if present, disconnecting its clients.
pub async fn drop_database(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).execute(conn).await?;
    Ok(())
}

/// Creates an empty database on the test server and returns its URL, so each
/// test has tables of its own.
pub async fn fresh_database(name: &str) -> String {
    let base = database_url();
    let mut conn = connect_server(&base).await.unwrap_or_else(|e| panic!("{e}"));
    // Databases left by earlier runs of this test whose process is gone.
    let stale: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
        .bind(format!("{}\\_%", name.to_lowercase()))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    for old in stale {
        // `api_ready_<pid>_<nanos>` matches `api_%` too: only a number is a
        // process id, so another test's database is never taken for one.
        let pid = old[name.len() + 1..].split('_').next().unwrap_or_default();
        if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists() {
            let _ = drop_database(&mut conn, &old).await;
        }
    }
    create_database(&mut conn, &base, &unique(name).to_lowercase()).await.unwrap_or_else(|e| panic!("{e}"))
}

/// Whether aggregation has caught up: no window change waits in the store's
/// log and no window is dirty (false while the tables do not exist yet).
pub async fn aggregation_caught_up(pool: &PgPool) -> bool {
    count(
        pool,
        "SELECT (SELECT count(*) FROM window_changes) + (SELECT count(*) FROM aggregate_windows WHERE version > aggregated_version)",
    )
    .await
        == 0
}

/// Whether every one of `total` records is stored as an event, a dead
/// letter or a drop (false while the tables do not exist yet).
pub async fn reconciled(pool: &PgPool, total: usize) -> bool {
    let stored = count(pool, "SELECT count(*) FROM events").await;
    let dead = count(pool, "SELECT count(*) FROM dead_letters").await;
    let dropped = count(pool, "SELECT coalesce(sum(dropped), 0)::bigint FROM dropped_events").await;
    stored >= 0 && dead >= 0 && dropped >= 0 && (stored + dead + dropped) as usize >= total
}

/// Counts rows of a query returning one bigint; -1 when it fails (e.g.
/// before the host has created its tables), so a wait keeps polling.
pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap_or(-1)
}
