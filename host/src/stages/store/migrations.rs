//! The schema's migrations, and which of them a database has, read without
//! applying any (what `clickstream validate` reports; the pipeline applies
//! the pending ones when it starts).

use std::borrow::Cow;
use std::sync::LazyLock;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, Row};

/// The files of `host/migrations/`, embedded at build time: (file name, SQL).
/// Listed by hand instead of `sqlx::migrate!`, whose macro crate builds a
/// second copy of sqlx and its PostgreSQL driver in every build; a test
/// checks that the list and the folder agree.
const EMBEDDED: [(&str, &str); 6] = [
    ("0001_ingest.sql", include_str!("../../../migrations/0001_ingest.sql")),
    ("0002_aggregate.sql", include_str!("../../../migrations/0002_aggregate.sql")),
    ("0003_newest_event.sql", include_str!("../../../migrations/0003_newest_event.sql")),
    ("0004_isolation.sql", include_str!("../../../migrations/0004_isolation.sql")),
    ("0005_chain.sql", include_str!("../../../migrations/0005_chain.sql")),
    ("0006_partitions.sql", include_str!("../../../migrations/0006_partitions.sql")),
];

/// This host's migrations, as `sqlx::migrate!` would read them: the version
/// from the file name's number, the description from the rest (`_` as a
/// space), the checksum of the SQL, no transaction when the file starts
/// with `-- no-transaction`.
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| Migrator {
    migrations: Cow::Owned(EMBEDDED.iter().map(|(file, sql)| migration(file, sql)).collect()),
    ..Migrator::DEFAULT
});

fn migration(file: &str, sql: &'static str) -> Migration {
    let (version, rest) = file.split_once('_').expect("migration files are named NNNN_description.sql");
    let description = rest.trim_end_matches(".sql").replace('_', " ");
    let version = version.parse().expect("migration files start with their version number");
    Migration::new(version, Cow::Owned(description), MigrationType::Simple, Cow::Borrowed(sql), sql.starts_with("-- no-transaction"))
}

/// Where a database stands against this host's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Migrations this host has.
    pub known: usize,
    /// Of those, applied to the database.
    pub applied: usize,
    /// The rest, `0006 partitions`, in the order they would run.
    pub pending: Vec<String>,
}

/// A database this host must not run against as it is.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database could not be read.
    #[error("PostgreSQL: {}", crate::postgres::describe(.0))]
    Database(#[from] sqlx::Error),
    /// It has migrations this host does not know: a newer host set it up.
    #[error("the database has migrations this host does not know ({versions}); it was set up by a newer clickstream: run that version, or point store.database_url at another database")]
    Newer {
        /// The unknown versions.
        versions: String,
    },
    /// A migration was applied with other contents than this host's.
    #[error(
        "migration {version} ({description}) was applied with other contents than this host's; the database was set up by another build"
    )]
    Changed {
        /// The migration.
        version: i64,
        /// What it does.
        description: String,
    },
    /// A migration failed part-way and left the database marked dirty.
    #[error("migration {version} failed part-way before and left the database dirty; repair it by hand (see the _sqlx_migrations table)")]
    Dirty {
        /// The migration.
        version: i64,
    },
}

/// Reads which migrations the database at `url` has; changes nothing.
pub async fn status(url: &str) -> Result<MigrationStatus, SchemaError> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text").fetch_one(&mut conn).await?;
    let applied: Vec<(i64, Vec<u8>, bool)> = match table {
        Some(_) => sqlx::query("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await?
            .into_iter()
            .map(|row| (row.get(0), row.get(1), row.get(2)))
            .collect(),
        None => Vec::new(),
    };
    let _ = conn.close().await;
    compare(&applied)
}

/// Compares what a database applied, (version, checksum, success), with
/// this host's migrations.
fn compare(applied: &[(i64, Vec<u8>, bool)]) -> Result<MigrationStatus, SchemaError> {
    if let Some((version, _, _)) = applied.iter().find(|(_, _, success)| !success) {
        return Err(SchemaError::Dirty { version: *version });
    }
    let unknown: Vec<String> = applied.iter().filter(|(v, _, _)| !MIGRATOR.version_exists(*v)).map(|(v, _, _)| v.to_string()).collect();
    if !unknown.is_empty() {
        return Err(SchemaError::Newer { versions: unknown.join(", ") });
    }
    let mut pending = Vec::new();
    for migration in MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()) {
        match applied.iter().find(|(v, _, _)| *v == migration.version) {
            Some((_, checksum, _)) if *checksum != *migration.checksum => {
                return Err(SchemaError::Changed { version: migration.version, description: migration.description.to_string() });
            }
            Some(_) => {}
            None => pending.push(format!("{:04} {}", migration.version, migration.description)),
        }
    }
    let known = MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()).count();
    Ok(MigrationStatus { known, applied: known - pending.len(), pending })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_applied() -> Vec<(i64, Vec<u8>, bool)> {
        MIGRATOR.iter().map(|m| (m.version, m.checksum.to_vec(), true)).collect()
    }

    #[test]
    fn every_file_of_the_migrations_folder_is_embedded_in_order() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<(String, String)> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect();
        files.sort();
        let embedded: Vec<(String, String)> = EMBEDDED.iter().map(|(f, sql)| (f.to_string(), sql.to_string())).collect();
        assert_eq!(embedded, files, "list each file of host/migrations/ in EMBEDDED");
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=files.len() as i64).collect::<Vec<_>>());
        assert_eq!(MIGRATOR.iter().nth(2).unwrap().description, "newest event");
    }

    #[test]
    fn a_new_database_has_every_migration_pending_in_order() {
        let status = compare(&[]).unwrap();
        assert_eq!((status.applied, status.pending.len()), (0, status.known));
        assert!(status.pending[0].starts_with("0001 "), "{:?}", status.pending);
    }

    #[test]
    fn the_migrations_a_database_lacks_are_pending() {
        let mut applied = all_applied();
        let last = applied.pop().unwrap();
        let status = compare(&applied).unwrap();
        assert_eq!(status.pending, vec![format!("{:04} {}", last.0, MIGRATOR.iter().last().unwrap().description)]);
        assert_eq!(compare(&all_applied()).unwrap().pending, Vec::<String>::new());
    }

    #[test]
    fn a_newer_changed_or_dirty_database_is_refused_by_name() {
        let mut newer = all_applied();
        newer.push((99_999, vec![1], true));
        assert!(compare(&newer).unwrap_err().to_string().contains("99999"));
        let mut changed = all_applied();
        changed[0].1 = vec![0; 48];
        assert!(matches!(compare(&changed), Err(SchemaError::Changed { version: 1, .. })));
        let mut dirty = all_applied();
        dirty[2].2 = false;
        assert!(matches!(compare(&dirty), Err(SchemaError::Dirty { version: 3 })));
    }
}
