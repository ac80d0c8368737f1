//! Where generated records go: an NDJSON file, or a Kafka topic with
//! pacing and delivery confirmation; and the summary of what was written.

use std::fmt;

use super::{BadKind, Generator, Record};

/// Counts of what was written.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Records written, bad ones included.
    pub records: u64,
    /// Bytes of payload written.
    pub bytes: u64,
    /// Bad records by kind.
    pub bad: std::collections::BTreeMap<BadKind, u64>,
    /// Wall time.
    pub elapsed: std::time::Duration,
}

impl Summary {
    fn count(&mut self, record: &Record) {
        self.records += 1;
        self.bytes += record.payload.len() as u64;
        if let Some(kind) = record.bad {
            *self.bad.entry(kind).or_default() += 1;
        }
    }

    /// Records the pipeline must dead-letter.
    pub fn dead_letters(&self) -> u64 {
        self.bad.iter().filter(|(k, _)| k.is_dead_letter()).map(|(_, n)| n).sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} records ({:.1} MiB) in {:.1} s: {:.0} records/s; {} bad",
            self.records,
            self.bytes as f64 / (1 << 20) as f64,
            secs,
            self.records as f64 / secs,
            self.bad.values().sum::<u64>()
        )?;
        if !self.bad.is_empty() {
            let kinds: Vec<String> = self.bad.iter().map(|(k, n)| format!("{k}={n}")).collect();
            write!(f, " ({}; {} to be dead-lettered)", kinds.join(", "), self.dead_letters())?;
        }
        Ok(())
    }
}

/// Why producing stopped.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum ProduceError {
    /// The broker refused or could not be reached.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The output file could not be written.
    #[error("writing {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Paces output to `rate` records per second (no pacing when `None`).
struct Pace {
    rate: Option<u64>,
    started: std::time::Instant,
}

impl Pace {
    async fn wait(&self, sent: u64) {
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = self.started + std::time::Duration::from_secs_f64(sent as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Writes the records as NDJSON (one payload a line; payloads hold no newline).
pub fn to_file(generator: Generator, path: &std::path::Path, progress: &indicatif::ProgressBar) -> Result<Summary, ProduceError> {
    use std::io::Write;
    let started = std::time::Instant::now();
    let write_err = |source| ProduceError::Write { path: path.to_path_buf(), source };
    let file = std::fs::File::create(path).map_err(write_err)?;
    let mut out = std::io::BufWriter::new(file);
    let mut summary = Summary::default();
    for record in generator {
        out.write_all(&record.payload).and_then(|_| out.write_all(b"\n")).map_err(write_err)?;
        summary.count(&record);
        progress.inc(1);
    }
    out.flush().map_err(write_err)?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Sends the records to `topic`, keyed by user id, at most `rate` per second,
/// and waits until the broker has acknowledged every one. `properties` are
/// librdkafka producer settings on top of the defaults.
pub async fn to_kafka(
    generator: Generator,
    brokers: &str,
    topic: &str,
    rate: Option<u64>,
    properties: &std::collections::BTreeMap<String, String>,
    progress: &indicatif::ProgressBar,
) -> Result<Summary, ProduceError> {
    use futures::stream::{FuturesUnordered, StreamExt};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let mut config = crate::kafka::client_config(brokers, &Default::default());
    config
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("message.max.bytes", "10000000")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "false");
    for (k, v) in properties {
        config.set(k, v);
    }
    let producer: FutureProducer = config.create()?;
    let pace = Pace { rate, started: std::time::Instant::now() };
    let mut summary = Summary::default();
    let mut in_flight = FuturesUnordered::new();
    // Bounded so a slow broker applies backpressure instead of filling memory.
    const MAX_IN_FLIGHT: usize = 50_000;
    for record in generator {
        pace.wait(summary.records).await;
        let delivery = producer.send_result(FutureRecord::to(topic).key(&record.key).payload(&record.payload)).map_err(|(e, _)| e)?;
        in_flight.push(delivery);
        summary.count(&record);
        while in_flight.len() >= MAX_IN_FLIGHT {
            settle(in_flight.next().await, progress)?;
        }
    }
    while let Some(done) = in_flight.next().await {
        settle(Some(done), progress)?;
    }
    summary.elapsed = pace.started.elapsed();
    Ok(summary)
}

fn settle(
    done: Option<Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>>,
    progress: &indicatif::ProgressBar,
) -> Result<(), ProduceError> {
    match done {
        Some(Ok(Ok(_))) => {
            progress.inc(1);
            Ok(())
        }
        Some(Ok(Err((e, _)))) => Err(ProduceError::Kafka(e)),
        Some(Err(_)) | None => Err(ProduceError::Kafka(rdkafka::error::KafkaError::Canceled)),
    }
}
