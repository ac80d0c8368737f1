//! `services up|down|status|env|geoip-update [SERVICE...]`: finds or starts
//! PostgreSQL, the Kafka broker, the search server and the GeoIP files.
//!
//! State (pid files, logs, the env file) lives in `.services/`, downloads in
//! `data/`; both are git-ignored. Processes are only ever stopped by the pid
//! recorded here, never by name, and never the machine's shared PostgreSQL.

mod env;
mod geoip;
mod kafka;
mod postgres;
mod process;
mod search;

use std::path::{Path, PathBuf};

pub use env::{quote, unquote};

/// Prints a progress line, as every line of `scripts/services` reads.
macro_rules! say {
    ($($arg:tt)*) => { eprintln!("services: {}", format_args!($($arg)*)) };
}
pub(crate) use say;

/// What went wrong, and what to do about it.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub what: String,
    /// The command or step that fixes it, when there is one.
    pub fix: Option<String>,
}

/// A failure with its fix.
pub(crate) fn fail(what: impl Into<String>, fix: impl Into<String>) -> Failure {
    Failure { what: what.into(), fix: Some(fix.into()) }
}

/// The result of one service's step.
pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    /// Prints it as `scripts/services` always has.
    pub fn print(&self) {
        eprintln!("services: error: {}", self.what);
        if let Some(fix) = &self.fix {
            eprintln!("services:   fix: {fix}");
        }
    }
}

/// The services, in the order `up` starts them.
pub const ALL: [&str; 4] = ["postgres", "kafka", "search", "geoip"];

/// Where the stack keeps its state and downloads: `.services/` and `data/`
/// under the workspace root.
#[derive(Debug, Clone)]
pub struct Stack {
    root: PathBuf,
}

impl Stack {
    /// The stack of the workspace at `root`.
    pub fn at(root: impl Into<PathBuf>) -> Stack {
        Stack { root: root.into() }
    }

    /// The stack of this workspace (the folder above `xtask/`).
    pub fn here() -> Stack {
        Stack::at(Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask/ has a parent folder"))
    }

    fn state(&self) -> PathBuf {
        self.root.join(".services")
    }

    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The folder the GeoIP databases are downloaded into.
    pub fn geoip_dir(&self) -> PathBuf {
        self.data().join("geoip")
    }

    /// Starts (or finds) one service.
    pub fn up(&self, service: &str) -> Result<()> {
        match service {
            "postgres" => postgres::up(self),
            "kafka" => kafka::up(self),
            "search" => search::up(self),
            "geoip" => geoip::up(self),
            other => Err(unknown(other)),
        }
    }

    /// Stops one service, if this stack started it.
    pub fn down(&self, service: &str) -> Result<()> {
        match service {
            "postgres" => postgres::down(self),
            "kafka" => kafka::down(self),
            "search" => search::down(self),
            "geoip" => {
                say!("geoip: nothing to stop (the databases stay in data/geoip)");
                Ok(())
            }
            other => Err(unknown(other)),
        }
    }

    /// One line on the state of a service.
    pub fn status(&self, service: &str) -> Result<String> {
        Ok(match service {
            "postgres" => postgres::status(self),
            "kafka" => kafka::status(self),
            "search" => search::status(self),
            "geoip" => geoip::status(self),
            other => return Err(unknown(other)),
        })
    }

    /// Downloads the newest GeoIP files over those in `data/geoip` (a
    /// running host swaps them in).
    pub fn geoip_update(&self) -> Result<()> {
        geoip::update(self)
    }

    /// Holds the stack's lock until dropped: one `up`, `down` or
    /// `geoip-update` at a time (tests may call `up` concurrently). The
    /// first `up` on a fresh machine holds it while it builds the broker, so
    /// the wait is long.
    pub fn lock(&self, command: &str) -> Result<std::fs::File> {
        std::fs::create_dir_all(self.state()).map_err(|e| io_failure("create .services/", e))?;
        let file = std::fs::File::create(self.state().join(".lock")).map_err(|e| io_failure("create .services/.lock", e))?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2400);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(250))
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(fail(
                        format!("another scripts/services {command} has held the lock for 40 minutes"),
                        format!("wait for it, or remove {}", self.state().join(".lock").display()),
                    ))
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io_failure("lock .services/.lock", e)),
            }
        }
    }
}

fn unknown(service: &str) -> Failure {
    Failure { what: format!("unknown service: {service}"), fix: Some(format!("one of: {}", ALL.join(" "))) }
}

pub(crate) fn io_failure(what: &str, error: std::io::Error) -> Failure {
    Failure { what: format!("cannot {what}: {error}"), fix: None }
}

/// `status`'s line for one service.
pub(crate) fn status_line(name: &str, state: &str, address: &str, pid: &str, log: &str) -> String {
    format!("{name:<9} {state:<5} {address:<45} pid={pid:<8} log={log}")
}

/// Host names that mean this machine, where `up` may start a service.
pub(crate) fn is_local_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "localhost" | "::1" | "[::1]")
}

/// The address to listen on for a local host name.
pub(crate) fn listen_host(host: &str) -> &str {
    if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    }
}

/// Runs `step` for each service, even when one fails; fails at the end if any did.
pub fn run_each(command: &str, services: &[&str], mut step: impl FnMut(&str) -> Result<()>) -> bool {
    let failed: Vec<&str> = services
        .iter()
        .copied()
        .filter(|service| match step(service) {
            Ok(()) => false,
            Err(failure) => {
                failure.print();
                true
            }
        })
        .collect();
    if !failed.is_empty() {
        say!("{command} failed for: {}", failed.join(" "));
    }
    failed.is_empty()
}
