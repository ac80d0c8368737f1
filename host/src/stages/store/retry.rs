//! Writing while PostgreSQL is away: connecting and writing batches with
//! backoff, for as long as the server (not the records) is at fault, and
//! never past a shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;

use super::config::StoreConfig;
use super::{Store, StoreError};
use crate::backoff::{pause_unless_stopped, pauses};
use crate::postgres::describe;
use crate::stages::record::{WindowSpec, WriteBatch};
use crate::stats::{BatchStage, Stats};

/// Longest pause between attempts while PostgreSQL is down.
const MAX_STORE_BACKOFF: Duration = Duration::from_secs(10);

/// Connects to PostgreSQL, retrying with backoff until it answers or the
/// pipeline is asked to stop. A server that answers and refuses (a wrong
/// password, a database that does not exist) fails at once: waiting will
/// not change its answer, and a supervisor should hear of it.
pub async fn connect_store(config: &StoreConfig, windows: WindowSpec, shutdown: &watch::Receiver<bool>) -> Result<Store, StoreError> {
    let mut pauses = pauses(Duration::from_millis(200), MAX_STORE_BACKOFF);
    loop {
        match Store::open(config, windows).await {
            Ok(store) => return Ok(store),
            Err(StoreError::Database(e)) if !*shutdown.borrow() && !refused_for_good(&e) => {
                let pause = pauses.next_pause();
                tracing::warn!(error = %e, retry_in = ?pause, "PostgreSQL unreachable; retrying");
                pause_unless_stopped(pause, shutdown).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether the server refused the connection for a reason that waiting
/// does not change: SQLSTATE class 28 (authorization) or 3D000 (no such
/// database).
fn refused_for_good(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|db| db.code()).unwrap_or_default();
    code.starts_with("28") || code == "3D000"
}

/// How long a write already under way may still finish once the pipeline
/// drains: a healthy PostgreSQL answers in well under a second, and a hung
/// one must not hold up a shutdown.
const DRAIN_WRITE_GRACE: Duration = Duration::from_secs(5);

/// The pipeline drained while a batch was not yet stored.
#[derive(Debug, thiserror::Error)]
#[error("drained after {attempts} failed attempts to store the batch; last error: {last}")]
pub struct Abandoned {
    /// Attempts made.
    pub attempts: u32,
    /// The last error, or that the write did not finish in time.
    pub last: String,
}

/// Writes a batch, retrying with backoff for as long as PostgreSQL cannot
/// take it (records PostgreSQL refuses are dead-lettered inside the write;
/// what is retried here is the server's fault): meanwhile the channels fill
/// and reading pauses, so nothing is dropped. Once `drain` turns true it
/// stops retrying and gives the batch up unstored: its offsets were not
/// advanced, so it is read again on restart. Returns what the write
/// deferred ([`WriteOutcome::deferred`](super::WriteOutcome::deferred)).
pub async fn store_batch(
    store: &Store,
    batch: &WriteBatch,
    stats: &Stats,
    mut drain: watch::Receiver<bool>,
) -> Result<BTreeMap<(String, i32), i64>, Abandoned> {
    let mut pauses = pauses(Duration::from_millis(100), MAX_STORE_BACKOFF);
    let started = std::time::Instant::now();
    let mut attempts = 0;
    loop {
        let write = store.write(batch);
        tokio::pin!(write);
        let result = tokio::select! {
            result = &mut write => result,
            _ = async {
                let _ = drain.wait_for(|d| *d).await;
                tokio::time::sleep(DRAIN_WRITE_GRACE).await;
            } => {
                return Err(Abandoned { attempts: attempts + 1, last: format!("no answer from PostgreSQL within {DRAIN_WRITE_GRACE:?} of draining") });
            }
        };
        attempts += 1;
        match result {
            Ok(outcome) => {
                stats.batch(BatchStage::Store, batch.len(), started.elapsed());
                stats.stored.inc_by(outcome.stored);
                stats.dead_lettered.inc_by(outcome.dead_lettered);
                stats.dropped.inc_by(outcome.dropped);
                stats.redelivered.inc_by(outcome.redelivered);
                stats.duplicates.inc_by(outcome.duplicates);
                stats.batches_written.inc();
                for ((stage, kind), n) in &outcome.dead_letters_by {
                    stats.dead_letters(stage, kind, *n);
                }
                for ((topic, partition), next) in &batch.next_offsets {
                    let cut = outcome.deferred.get(&(topic.clone(), *partition)).copied();
                    stats.stored_next(topic, *partition, cut.map_or(*next, |at| at.min(*next)));
                }
                for gap in &outcome.gaps {
                    stats.offset_gap(&gap.topic, gap.partition, (gap.to - gap.from) as u64);
                }
                if attempts > 1 {
                    tracing::info!("PostgreSQL is back; ingestion resumed");
                }
                return Ok(outcome.deferred);
            }
            Err(e) => {
                stats.store_retries.inc();
                let pause = pauses.next_pause();
                tracing::warn!(error = %describe(&e), records = batch.len(), retry_in = ?pause, "cannot store batch; ingestion paused");
                pause_unless_stopped(pause, &drain).await;
                if *drain.borrow() {
                    return Err(Abandoned { attempts, last: describe(&e) });
                }
            }
        }
    }
}
