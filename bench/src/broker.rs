//! `broker`, the broker ceiling: the ingest topic consumed by an rdkafka
//! consumer that does nothing with the records, with the same consumer
//! settings as the pipeline's source. The fastest the broker and client
//! deliver on this machine, so a broker limit is not mistaken for a pipeline
//! limit.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use serde_json::{json, Value};

use super::stats::{mib_per_s, rate};
use super::{progress, Bench, State};

/// A consumer with the source's fetch settings, and the assignment of every
/// partition of `topic` from the beginning (assigned, not subscribed: no
/// group join in a measurement).
pub fn consumer_from_beginning(
    bench: &Bench,
    topic: &super::data::Topic,
    name: &str,
) -> anyhow::Result<(StreamConsumer, rdkafka::TopicPartitionList)> {
    let mut config = clickstream::kafka::client_config(&bench.services.brokers, &Default::default());
    config
        .set("group.id", format!("bench-{name}-{}", bench.unique))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.max.bytes", "52428800");
    let consumer: StreamConsumer = config.create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..topic.partitions {
        assignment.add_partition_offset(&topic.name, p, rdkafka::Offset::Beginning)?;
    }
    Ok((consumer, assignment))
}

/// Runs `broker`.
pub async fn run(bench: &Bench, state: &State) -> anyhow::Result<Value> {
    let topic = state.topic.as_ref().context("the ingest topic was not produced")?;
    let (consumer, assignment) = consumer_from_beginning(bench, topic, "ceiling")?;
    let subscribed = Instant::now();
    consumer.assign(&assignment)?;
    let mut first: Option<Instant> = None;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut last_report = Instant::now();
    while records < topic.records {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .with_context(|| format!("no record for 60 s after {records} of {}", topic.records))??;
        first.get_or_insert_with(Instant::now);
        records += 1;
        bytes += message.payload().map_or(0, <[u8]>::len) as u64;
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format_args!("  consumed {records}/{}", topic.records));
            last_report = Instant::now();
        }
    }
    let done = Instant::now();
    let first = first.expect("at least one record");
    // From assign(): connecting and the first fetch are part of delivering.
    let secs = (done - subscribed).as_secs_f64();
    let r = rate(records as f64, secs);
    progress(format_args!("  broker ceiling: {r:.0} records/s ({:.1} MiB/s)", mib_per_s(bytes as f64, secs)));
    Ok(json!({
        "topic": topic.name,
        "partitions": topic.partitions,
        "records": records,
        "payload_mib": bytes as f64 / 1048576.0,
        "mean_record_bytes": bytes as f64 / records.max(1) as f64,
        "producer_records_per_s": topic.produce_rate,
        "first_record_after_assign_s": (first - subscribed).as_secs_f64(),
        "seconds": secs,
        "events_per_s": r,
        "mib_per_s": mib_per_s(bytes as f64, secs),
        "measures": "assign() of every partition from the beginning → last record received, one StreamConsumer (the source's fetch settings), payloads counted and dropped",
    }))
}
