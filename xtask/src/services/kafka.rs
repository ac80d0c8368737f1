//! The Kafka broker: nisshi, in memory, at `$KAFKA_BROKERS` (default
//! 127.0.0.1:9092). A broker elsewhere is only checked.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{log_tail, Running};
use super::{fail, is_local_host, listen_host, say, status_line, Failure, Result, Stack};
use crate::probe::{kafka_answers, split_host_port, tcp_open};
use crate::tools::{nisshi_bin, version_at_least};
use crate::DEFAULT_BROKERS;

const INSTALL_LOG: &str = "/tmp/nisshi-install.log";
/// nisshi 0.8.1 needs this rustc (its rama dependency).
const MIN_RUSTC: (u32, u32) = (1, 96);
/// Only the storage engines the project uses: memory:// (dynostore) for the
/// stack, sqlite:// (libsql) for the fault tests' durable brokers. The
/// default features add the PostgreSQL engine and its dependencies.
const INSTALL_ARGS: [&str; 6] = ["install", "nisshi@0.8.1", "--locked", "--no-default-features", "--features", "dynostore,libsql"];

/// Host and port of the first broker in `brokers`.
fn first_broker(brokers: &str) -> (String, u16) {
    let first = brokers.split(',').next().unwrap_or_default();
    let first = first.split_once("://").map_or(first, |(_, rest)| rest);
    split_host_port(first, 9092).unwrap_or_else(|| (first.to_string(), 9092))
}

pub(super) fn up(stack: &Stack) -> Result<()> {
    let brokers = std::env::var("KAFKA_BROKERS").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| DEFAULT_BROKERS.into());
    let (host, port) = first_broker(&brokers);
    let address = format!("{host}:{port}");
    if !is_local_host(&host) {
        say!("kafka: checking the broker at {address} (KAFKA_BROKERS)");
        if !kafka_answers(&host, port) {
            return Err(fail(
                format!("kafka: nothing speaking Kafka answers at {address}"),
                "start that broker, or unset KAFKA_BROKERS to run a local nisshi",
            ));
        }
        say!("kafka: {address} answers");
        return stack.set_env("KAFKA_BROKERS", &brokers);
    }
    if let Some(pid) = stack.recorded_pid("kafka", "nisshi") {
        stack.check_recorded_address("kafka", pid, &address)?;
        if kafka_answers(&host, port) {
            say!("kafka: already running (pid {pid}) at {address}");
        } else {
            say!("kafka: pid {pid} is running; waiting for {address} to answer");
            stack.wait_until_answers("kafka", Running::Found(pid), 30, || kafka_answers(&host, port))?;
        }
        return stack.set_env("KAFKA_BROKERS", &address);
    }
    if tcp_open(&host, port) {
        if !kafka_answers(&host, port) {
            return Err(fail(
                format!("kafka: {address} is taken by something that does not speak Kafka"),
                format!("stop whatever listens there (ss -ltnp 'sport = :{port}'), or set KAFKA_BROKERS=127.0.0.1:<another port>"),
            ));
        }
        say!("kafka: a Kafka broker not started by this script already answers at {address}; using it");
        return stack.set_env("KAFKA_BROKERS", &address);
    }
    let bin = ensure_nisshi()?;
    say!("kafka: starting nisshi ({}) at {address}, in-memory storage (log .services/kafka.log)", bin.display());
    let listener = format!("tcp://{}:{port}", listen_host(&host));
    let advertised = format!("tcp://{host}:{port}");
    let args = ["broker", "--listener-url", &listener, "--advertised-listener-url", &advertised, "--storage-engine", "memory://nisshi/"];
    let child = stack.start_background("kafka", &address, &bin, &args)?;
    let pid = child.id();
    stack.wait_until_answers("kafka", Running::Started(child), 30, || kafka_answers(&host, port))?;
    say!("kafka: up (pid {pid}) at {address}");
    stack.set_env("KAFKA_BROKERS", &address)
}

/// The version of `rustc [+toolchain]`, e.g. `1.96.0-nightly`.
fn rustc_version(toolchain: Option<&str>) -> Option<String> {
    let out = Command::new("rustc").args(toolchain).arg("--version").stderr(Stdio::null()).output().ok()?;
    String::from_utf8(out.stdout).ok()?.split_whitespace().nth(1).map(str::to_string)
}

fn rustc_new_enough(toolchain: Option<&str>) -> bool {
    rustc_version(toolchain).is_some_and(|v| version_at_least(&v, MIN_RUSTC))
}

/// The cargo toolchain argument that builds nisshi: none when the default
/// rustc is new enough, else `+nightly`, installed or updated when it is
/// missing or too old (stable was 1.95 when nisshi 0.8.1 came out).
fn nisshi_toolchain() -> Result<Option<&'static str>> {
    if rustc_new_enough(None) {
        return Ok(None);
    }
    let min = format!("{}.{}", MIN_RUSTC.0, MIN_RUSTC.1);
    let current = rustc_version(None).map_or("no rustc".to_string(), |v| format!("rustc {v}"));
    if crate::tools::on_path("rustup").is_none() {
        return Err(fail(
            format!("kafka: nisshi needs rustc >= {min}; {current} is older and rustup is missing"),
            "install rustup (https://rustup.rs), then: rustup toolchain install nightly --profile minimal",
        ));
    }
    if !rustc_new_enough(Some("+nightly")) {
        say!("kafka: nisshi needs rustc >= {min} and the default toolchain has {current}; installing the nightly toolchain: rustup toolchain install nightly --profile minimal");
        let installed =
            Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]).stdout(Stdio::inherit()).status();
        if !installed.is_ok_and(|s| s.success()) {
            return Err(fail("kafka: rustup toolchain install nightly failed", "rustup toolchain install nightly --profile minimal"));
        }
        if !rustc_new_enough(Some("+nightly")) {
            return Err(fail(format!("kafka: the nightly toolchain's rustc is still older than {min}"), "rustup update nightly"));
        }
    }
    Ok(Some("+nightly"))
}

/// The command line of `cargo [+TOOLCHAIN] install [...] nisshi[@VERSION]`,
/// as rustup's proxy runs it (`.../bin/cargo install nisshi@0.8.1 ...`).
const INSTALL_PATTERN: &str = r"cargo (\+[^ ]+ )?install (.* )?nisshi(@[^ ]*)?( |$)";

/// An install under way, by this stack or by hand (`cargo install nisshi` or
/// `cargo +TOOLCHAIN install nisshi`). Only looks; never signals anything.
fn install_running() -> bool {
    Command::new("pgrep").args(["-f", INSTALL_PATTERN]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// The last line of the install log, for a progress line.
fn install_progress() -> String {
    let log = std::fs::read_to_string(INSTALL_LOG).unwrap_or_default();
    let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().replace('\r', "");
    last.trim().chars().take(100).collect()
}

fn install_command(toolchain: Option<&str>) -> String {
    let mut words = vec!["cargo"];
    words.extend(toolchain);
    words.extend(INSTALL_ARGS);
    words.join(" ")
}

/// Finds nisshi, waiting for an install already under way or running one,
/// with a progress line every minute.
fn ensure_nisshi() -> Result<PathBuf> {
    if let Some(bin) = nisshi_bin() {
        return Ok(bin);
    }
    if install_running() {
        say!("kafka: nisshi is being installed by another process (log {INSTALL_LOG}); waiting for it");
        let started = Instant::now();
        let mut last_progress = Instant::now() - Duration::from_secs(60);
        while install_running() && started.elapsed() < Duration::from_secs(3600) {
            if last_progress.elapsed() >= Duration::from_secs(60) {
                say!("kafka:   ... {}", install_progress());
                last_progress = Instant::now();
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        return nisshi_bin().ok_or_else(|| {
            log_tail(INSTALL_LOG.as_ref());
            fail(
                "kafka: the running nisshi install finished without a nisshi binary",
                format!("{}   (needs rustc >= 1.96)", install_command(Some("+nightly"))),
            )
        });
    }
    if crate::tools::on_path("cargo").is_none() {
        return Err(fail(
            "kafka: nisshi is not installed and cargo is missing",
            format!(
                "install Rust (https://rustup.rs), then: rustup toolchain install nightly --profile minimal && {}",
                install_command(Some("+nightly"))
            ),
        ));
    }
    let toolchain = nisshi_toolchain()?;
    let shown = install_command(toolchain);
    say!("kafka: installing nisshi: {shown} (takes 12-18 minutes on 2 cores; log {INSTALL_LOG})");
    let log = std::fs::File::create(INSTALL_LOG).map_err(|e| super::io_failure("create the install log", e))?;
    let log_err = log.try_clone().map_err(|e| super::io_failure("open the install log", e))?;
    let mut cargo = Command::new("cargo");
    cargo.args(toolchain).args(INSTALL_ARGS).stdin(Stdio::null()).stdout(log).stderr(log_err);
    let mut child = cargo.spawn().map_err(|e| fail(format!("kafka: cannot run {shown}: {e}"), "is cargo on PATH?"))?;
    let started = Instant::now();
    let mut minutes = 0;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_secs(1)),
            Err(e) => return Err(fail(format!("kafka: waiting for {shown}: {e}"), format!("read {INSTALL_LOG}"))),
        }
        if started.elapsed().as_secs() / 60 > minutes {
            minutes = started.elapsed().as_secs() / 60;
            say!("kafka:   ... {minutes} min: {}", install_progress());
        }
    };
    if !status.success() {
        log_tail(INSTALL_LOG.as_ref());
        return Err(fail(format!("kafka: {shown} failed"), format!("read {INSTALL_LOG}")));
    }
    say!("kafka: nisshi installed in {} min {} s", started.elapsed().as_secs() / 60, started.elapsed().as_secs() % 60);
    nisshi_bin().ok_or_else(|| Failure {
        what: "kafka: nisshi installed but not found in PATH or ~/.cargo/bin".into(),
        fix: Some("add ~/.cargo/bin to PATH".into()),
    })
}

pub(super) fn down(stack: &Stack) -> Result<()> {
    stack.stop_recorded("kafka", "nisshi")
}

pub(super) fn status(stack: &Stack) -> String {
    let (host, port) = first_broker(&stack.setting("KAFKA_BROKERS", DEFAULT_BROKERS));
    let state = if kafka_answers(&host, port) { "up" } else { "down" };
    let address = format!("{host}:{port}");
    match stack.recorded_pid("kafka", "nisshi") {
        Some(pid) => status_line("kafka", state, &address, &pid.to_string(), ".services/kafka.log"),
        None => status_line("kafka", state, &address, "-", "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nisshi_install_under_way_is_recognised_with_or_without_a_version() {
        let mut sleeper = Command::new("bash")
            .args(["-c", "exec -a '/root/.rustup/toolchains/nightly/bin/cargo install nisshi@0.8.1 --locked' sleep 30"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !install_running() {
            assert!(Instant::now() < deadline, "an install of nisshi@0.8.1 was not seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        sleeper.kill().unwrap();
        sleeper.wait().unwrap();
        let matches = |line: &str| {
            Command::new("grep").args(["-Eq", INSTALL_PATTERN]).stdin(Stdio::piped()).spawn().map(|mut grep| {
                use std::io::Write;
                grep.stdin.take().unwrap().write_all(line.as_bytes()).unwrap();
                grep.wait().unwrap().success()
            })
        };
        assert!(matches("cargo +nightly install nisshi --locked").unwrap());
        assert!(matches("cargo install nisshi").unwrap());
        assert!(!matches("cargo install nisshi-extra").unwrap());
    }

    #[test]
    fn the_first_broker_of_a_list_is_the_one_checked() {
        assert_eq!(first_broker("127.0.0.1:9092"), ("127.0.0.1".into(), 9092));
        assert_eq!(first_broker("kafka.example:19092,other:9092"), ("kafka.example".into(), 19092));
        assert_eq!(first_broker("tcp://localhost:9093"), ("localhost".into(), 9093));
        assert_eq!(first_broker("[::1]:9092"), ("[::1]".into(), 9092));
    }
}
