//! Where each newly assigned partition starts: at the next offset
//! PostgreSQL has stored for it, not at the offset committed to Kafka.
//!
//! Kafka's committed offsets trail PostgreSQL's (they are committed after the
//! transaction), so resuming from them only re-reads records the store skips.
//! But they belong to the consumer group, not to the database: pointed at a
//! new or restored database with the same `group_id`, a consumer resuming
//! from Kafka's offsets would never store the records in between. So on
//! every assignment the consumer seeks to PostgreSQL's offsets, and to the
//! beginning of a partition PostgreSQL has never stored from.
//!
//! When PostgreSQL cannot say (it is down, or does not answer within
//! [`LOOKUP_TIMEOUT`]), the partitions are assigned paused ([`Awaiting`]),
//! never started from Kafka's committed offsets, which may be ahead of the
//! database; the source keeps asking off the rebalance callback, and seeks
//! each to PostgreSQL's offset and resumes it once it answers.
//!
//! The rebalance callback runs synchronously inside the consumer's poll, so
//! the lookup is served by a thread of its own with its own small runtime and
//! connection, never by blocking a task of the pipeline's runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Row;

/// How long an assignment waits for PostgreSQL's offsets before its
/// partitions are paused until it answers (logged as an error). The poll,
/// and so every other partition of this consumer, waits meanwhile; well
/// below the group's `max.poll.interval.ms` (5 minutes) in any case.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

type Partitions = Vec<(String, i32)>;
type Reply = Result<BTreeMap<(String, i32), i64>, String>;

/// Asks a thread of its own for the stored offsets of partitions.
pub struct OffsetLookup {
    requests: std::sync::Mutex<mpsc::Sender<(Partitions, mpsc::Sender<Reply>)>>,
}

impl OffsetLookup {
    /// Starts the lookup thread for the database at `database_url`; it
    /// connects on the first request and ends when the lookup is dropped.
    pub fn start(database_url: &str) -> Result<OffsetLookup, sqlx::Error> {
        let options: PgConnectOptions = database_url.parse()?;
        let (tx, rx) = mpsc::channel::<(Partitions, mpsc::Sender<Reply>)>();
        std::thread::Builder::new()
            .name("offset-lookup".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime");
                let pool = runtime.block_on(async {
                    PgPoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(5)).connect_lazy_with(options)
                });
                while let Ok((partitions, reply)) = rx.recv() {
                    let _ = reply.send(runtime.block_on(stored_offsets(&pool, &partitions)));
                }
            })
            .expect("spawn the offset lookup thread");
        Ok(OffsetLookup { requests: std::sync::Mutex::new(tx) })
    }

    /// One request for the stored next offsets, answered within
    /// [`LOOKUP_TIMEOUT`] or not at all.
    pub fn lookup_once(&self, partitions: &[(String, i32)]) -> Reply {
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = self.requests.lock().unwrap_or_else(|e| e.into_inner()).send((partitions.to_vec(), reply_tx));
        if sent.is_err() {
            return Err("the offset lookup thread is gone".into());
        }
        reply_rx.recv_timeout(LOOKUP_TIMEOUT).unwrap_or_else(|_| Err(format!("no answer from PostgreSQL within {LOOKUP_TIMEOUT:?}")))
    }

    /// The stored next offset of each of `partitions` that has one, retrying
    /// for up to [`LOOKUP_TIMEOUT`] while PostgreSQL does not answer.
    pub fn lookup(&self, partitions: &[(String, i32)]) -> Reply {
        let started = Instant::now();
        let mut last = String::new();
        let mut pauses = crate::backoff::pauses(Duration::from_millis(200), Duration::from_secs(5));
        while started.elapsed() < LOOKUP_TIMEOUT {
            let (reply_tx, reply_rx) = mpsc::channel();
            let sent = self.requests.lock().unwrap_or_else(|e| e.into_inner()).send((partitions.to_vec(), reply_tx));
            if sent.is_err() {
                return Err("the offset lookup thread is gone".into());
            }
            match reply_rx.recv_timeout(LOOKUP_TIMEOUT) {
                Ok(Ok(offsets)) => return Ok(offsets),
                Ok(Err(e)) => last = e,
                Err(_) => return Err(format!("no answer from PostgreSQL within {LOOKUP_TIMEOUT:?}")),
            }
            std::thread::sleep(pauses.next_pause());
        }
        Err(format!("PostgreSQL did not answer for {LOOKUP_TIMEOUT:?}: {last}"))
    }
}

/// The assigned partitions paused until PostgreSQL says where they start.
/// Shared by the rebalance callback (which adds and forgets partitions), the
/// reading loop (which drops any record of theirs still delivered) and the
/// task that resumes them.
#[derive(Debug, Default)]
pub struct Awaiting {
    partitions: Mutex<BTreeSet<(String, i32)>>,
    /// Whether any partition waits: the reading loop looks at every record,
    /// and almost always nothing does.
    any: AtomicBool,
    /// Woken when partitions are added.
    added: tokio::sync::Notify,
}

impl Awaiting {
    /// Marks `partitions` as waiting; returns how many wait now.
    pub fn add(&self, partitions: &[(String, i32)]) -> usize {
        let mut waiting = self.lock();
        waiting.extend(partitions.iter().cloned());
        self.any.store(!waiting.is_empty(), Ordering::Release);
        self.added.notify_one();
        waiting.len()
    }

    /// Forgets `partitions` (revoked, or resumed); returns how many wait now.
    pub fn remove(&self, partitions: &[(String, i32)]) -> usize {
        let mut waiting = self.lock();
        for p in partitions {
            waiting.remove(p);
        }
        self.any.store(!waiting.is_empty(), Ordering::Release);
        waiting.len()
    }

    /// Whether records of `topic`/`partition` are to be ignored: it waits
    /// for its offset, and will be read again from there.
    pub fn holds(&self, topic: &str, partition: i32) -> bool {
        self.any.load(Ordering::Acquire) && self.lock().iter().any(|(t, p)| t == topic && *p == partition)
    }

    /// The partitions waiting now.
    pub fn list(&self) -> Vec<(String, i32)> {
        self.lock().iter().cloned().collect()
    }

    /// Waits until partitions are added (at once if some were added since
    /// the last call).
    pub async fn added(&self) {
        self.added.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, i32)>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn stored_offsets(pool: &sqlx::PgPool, partitions: &[(String, i32)]) -> Reply {
    let (topics, ids): (Vec<&str>, Vec<i32>) = partitions.iter().map(|(t, p)| (t.as_str(), *p)).unzip();
    let rows = sqlx::query(
        "SELECT o.topic, o.\"partition\", o.next_offset
         FROM ingest_offsets o JOIN UNNEST($1::text[], $2::int[]) AS v(t, p) ON o.topic = v.t AND o.\"partition\" = v.p",
    )
    .bind(&topics)
    .bind(&ids)
    .fetch_all(pool)
    .await
    // Before the first batch of a fresh database the table may not exist yet.
    .or_else(|e| match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(Vec::new()),
        _ => Err(crate::postgres::describe(&e)),
    })?;
    Ok(rows.into_iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect())
}
