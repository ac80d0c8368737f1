//! A Kafka broker a fault test may stop, kill and restart.

use std::path::PathBuf;
use std::process::Command;

use crate::logs::eprint_tail;

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
            eprint_tail(&self.log_path());
        }
    }
}

/// The nisshi binary, found as `scripts/services` finds it.
fn nisshi_bin() -> PathBuf {
    xtask::tools::nisshi_bin().unwrap_or_else(|| {
        panic!(
            "the nisshi broker is not installed (not on PATH, not in ~/.cargo/bin): run `scripts/services up`, \
             which installs it, or `cargo +nightly install nisshi --locked` (it needs rustc >= 1.96)"
        )
    })
}

fn kafka_answers(port: u16) -> bool {
    xtask::probe::kafka_answers("127.0.0.1", port)
}
