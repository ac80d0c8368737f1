//! The store's writers: `store.writers` tasks, each storing the batches of
//! its own partitions in order, on its own connection and transaction, and
//! committing their offsets to Kafka after PostgreSQL.
//!
//! A batch from the transform stage holds records of several partitions;
//! it is split by partition ([`WriteBatch::split`]) and each part queued
//! for its writer, which merges the parts queued meanwhile into its next
//! transaction. Nothing is shared that every transaction must lock, so
//! the writers' transactions run side by side.

use std::sync::Arc;

use rdkafka::consumer::CommitMode;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::runtime::supervise::Stages;
use crate::stages::record::WriteBatch;
use crate::stages::source::{self, SourceConsumer};
use crate::stages::store::retry::{store_batch, Abandoned};
use crate::stages::store::Store;
use crate::stats::Stats;

/// A writer merges queued parts into one transaction up to this many
/// records.
const MAX_MERGED_RECORDS: usize = 8_192;

/// The running writers.
pub struct Writers {
    queues: Vec<mpsc::Sender<WriteBatch>>,
    tasks: Vec<JoinHandle<Result<(), Abandoned>>>,
}

impl Writers {
    /// Starts `n` writers sharing a queue depth of `depth` batches: each
    /// holds `depth / n` parts (at least one), so what is in flight stays
    /// what `store.max_in_flight_batches` says whatever the writers. A
    /// writer that panics is recorded as the store stage's death.
    pub fn start(
        n: usize,
        depth: usize,
        store: &Store,
        consumer: &Arc<SourceConsumer>,
        stats: &Arc<Stats>,
        stages: &Arc<Stages>,
        drain: &watch::Receiver<bool>,
    ) -> Writers {
        let stage = stages.stage("store");
        let (queues, tasks) = (0..n.max(1))
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<WriteBatch>(depth.div_ceil(n.max(1)).max(1));
                let (store, consumer, stats, drain) = (store.clone(), consumer.clone(), stats.clone(), drain.clone());
                let (stage, stages) = (stage.clone(), stages.clone());
                let writing = async move {
                    let mut deferred: Option<WriteBatch> = None;
                    loop {
                        let mut batch = match deferred.take() {
                            Some(batch) => batch,
                            None => match rx.recv().await {
                                Some(batch) => batch,
                                None => return Ok(()),
                            },
                        };
                        // What queued while the last transaction ran goes
                        // into this one: under load, transactions grow to
                        // what the queue holds; when idle, each batch goes
                        // alone, at once.
                        while batch.len() < MAX_MERGED_RECORDS {
                            match rx.try_recv() {
                                Ok(more) => batch.merge(more),
                                Err(_) => break,
                            }
                        }
                        let busy = stage.busy(|| format!("a write of {} records", batch.len()));
                        crate::runtime::supervise::fault_point("store");
                        let cut = store_batch(&store, &batch, &stats, drain.clone()).await?;
                        drop(busy);
                        // Records whose days were not made yet go into the
                        // next transaction, with what queued meanwhile: the
                        // other partitions' records do not wait for them.
                        let rest = batch.split_off_deferred(&cut);
                        source::commit(&consumer, &batch.next_offsets, CommitMode::Async);
                        if !rest.is_empty() {
                            if batch.is_empty() && *drain.borrow() {
                                return Err(Abandoned {
                                    attempts: 1,
                                    last: "drained while the day partitions of the batch's events could not be made".into(),
                                });
                            }
                            deferred = Some(rest);
                        }
                    }
                };
                let task = tokio::spawn(async move {
                    use futures::FutureExt;
                    std::panic::AssertUnwindSafe(writing).catch_unwind().await.unwrap_or_else(|panic| {
                        let how = crate::runtime::supervise::panicked(panic.as_ref());
                        stages.fail("store", how.clone());
                        Err(Abandoned { attempts: 0, last: format!("the writer {how}") })
                    })
                });
                (tx, task)
            })
            .unzip();
        Writers { queues, tasks }
    }

    /// Queues a batch's parts for their writers, waiting while a queue is
    /// full (backpressure). False once a writer has stopped: it gave a
    /// batch up while draining.
    pub async fn write(&self, batch: WriteBatch) -> bool {
        for (part, queue) in batch.split(self.queues.len()).into_iter().zip(&self.queues) {
            if !part.next_offsets.is_empty() && queue.send(part).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Lets the writers finish what is queued; the first batch given up, if any.
    pub async fn finish(self) -> Option<Abandoned> {
        drop(self.queues);
        let mut abandoned = None;
        for task in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => abandoned = abandoned.or(Some(e)),
                Err(e) => abandoned = abandoned.or(Some(Abandoned { attempts: 0, last: format!("the writer task failed: {e}") })),
            }
        }
        abandoned
    }
}
