//! Day partitions of `events` and `dead_letters`: created ahead of time and on
//! demand, dropped once older than `store.retention_days`.
//!
//! Native declarative partitioning, managed here rather than by pg_partman:
//! the rules are three (days ahead, a missing day on demand, whole days
//! dropped), the host already runs the migrations, and an extension would be
//! one more thing every database the pipeline points at must have installed.
//! A day is created by `clickstream_ensure_day` (migration 0006), serialised
//! by an advisory lock, so hosts in one group never collide.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::PgPool;

/// Days created ahead of today (UTC), so that the start of a day never waits
/// for a partition to be created.
pub const DAYS_AHEAD: i64 = 3;

/// How long dropping an expired day may wait for its lock before it is left
/// for the next round: a drop needs the table to itself, briefly, and must
/// not hold up ingest behind it.
const DROP_LOCK_TIMEOUT: &str = "2s";

/// How long creating a day may wait for the parent table's lock. `CREATE
/// TABLE … PARTITION OF` takes the whole parent (`events`, `dead_letters`),
/// and while it waits (behind a long read, say) every insert queues behind
/// it; so it waits briefly and the day is tried again by the next write.
const CREATE_LOCK_TIMEOUT: &str = "500ms";

/// Most days one call of [`Partitions::ensure`] creates. Each new day locks
/// both parents for a moment; a batch spread over hundreds of past days
/// (a client replaying its history, or a clock reset) makes its days a few
/// at a time, one write after another, so the writes of other partitions,
/// and the records queued behind it, go in between.
pub const MAX_NEW_DAYS_PER_WRITE: usize = 8;

/// Rounds [`Partitions::ensure_all`] tries a busy lock before failing.
const ENSURE_ALL_ATTEMPTS: u32 = 10;

/// Milliseconds in a day.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The two partitioned tables.
const TABLES: [&str; 2] = ["events", "dead_letters"];

/// The UTC day holding an epoch-millisecond time, if it is a day a
/// partition can be made for.
pub fn day_of(ts_ms: i64) -> Option<NaiveDate> {
    let days = i32::try_from(ts_ms.div_euclid(DAY_MS)).ok()?;
    let day = NaiveDate::from_num_days_from_ce_opt(days.checked_add(EPOCH_DAYS_FROM_CE)?)?;
    (FIRST_DAY..=LAST_DAY).contains(&day).then_some(day)
}

/// 1970-01-01 counted from 0001-01-01 (chrono's `num_days_from_ce`).
const EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The days partitions are made for: four-digit years from 1900.
const FIRST_DAY: NaiveDate = NaiveDate::from_ymd_opt(1900, 1, 1).expect("a valid date");
const LAST_DAY: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("a valid date");

/// The day partitions a store has seen exist, and the retention rule.
#[derive(Debug)]
pub struct Partitions {
    /// `store.retention_days`; 0 keeps every day.
    retention_days: u32,
    /// Days known to exist for both tables.
    known: Mutex<BTreeSet<NaiveDate>>,
}

/// Why an event has no day partition to go to; it is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unplaced {
    /// Its day is older than the retention: dropped, or about to be.
    #[error("event time is on {day}, before the oldest day kept ({oldest_kept}, store.retention_days): that day is dropped, so the event is not stored")]
    Expired {
        /// The event's day.
        day: NaiveDate,
        /// The oldest day kept.
        oldest_kept: NaiveDate,
    },
    /// Its time is outside every day a partition can be made for.
    #[error("event time {ts_ms} ms is outside the days a partition can be made for (1900-01-01 to 9999-12-31 UTC)")]
    OutOfRange {
        /// The event's time.
        ts_ms: i64,
    },
}

impl Unplaced {
    /// The dead-letter kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Unplaced::Expired { .. } => "expired",
            Unplaced::OutOfRange { .. } => "no_partition",
        }
    }
}

impl Partitions {
    /// Nothing known yet; the first [`ensure`](Self::ensure) reads the catalogue.
    pub fn new(retention_days: u32) -> Partitions {
        Partitions { retention_days, known: Mutex::new(BTreeSet::new()) }
    }

    /// The oldest day kept today, if days expire.
    pub fn oldest_kept(&self) -> Option<NaiveDate> {
        (self.retention_days > 0).then(|| Utc::now().date_naive() - chrono::Days::new(u64::from(self.retention_days) - 1))
    }

    /// The day partition an event at `ts_ms` goes to, or why it has none.
    pub fn place(&self, ts_ms: i64) -> Result<NaiveDate, Unplaced> {
        self.placer()(ts_ms)
    }

    /// [`place`](Self::place) for a batch: the oldest day kept is read off
    /// the clock once, not per event.
    pub fn placer(&self) -> impl Fn(i64) -> Result<NaiveDate, Unplaced> {
        let oldest_kept = self.oldest_kept();
        move |ts_ms| {
            let day = day_of(ts_ms).ok_or(Unplaced::OutOfRange { ts_ms })?;
            match oldest_kept {
                Some(oldest_kept) if day < oldest_kept => Err(Unplaced::Expired { day, oldest_kept }),
                _ => Ok(day),
            }
        }
    }

    /// Makes sure both tables have a partition for each of `days` (today's is
    /// always included: dead letters go into the day they die), creating at
    /// most `cap` missing days, in the order given. Returns the days still
    /// missing: those past the cap, and those whose table lock was not had
    /// within [`CREATE_LOCK_TIMEOUT`] (creation stops there for this call;
    /// the caller leaves their events for a later write). Days seen before
    /// cost nothing.
    pub async fn ensure(
        &self,
        pool: &PgPool,
        days: impl IntoIterator<Item = NaiveDate>,
        cap: usize,
    ) -> Result<BTreeSet<NaiveDate>, sqlx::Error> {
        let today = Utc::now().date_naive();
        let missing: Vec<NaiveDate> = {
            let known = lock(&self.known);
            let mut seen = BTreeSet::new();
            [today].into_iter().chain(days).filter(|d| !known.contains(d) && seen.insert(*d)).collect()
        };
        let mut left: BTreeSet<NaiveDate> = missing.iter().copied().collect();
        for day in missing.into_iter().take(cap.max(1)) {
            match create_day(pool, day).await {
                Ok(()) => {
                    lock(&self.known).insert(day);
                    left.remove(&day);
                }
                Err(e) if is_lock_timeout(&e) => {
                    tracing::warn!(%day, error = %crate::postgres::describe(&e), "a day partition's table lock was busy; its events wait for a later write");
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(left)
    }

    /// Makes every one of `days` (and today), with no cap, retrying a busy
    /// lock a few times: for the upkeep and for replay, which must have
    /// every day they ask for. The last lock timeout is the error.
    pub async fn ensure_all(&self, pool: &PgPool, days: impl IntoIterator<Item = NaiveDate>) -> Result<(), sqlx::Error> {
        let mut days: Vec<NaiveDate> = days.into_iter().collect();
        let mut pauses = crate::backoff::pauses(Duration::from_millis(100), Duration::from_secs(2));
        let mut attempts = 0;
        loop {
            days = self.ensure(pool, days, usize::MAX).await?.into_iter().collect();
            let Some(&day) = days.first() else { return Ok(()) };
            attempts += 1;
            if attempts >= ENSURE_ALL_ATTEMPTS {
                // Its error, if the lock is still busy, is the answer.
                create_day(pool, day).await?;
            } else {
                tokio::time::sleep(pauses.next_pause()).await;
            }
        }
    }

    /// One round of upkeep: the days from yesterday to [`DAYS_AHEAD`] ahead
    /// exist, and days older than the retention are dropped. Returns the
    /// partitions dropped.
    pub async fn maintain(&self, pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
        let today = Utc::now().date_naive();
        self.ensure_all(pool, (-1..=DAYS_AHEAD).map(|d| today + chrono::TimeDelta::days(d))).await?;
        let Some(oldest_kept) = self.oldest_kept() else { return Ok(Vec::new()) };
        let mut dropped = Vec::new();
        for table in TABLES {
            for (name, day) in day_partitions(pool, table).await? {
                if day >= oldest_kept {
                    continue;
                }
                let mut tx = pool.begin().await?;
                sqlx::query(&format!("SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")).execute(&mut *tx).await?;
                match sqlx::query(&format!("DROP TABLE \"{name}\"")).execute(&mut *tx).await {
                    Ok(_) => {
                        tx.commit().await?;
                        tracing::info!(table, %day, partition = %name, "dropped an expired day (store.retention_days)");
                        lock(&self.known).remove(&day);
                        dropped.push(name);
                    }
                    Err(e) => {
                        tracing::warn!(partition = %name, error = %crate::postgres::describe(&e), "could not drop an expired day yet; trying again next round");
                    }
                }
            }
        }
        Ok(dropped)
    }

    /// Runs [`maintain`](Self::maintain) every `every` until `shutdown`.
    pub async fn run(self: std::sync::Arc<Self>, pool: PgPool, every: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.maintain(&pool).await {
                tracing::warn!(error = %crate::postgres::describe(&e), "partition upkeep failed; trying again next round");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }
}

/// Creates both tables' partitions of `day` (each if missing), waiting at
/// most [`CREATE_LOCK_TIMEOUT`] for a lock.
async fn create_day(pool: &PgPool, day: NaiveDate) -> Result<(), sqlx::Error> {
    for table in TABLES {
        let mut tx = pool.begin().await?;
        sqlx::query(&format!("SET LOCAL lock_timeout = '{CREATE_LOCK_TIMEOUT}'")).execute(&mut *tx).await?;
        let created: bool = sqlx::query_scalar("SELECT clickstream_ensure_day($1, $2)").bind(table).bind(day).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        if created {
            tracing::info!(table, %day, "created day partition");
        }
    }
    Ok(())
}

/// SQLSTATE 55P03, `lock_not_available`: `lock_timeout` ran out.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// The day partitions of `table`, by name and day, oldest first.
pub async fn day_partitions(pool: &PgPool, table: &str) -> Result<Vec<(String, NaiveDate)>, sqlx::Error> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = $1::regclass ORDER BY 1",
    )
    .bind(table)
    .fetch_all(pool)
    .await?;
    let prefix = format!("{table}_");
    Ok(names
        .into_iter()
        .filter_map(|n| {
            let day = NaiveDate::parse_from_str(n.strip_prefix(&prefix)?, "%Y%m%d").ok()?;
            Some((n, day))
        })
        .collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_days_of_epoch_milliseconds_within_four_digit_years() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d);
        assert_eq!(day_of(0), day(1970, 1, 1));
        assert_eq!(day_of(DAY_MS - 1), day(1970, 1, 1));
        assert_eq!(day_of(-1), day(1969, 12, 31));
        assert_eq!(day_of(1_795_884_591_185), day(2026, 11, 28));
        assert_eq!(day_of(9_300_000_000_000_000), None);
        assert_eq!(day_of(i64::MIN), None);
        assert_eq!(day_of(-2_300_000_000_000), None, "1897");
    }

    #[test]
    fn an_event_before_the_oldest_kept_day_is_expired_and_none_is_without_retention() {
        let now = Utc::now().timestamp_millis();
        let p = Partitions::new(2);
        assert!(p.place(now).is_ok());
        assert!(p.place(now - DAY_MS).is_ok(), "yesterday is the second day kept");
        let old = p.place(now - 2 * DAY_MS).expect_err("two days ago is dropped");
        assert_eq!(old.kind(), "expired");
        assert!(old.to_string().contains("store.retention_days"), "{old}");
        assert!(Partitions::new(0).place(0).is_ok());
        assert_eq!(Partitions::new(0).place(i64::MAX).map_err(|e| e.kind()), Err("no_partition"));
    }
}
