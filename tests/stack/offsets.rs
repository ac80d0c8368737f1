//! Where a consumer starts: at the offsets PostgreSQL stored, not at the
//! ones committed to Kafka, which belong to the consumer group and not to
//! the database.

use clickstream_testkit as support;

use std::collections::BTreeSet;
use std::time::Duration;

use clickstream::produce::{self, Generator, GeneratorConfig};
use sqlx::PgPool;

const WAIT: Duration = Duration::from_secs(120);

async fn run_until_stored(pipeline: &std::path::Path, pool: &PgPool, total: usize) {
    let running = support::InProcess::start(support::load_config(pipeline));
    support::wait_until(WAIT, "every record stored", || async {
        support::count(pool, "SELECT count(*) FROM events").await >= total as i64
    })
    .await;
    running.stop().await;
}

/// The consumer group has committed every offset (to the end of the topic)
/// while storing into one database; pointed at a new, empty database under
/// the same `group_id`, the pipeline still stores every record there, from
/// the beginning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_database_under_the_same_group_id_gets_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let topic = support::unique("offsets_newdb");
    let group = support::unique("g");
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, &topic, 4).await.unwrap();
    let config = GeneratorConfig { events: 2_000, users: 100, seed: 41, ..GeneratorConfig::default() };
    let expected: BTreeSet<String> = Generator::new(config.clone()).map(|r| r.event_id).collect();
    produce::to_kafka(Generator::new(config), &brokers, &topic, None, &Default::default(), &indicatif::ProgressBar::hidden())
        .await
        .unwrap();

    for name in ["offsets_first", "offsets_second"] {
        let db = support::fresh_database(name).await;
        let pool = support::pool(&db).await;
        let pipeline = support::write_pipeline(dir.path(), &topic, &group, &db, "");
        run_until_stored(&pipeline, &pool, expected.len()).await;
        let stored: BTreeSet<String> =
            sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&pool).await.unwrap().into_iter().collect();
        assert_eq!(stored, expected, "{name}: every record, once");
    }
}

/// The consumer group has committed offsets to the end of the topic, the
/// database is new (or restored from before those records), and PostgreSQL
/// is down when the partitions are assigned. Starting from Kafka's committed
/// offsets would skip every record for good; instead the partitions wait,
/// paused, and once PostgreSQL is back start at its offsets: every record is
/// stored once, and no offset gap is counted.
///
/// On a current-thread runtime the pipeline's tasks run only when the test
/// yields, so PostgreSQL is stopped (in `started`) before the source first
/// polls and is assigned its partitions.
#[tokio::test(flavor = "current_thread")]
async fn partitions_assigned_while_postgresql_is_down_wait_for_its_offsets_and_skip_nothing() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let postgres = std::sync::Arc::new(support::PrivatePostgres::start());
    let mut server = support::connect_server(&postgres.url).await.unwrap();
    let db = support::create_database(&mut server, &postgres.url, "offsets_down").await.unwrap();
    drop(server);
    let dir = tempfile::tempdir().unwrap();
    let topic = support::unique("offsets_down");
    let group = support::unique("g");
    let brokers = support::brokers();
    clickstream::kafka::ensure_topic(&brokers, &topic, 2).await.unwrap();
    let config = GeneratorConfig { events: 300, users: 50, seed: 43, ..GeneratorConfig::default() };
    let expected: BTreeSet<String> = Generator::new(config.clone()).map(|r| r.event_id).collect();
    produce::to_kafka(Generator::new(config), &brokers, &topic, None, &Default::default(), &indicatif::ProgressBar::hidden())
        .await
        .unwrap();
    // The group's committed offsets: the end of each partition.
    let committer: BaseConsumer =
        clickstream::kafka::client_config(&brokers, &Default::default()).set("group.id", &group).create().unwrap();
    let mut ends = rdkafka::TopicPartitionList::new();
    for partition in 0..2 {
        let (_, high) = committer.fetch_watermarks(&topic, partition, Duration::from_secs(10)).unwrap();
        assert!(high > 0, "partition {partition} holds records");
        ends.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(high)).unwrap();
    }
    committer.commit(&ends, CommitMode::Sync).unwrap();
    drop(committer);

    let pipeline = support::write_pipeline(dir.path(), &topic, &group, &db, "[aggregate]\ninterval_ms = 3600000\n");
    let stopping = postgres.clone();
    let running = support::InProcess::start_with(support::load_config(&pipeline), move |_| stopping.stop());
    let stats = running.stats.clone();
    support::wait_until(WAIT, "both partitions paused for want of their offsets", || {
        let stats = stats.clone();
        async move { stats.partitions_awaiting_offsets.get() == 2 }
    })
    .await;
    assert_eq!(stats.consumed.get(), 0, "nothing is read from Kafka's committed offsets");

    postgres.start_again();
    let pool = support::pool(&db).await;
    support::wait_until(WAIT, "every record stored", || support::reconciled(&pool, expected.len())).await;
    running.stop().await;
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&pool).await.unwrap();
    assert_eq!(stored.len(), expected.len(), "each once");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), expected);
    assert_eq!(stats.partitions_awaiting_offsets.get(), 0);
    assert_eq!((stats.offset_gap_records_of(&topic, 0), stats.offset_gap_records_of(&topic, 1)), (0, 0));
}
