//! Kafka → batches of records. The first stage: it reads, batches by size
//! and wait, and hands batches downstream through a bounded channel, so a slow
//! store slows reading instead of filling memory. Each assigned partition
//! starts where PostgreSQL says ([`offsets`]).

pub mod config;
mod offsets;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::stages::record::{Consumed, Provenance};
use crate::stats::{BatchStage, Stats};
use config::SourceConfig;

pub use offsets::{Awaiting, OffsetLookup};

/// Starts assigned partitions at PostgreSQL's offsets, logs assignments
/// (what an operator wants to see when hosts join or leave the group), and
/// feeds the client's statistics (the brokers' high watermarks) into the lag
/// metric.
pub struct SourceContext {
    stats: Arc<Stats>,
    offsets: OffsetLookup,
    awaiting: Arc<Awaiting>,
}

impl SourceContext {
    /// Sets each partition of an assignment to start at the next offset
    /// PostgreSQL stored for it, or at the beginning when it stored none.
    /// When PostgreSQL cannot say, the partitions are marked as waiting and
    /// returned, to be paused once assigned: Kafka's committed offsets may be
    /// ahead of the database (a new or restored one), and starting there
    /// would skip the records in between for good.
    fn start_at_stored_offsets(&self, tpl: &mut TopicPartitionList) -> Option<TopicPartitionList> {
        let partitions: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        match self.offsets.lookup(&partitions) {
            Ok(stored) => {
                for (topic, partition) in &partitions {
                    let offset = stored.get(&(topic.clone(), *partition)).map_or(Offset::Beginning, |n| Offset::Offset(*n));
                    if let Err(e) = tpl.set_partition_offset(topic, *partition, offset) {
                        tracing::warn!(%topic, partition, error = %e, "cannot set the start offset");
                    }
                }
                tracing::info!(partitions = %describe(tpl), "starting at the offsets stored in PostgreSQL");
                None
            }
            Err(e) => {
                let waiting = self.awaiting.add(&partitions);
                self.stats.partitions_awaiting_offsets.set(waiting as i64);
                tracing::error!(
                    error = %e,
                    partitions = %describe(tpl),
                    "cannot read the stored offsets from PostgreSQL; the partitions are paused until it answers, then start at its offsets \
                     (never at Kafka's committed ones, which may be ahead of the database)"
                );
                Some(tpl.clone())
            }
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (name, topic) in &statistics.topics {
            for (id, partition) in &topic.partitions {
                // -1 is librdkafka's internal "unassigned" partition; a
                // negative watermark means "not known yet".
                if *id >= 0 && partition.desired && partition.hi_offset >= 0 {
                    self.stats.high_watermark(name, *id, partition.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    /// The default rebalance, with the assignment's start offsets taken from
    /// PostgreSQL first.
    fn rebalance(&self, base_consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let assign = err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
        let paused = if assign { self.start_at_stored_offsets(tpl) } else { None };
        let rebalance = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => Rebalance::Assign(tpl),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => Rebalance::Revoke(tpl),
            other => Rebalance::Error(KafkaError::Rebalance(other.into())),
        };
        let cooperative = matches!(base_consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let result = match (assign, cooperative) {
            (true, true) => base_consumer.incremental_assign(tpl),
            (true, false) => base_consumer.assign(tpl),
            (false, true) => base_consumer.incremental_unassign(tpl),
            (false, false) => base_consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot apply the partition assignment");
        }
        if let Some(paused) = paused {
            // Records fetched before this took hold are dropped by the
            // reading loop: the partitions are marked as waiting already.
            if let Err(e) = base_consumer.pause(&paused) {
                tracing::error!(error = %e, partitions = %describe(&paused), "cannot pause the partitions waiting for their offsets; their records are dropped until PostgreSQL answers");
            }
        }
        self.post_rebalance(base_consumer, &rebalance);
    }

    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(partitions = %describe(tpl), "partitions assigned"),
            Rebalance::Revoke(tpl) => {
                tracing::info!(partitions = %describe(tpl), "partitions revoked");
                let revoked: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                self.stats.partitions_revoked(&revoked);
                let waiting = self.awaiting.remove(&revoked);
                self.stats.partitions_awaiting_offsets.set(waiting as i64);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}

/// The consumer, shared by the reading loop and the committer.
pub type SourceConsumer = StreamConsumer<SourceContext>;

/// Checks every client property, the pipeline's and `[source.kafka]`'s,
/// the way librdkafka will take them, without creating a client (nothing
/// connects): an unknown property or a value it refuses is an error now
/// rather than when the pipeline starts. A secret's value is not in it.
pub fn check_properties(config: &SourceConfig) -> Result<(), KafkaError> {
    client(config).create_native_config().map(|_| ()).map_err(crate::kafka::without_secrets)
}

/// Creates the consumer and subscribes to the configured topics; assigned
/// partitions start at the offsets `offsets` reads from PostgreSQL.
pub fn connect(config: &SourceConfig, offsets: OffsetLookup, stats: Arc<Stats>) -> Result<Arc<SourceConsumer>, KafkaError> {
    let consumer: SourceConsumer = client(config)
        .create_with_context(SourceContext { stats, offsets, awaiting: Arc::default() })
        .map_err(crate::kafka::without_secrets)?;
    let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    Ok(Arc::new(consumer))
}

/// The consumer's client properties: the pipeline's own, then `[source.kafka]`.
fn client(config: &SourceConfig) -> rdkafka::ClientConfig {
    // The properties below that the guarantee depends on are refused in
    // [source.kafka] by config validation, so nothing overrides them.
    let mut client = crate::kafka::client_config(&config.brokers, &config.kafka);
    client
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        // Only when PostgreSQL's offsets cannot be read.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("partition.assignment.strategy", "range,roundrobin")
        // A topic created after start-up is found within seconds, not the
        // default five minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("fetch.max.bytes", "52428800")
        // High watermarks for the lag metric; parsing the statistics costs
        // little at this interval.
        .set("statistics.interval.ms", "2000");
    for (k, v) in &config.kafka {
        client.set(k, v);
    }
    client
}

/// Batching limits, adjustable while running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most records per batch.
    pub batch_size: usize,
    /// Longest a partial batch waits.
    pub max_wait: Duration,
}

/// Reads until `shutdown` turns true, sending batches to `out`. Returns when
/// the last partial batch has been handed over.
pub async fn run(
    consumer: Arc<SourceConsumer>,
    batching: watch::Receiver<Batching>,
    out: mpsc::Sender<Vec<Consumed>>,
    mut shutdown: watch::Receiver<bool>,
    stats: Arc<Stats>,
) {
    let mut batch: Vec<Consumed> = Vec::new();
    let mut deadline = tokio::time::Instant::now();
    let mut started = std::time::Instant::now();
    let handed = |batch: &[Consumed], started: std::time::Instant| stats.batch(BatchStage::Source, batch.len(), started.elapsed());
    let awaiting = consumer.context().awaiting.clone();
    let resuming = tokio::spawn(resume_when_offsets_known(consumer.clone(), stats.clone(), shutdown.clone()));
    loop {
        let limits = *batching.borrow();
        tokio::select! {
            biased;
            _ = async { shutdown.wait_for(|stop| *stop).await.map(|_| ()) } => break,
            _ = tokio::time::sleep_until(deadline), if !batch.is_empty() => {
                handed(&batch, started);
                if out.send(std::mem::take(&mut batch)).await.is_err() {
                    return;
                }
            }
            received = consumer.recv() => match received.map(|m| to_consumed(&m)) {
                Ok(record) if awaiting.holds(&record.provenance.topic, record.provenance.partition) => {}
                Ok(record) => {
                    if batch.is_empty() {
                        deadline = tokio::time::Instant::now() + limits.max_wait;
                        started = std::time::Instant::now();
                    }
                    stats.consumed.inc();
                    stats.consumed_bytes.inc_by(record.payload.len() as u64);
                    batch.push(record);
                    if batch.len() >= limits.batch_size {
                        handed(&batch, started);
                        if out.send(std::mem::take(&mut batch)).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kafka consumer error; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
    }
    resuming.abort();
    if !batch.is_empty() {
        let _ = out.send(batch).await;
    }
}

/// Resumes the partitions waiting for their offsets ([`Awaiting`]): asks
/// PostgreSQL again, with backoff, off the rebalance callback; once it
/// answers, seeks each partition to its stored offset (the beginning when
/// none is stored) and resumes it.
async fn resume_when_offsets_known(consumer: Arc<SourceConsumer>, stats: Arc<Stats>, mut shutdown: watch::Receiver<bool>) {
    let awaiting = consumer.context().awaiting.clone();
    let mut pauses = crate::backoff::pauses(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let waiting = awaiting.list();
        if waiting.is_empty() {
            pauses = crate::backoff::pauses(Duration::from_millis(200), Duration::from_secs(5));
            tokio::select! {
                _ = awaiting.added() => continue,
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
        let asking = consumer.clone();
        let resumed = tokio::task::spawn_blocking(move || seek_and_resume(&asking, &waiting)).await;
        match resumed {
            Ok(Ok(())) => {
                stats.partitions_awaiting_offsets.set(awaiting.list().len() as i64);
                continue;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "partitions still waiting for their offsets from PostgreSQL; asking again"),
            Err(e) => tracing::warn!(error = %e, "the offset lookup task failed; asking again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(pauses.next_pause()) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One attempt: PostgreSQL's offsets for `partitions`, each sought and
/// resumed unless revoked meanwhile. Blocks (the lookup, the seeks).
fn seek_and_resume(consumer: &SourceConsumer, partitions: &[(String, i32)]) -> Result<(), String> {
    let context = consumer.context();
    let stored = context.offsets.lookup_once(partitions)?;
    for (topic, partition) in partitions {
        if !context.awaiting.holds(topic, *partition) {
            continue;
        }
        let offset = stored.get(&(topic.clone(), *partition)).map_or(Offset::Beginning, |n| Offset::Offset(*n));
        consumer.seek(topic, *partition, offset, Duration::from_secs(10)).map_err(|e| format!("cannot seek {topic}/{partition}: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, *partition);
        // Forgotten before resuming: records from the new position must not be dropped.
        context.awaiting.remove(&[(topic.clone(), *partition)]);
        if let Err(e) = consumer.resume(&tpl) {
            context.awaiting.add(&[(topic.clone(), *partition)]);
            return Err(format!("cannot resume {topic}/{partition}: {e}"));
        }
        tracing::info!(%topic, partition, ?offset, "PostgreSQL answered; the partition resumes at its stored offset");
    }
    Ok(())
}

fn to_consumed(message: &rdkafka::message::BorrowedMessage<'_>) -> Consumed {
    Consumed {
        provenance: Provenance {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            received_at: Utc::now(),
        },
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

/// Tells Kafka what the store has committed, for lag tools and for a
/// faster restart; PostgreSQL remains the authority.
pub fn commit(consumer: &SourceConsumer, next_offsets: &std::collections::BTreeMap<(String, i32), i64>, mode: CommitMode) {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets {
        if tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)).is_err() {
            return;
        }
    }
    if let Err(e) = consumer.commit(&tpl, mode) {
        // A partition revoked in the meantime refuses the commit; harmless.
        tracing::debug!(error = %e, "kafka offset commit refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(kafka: &[(&str, &str)]) -> SourceConfig {
        let text = "topics = [\"clicks\"]";
        let mut config: SourceConfig = toml::from_str(text).unwrap();
        config.kafka = kafka.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        config
    }

    #[test]
    fn every_property_is_checked_before_a_client_exists_and_a_misspelt_secret_is_not_shown() {
        assert!(check_properties(&with(&[("session.timeout.ms", "6000")])).is_ok());
        let unknown = check_properties(&with(&[("sasl.pasword", "hunter2-secret")])).unwrap_err().to_string();
        assert!(unknown.contains("sasl.pasword") && !unknown.contains("hunter2"), "{unknown}");
        let bad_value = check_properties(&with(&[("session.timeout.ms", "soon")])).unwrap_err().to_string();
        assert!(bad_value.contains("session.timeout.ms"), "{bad_value}");
    }
}
