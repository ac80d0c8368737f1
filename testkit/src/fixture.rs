//! The prologue most stack tests share: a topic, a database and an index of
//! their own, and a pipeline file pointing at them.

use std::path::PathBuf;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::{fresh_database, init_logs, unique, write_pipeline};

/// A test's own slice of the stack. The database is created empty; the
/// pipeline applies the migrations when it starts.
pub struct Fixture {
    /// Holds the pipeline file and whatever else the test writes; removed on drop.
    pub dir: tempfile::TempDir,
    /// A topic no other test or run uses (created by the first producer).
    pub topic: String,
    /// The URL of a fresh database.
    pub db: String,
    /// A small pool on it, for the test's own queries.
    pub pool: PgPool,
    /// `pipeline.toml` in `dir`: the stack's broker and search server, this
    /// fixture's topic, database and consumer group (which also names the index).
    pub pipeline: PathBuf,
}

impl Fixture {
    /// A fixture whose names start with `name` (lower case, `_`-separated).
    pub async fn new(name: &str) -> Fixture {
        Fixture::with(name, "").await
    }

    /// [`new`](Self::new), with `extra` TOML appended to the pipeline file.
    pub async fn with(name: &str, extra: &str) -> Fixture {
        init_logs();
        let dir = tempfile::tempdir().expect("a temporary folder");
        let topic = unique(name);
        let db = fresh_database(name).await;
        let pool = pool(&db).await;
        let pipeline = write_pipeline(dir.path(), &topic, &unique(name), &db, extra);
        Fixture { dir, topic, db, pool, pipeline }
    }
}

/// A pool of two connections on `db`, for a test's own queries.
pub async fn pool(db: &str) -> PgPool {
    PgPoolOptions::new().max_connections(2).connect(db).await.unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}
