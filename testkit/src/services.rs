//! The stack's addresses, as `scripts/services env` exports them.

use std::sync::OnceLock;

/// Environment variables that override pipeline.toml's service addresses.
/// CI exports them for the whole suite; a test's or the benchmark's own
/// pipeline file (its own database, its own search server) must win over them.
pub const OVERRIDES: [&str; 4] = ["KAFKA_BROKERS", "DATABASE_URL", "ELASTICSEARCH_URL", "CLICKSTREAM_API_LISTEN"];

/// Where the stack's services answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Services {
    /// Kafka bootstrap brokers (`KAFKA_BROKERS`, default the local nisshi).
    pub brokers: String,
    /// The admin database (`DATABASE_URL`); fresh databases are created next to it.
    pub database_url: String,
    /// The search server (`ELASTICSEARCH_URL`).
    pub search_url: String,
}

impl Services {
    /// Panics at once, naming each service that does not answer and the
    /// command that starts them, instead of letting a test time out on it.
    pub fn require(&self) {
        use xtask::probe::{tcp_open, url_host_port};
        let down: Vec<String> = [
            ("kafka", url_host_port(self.brokers.split(',').next().unwrap_or_default(), 9092)),
            ("postgres", url_host_port(&self.database_url, 5432)),
            ("search", url_host_port(&self.search_url, 9200)),
        ]
        .into_iter()
        .filter(|(_, address)| !address.as_ref().is_some_and(|(host, port)| tcp_open(host, *port)))
        .map(|(name, address)| match address {
            Some((host, port)) => format!("{name} at {host}:{port}"),
            None => format!("{name} (no host and port in its address)"),
        })
        .collect();
        assert!(
            down.is_empty(),
            "this test needs the dev stack, and {} {} not answer: start it with `scripts/services up` \
             (then `eval \"$(scripts/services env)\"`), or run only the tests that need no services with `cargo test`",
            down.join(", "),
            if down.len() == 1 { "does" } else { "do" }
        );
    }

    /// Reads the variables, with the addresses `scripts/services up` uses as defaults.
    pub fn from_env() -> Services {
        let get = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Services {
            brokers: get("KAFKA_BROKERS", xtask::DEFAULT_BROKERS),
            database_url: get("DATABASE_URL", xtask::DEFAULT_DATABASE_URL),
            search_url: get("ELASTICSEARCH_URL", xtask::DEFAULT_SEARCH_URL),
        }
    }
}

/// The stack's addresses, read once; the variables are then removed from
/// this process, because they override pipeline.toml and a test's own
/// pipeline file must win, in-process pipelines and reloads included.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let services = Services::from_env();
        services.require();
        for name in OVERRIDES {
            std::env::remove_var(name);
        }
        services
    })
}

/// Brokers of the test stack.
pub fn brokers() -> String {
    services().brokers.clone()
}

/// The PostgreSQL server of the test stack.
pub fn database_url() -> String {
    services().database_url.clone()
}

/// The search server of the test stack.
pub fn search_url() -> String {
    services().search_url.clone()
}
