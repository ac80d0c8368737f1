//! Where a consumer starts: at the offsets PostgreSQL stored, not at the
//! ones committed to Kafka, which belong to the consumer group and not to
//! the database.

use clickstream_testkit as support;

use std::collections::BTreeSet;
use std::time::Duration;

use clickstream::produce::{self, Generator, GeneratorConfig};
use sqlx::postgres::PgPoolOptions;
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
        let pool = PgPoolOptions::new().max_connections(2).connect(&db).await.unwrap();
        let pipeline = support::write_pipeline(dir.path(), &topic, &group, &db, "");
        run_until_stored(&pipeline, &pool, expected.len()).await;
        let stored: BTreeSet<String> =
            sqlx::query_scalar("SELECT event_id FROM events").fetch_all(&pool).await.unwrap().into_iter().collect();
        assert_eq!(stored, expected, "{name}: every record, once");
    }
}
