//! `clickstream run` as a subprocess: the product as a user runs it, for
//! the tests that kill and restart hosts and for the benchmark's arms.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::logs::{eprint_tail, tail};
use crate::procfs;
use crate::services::OVERRIDES;

/// How long a host may take to drain after SIGTERM: its in-flight batches
/// stored and committed. One that takes longer is stuck, not slow.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of the log an error quotes: enough for the host's own last error.
const ERROR_TAIL_LINES: usize = 20;

/// Why a host could not be started or did not run to a clean exit.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // fields are named for what they hold; each #[error] says how they read
pub enum HostError {
    /// The binary has not been built for this profile.
    #[error(
        "{} is missing: build it first (`cargo build -p clickstream`, with `--release` for a release build); \
         `cargo test -p clickstream` and `scripts/bench` build it",
        path.display()
    )]
    NotBuilt {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The log could not be created, or the process not started or waited for.
    #[error("{doing}: {reason}")]
    Io {
        /// What was being done, e.g. `starting target/debug/clickstream`.
        doing: String,
        /// The operating system's error.
        reason: std::io::Error,
    },
    /// The host exited when it should have run on, or exited with a failure.
    #[error("clickstream run exited ({status}); log: {}\n{tail}", log.display())]
    Exited {
        status: ExitStatus,
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The host did not exit within a minute of SIGTERM, and was killed.
    #[error("clickstream run did not drain within {} s of SIGTERM; killed. Log: {}", DRAIN_TIMEOUT.as_secs(), log.display())]
    Undrained { log: PathBuf },
}

fn io(doing: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let doing = doing.into();
    move |reason| HostError::Io { doing, reason }
}

/// The `clickstream` binary of the running build: in `target/<profile>/`,
/// beside the benchmark's binary, or one folder up from a test's (tests live
/// in `target/<profile>/deps/`). Cargo builds it for the `clickstream`
/// package's integration tests, `scripts/bench` for the benchmark.
pub fn host_binary() -> Result<PathBuf, HostError> {
    let exe = std::env::current_exe().map_err(io("locating the running executable"))?;
    let mut dir = exe.parent().unwrap_or(Path::new("."));
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    let path = dir.join("clickstream");
    if path.is_file() {
        Ok(path)
    } else {
        Err(HostError::NotBuilt { path })
    }
}

/// A `clickstream run` process, killed when dropped (its log's last lines
/// printed when that happens in a failing test).
pub struct Host {
    /// The process, e.g. to see whether it is still running.
    pub child: Child,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    /// When it was started.
    pub started: Instant,
}

impl Host {
    /// Starts `clickstream run PIPELINE`, logging to `log`; panics when it
    /// cannot (a test's way to fail).
    pub fn start(pipeline: &Path, log: &Path) -> Host {
        Host::try_start(pipeline, log, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `clickstream run PIPELINE`, logging to `log`, with extra
    /// environment variables (e.g. `CLICKSTREAM_COMPILE_CACHE`). The
    /// variables that would override the pipeline file's services are
    /// removed: its own database and servers must win.
    pub fn try_start(pipeline: &Path, log: &Path, env: &[(&str, &str)]) -> Result<Host, HostError> {
        let binary = host_binary()?;
        let file = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
        let output = file.try_clone().map_err(io(format!("opening {}", log.display())))?;
        let mut command = Command::new(&binary);
        for name in OVERRIDES {
            command.env_remove(name);
        }
        let child = command
            .arg("run")
            .arg(pipeline)
            .env("RUST_LOG", "info,sqlx=warn")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(file)
            .spawn()
            .map_err(io(format!("starting {}", binary.display())))?;
        Ok(Host { child, log: log.to_path_buf(), started: Instant::now() })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name, e.g. `signal("TERM")`.
    pub fn signal(&self, signal: &str) {
        let status = self.send(signal).unwrap();
        assert!(status.success(), "kill -{signal} {} failed: {status}", self.pid());
    }

    fn send(&self, signal: &str) -> std::io::Result<ExitStatus> {
        Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status()
    }

    /// Waits for exit and returns the exit code.
    pub fn wait(&mut self) -> Option<i32> {
        self.child.wait().unwrap().code()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the process has exited: a host that should be running
    /// but is not says why in its log, quoted in the error.
    pub fn check_alive(&mut self) -> Result<(), HostError> {
        match self.child.try_wait().map_err(io("waiting for clickstream run"))? {
            Some(status) => Err(self.exited(status)),
            None => Ok(()),
        }
    }

    fn exited(&self, status: ExitStatus) -> HostError {
        HostError::Exited { status, log: self.log.clone(), tail: tail(&self.log, ERROR_TAIL_LINES) }
    }

    /// (VmHWM, VmRSS) in MiB: the peak and current resident memory.
    pub fn memory_mib(&self) -> Option<(f64, f64)> {
        procfs::memory_mib(self.pid())
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        procfs::cpu_seconds(self.pid())
    }

    /// Stops the host as a deploy would (SIGTERM: drain, commit, exit) and
    /// returns its log; fails when it exits with a failure or does not drain
    /// within a minute (then it is killed).
    pub fn stop(mut self) -> Result<String, HostError> {
        // A failed kill means the host is gone already; its status says how.
        let _ = self.send("TERM");
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("waiting for clickstream run"))? {
                return if status.success() { Ok(self.log()) } else { Err(self.exited(status)) };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(HostError::Undrained { log: self.log.clone() });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprint_tail(&self.log);
        }
    }
}
