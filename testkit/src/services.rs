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
        let down: Vec<String> = [
            ("kafka", self.brokers.split(',').next().unwrap_or_default().to_string()),
            ("postgres", address_of(&self.database_url, 5432)),
            ("search", address_of(&self.search_url, 9200)),
        ]
        .into_iter()
        .filter(|(_, address)| !answers(address))
        .map(|(name, address)| format!("{name} at {address}"))
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
            brokers: get("KAFKA_BROKERS", "127.0.0.1:9092"),
            database_url: get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            search_url: get("ELASTICSEARCH_URL", "http://127.0.0.1:9200"),
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

/// `host:port` of a URL such as `postgres://user@host:port/db`, with the
/// scheme's default port when it names none.
fn address_of(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    }
}

/// Whether something accepts a TCP connection at `address` within 2 s.
fn answers(address: &str) -> bool {
    use std::net::{TcpStream, ToSocketAddrs};
    let Ok(addresses) = address.to_socket_addrs() else { return false };
    addresses.into_iter().any(|a| TcpStream::connect_timeout(&a, std::time::Duration::from_secs(2)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_address_is_read_from_its_url_with_the_default_port_when_none_is_named() {
        assert_eq!(address_of("postgres://postgres@127.0.0.1:5432/test", 1), "127.0.0.1:5432");
        assert_eq!(address_of("postgres://u:p@db.example/test?sslmode=off", 5432), "db.example:5432");
        assert_eq!(address_of("http://127.0.0.1:9200", 9200), "127.0.0.1:9200");
        assert_eq!(address_of("https://search.example/", 9200), "search.example:9200");
    }

    #[test]
    fn a_port_nothing_listens_on_does_not_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        assert!(answers(&address));
        drop(listener);
        assert!(!answers(&address));
    }
}
