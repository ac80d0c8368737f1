//! The processes the stack starts: pid files, start in the background, wait
//! until they answer, stop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{fail, io_failure, say, Result, Stack};

/// The process exists, is not a zombie, and its command line contains
/// `pattern`, so a recycled pid is not mistaken for ours.
pub(crate) fn pid_alive(pid: u32, pattern: &str) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // "pid (comm) S ...": the state follows the last ')'.
    let running = stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']));
    running
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| String::from_utf8_lossy(&cmd).replace('\0', " ").contains(pattern))
}

impl Stack {
    /// The pid in `.services/NAME.pid` when that process is alive; a stale
    /// pid file is removed.
    pub(crate) fn recorded_pid(&self, name: &str, pattern: &str) -> Option<u32> {
        let file = self.state().join(format!("{name}.pid"));
        let text = std::fs::read_to_string(&file).ok()?;
        let digits: String = text.chars().filter(char::is_ascii_digit).collect();
        match digits.parse::<u32>() {
            Ok(pid) if pid_alive(pid, pattern) => Some(pid),
            _ => {
                say!("{name}: removing stale pid file (pid {} is gone)", if digits.is_empty() { "?" } else { &digits });
                self.forget(name);
                None
            }
        }
    }

    /// Removes the pid and address files of `name`.
    pub(crate) fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.state().join(format!("{name}.pid")));
        let _ = std::fs::remove_file(self.state().join(format!("{name}.addr")));
    }

    /// Stops the `name` this stack started, if it runs.
    pub(crate) fn stop_recorded(&self, name: &str, pattern: &str) -> Result<()> {
        match self.recorded_pid(name, pattern) {
            Some(pid) => {
                stop_pid(name, pid)?;
                self.forget(name);
            }
            None => say!("{name}: not started by this script; nothing to stop"),
        }
        Ok(())
    }

    /// Fails when this stack's running `name` listens elsewhere than
    /// `address` (the address asked for changed since `up`).
    pub(crate) fn check_recorded_address(&self, name: &str, pid: u32, address: &str) -> Result<()> {
        let was = std::fs::read_to_string(self.state().join(format!("{name}.addr"))).unwrap_or_default();
        let was = was.trim();
        if !was.is_empty() && was != address {
            return Err(fail(
                format!("{name}: this script's {name} (pid {pid}) runs at {was}, not at {address}"),
                format!("scripts/services down {name} && scripts/services up {name}   (to move it to {address})"),
            ));
        }
        Ok(())
    }

    /// Starts a detached process (its own session, so it outlives the shell
    /// and its terminal) logging to `.services/NAME.log`, and records its pid
    /// and address.
    pub(crate) fn start_background(&self, name: &str, address: &str, program: &Path, args: &[&str]) -> Result<Child> {
        std::fs::write(self.state().join(format!("{name}.addr")), format!("{address}\n"))
            .map_err(|e| io_failure("write the address file", e))?;
        let log = std::fs::File::create(self.log(name)).map_err(|e| io_failure("create the log file", e))?;
        let log_err = log.try_clone().map_err(|e| io_failure("open the log file", e))?;
        // setsid(1) execs in place (the child is no process-group leader), so
        // the pid is the service's own.
        let child = Command::new("setsid")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| fail(format!("{name}: cannot start {}: {e}", program.display()), "is setsid (util-linux) installed?"))?;
        std::fs::write(self.state().join(format!("{name}.pid")), format!("{}\n", child.id()))
            .map_err(|e| io_failure("write the pid file", e))?;
        Ok(child)
    }

    /// `.services/NAME.log`.
    pub(crate) fn log(&self, name: &str) -> std::path::PathBuf {
        self.state().join(format!("{name}.log"))
    }

    /// Waits until `answers` holds, up to `secs`; fails early, with the log's
    /// tail, when the process exits.
    pub(crate) fn wait_until_answers(&self, name: &str, mut process: Running, secs: u64, answers: impl Fn() -> bool) -> Result<()> {
        let log = self.log(name);
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if answers() {
                return Ok(());
            }
            if !process.alive() {
                self.forget(name);
                log_tail(&log);
                return Err(fail(format!("{name}: the process exited during startup"), format!("read {}", log.display())));
            }
            if Instant::now() > deadline {
                log_tail(&log);
                return Err(fail(
                    format!("{name}: pid {} is running but does not answer after {secs} s", process.pid()),
                    format!("read {}; then: scripts/services down {name} && scripts/services up {name}", log.display()),
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A process being waited for: one this run started, or one found by its pid.
pub(crate) enum Running {
    Started(Child),
    Found(u32),
}

impl Running {
    fn alive(&mut self) -> bool {
        match self {
            Running::Started(child) => matches!(child.try_wait(), Ok(None)),
            Running::Found(pid) => pid_alive(*pid, ""),
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Running::Started(child) => child.id(),
            Running::Found(pid) => *pid,
        }
    }
}

/// SIGTERM, up to 10 s for it to exit, then SIGKILL.
pub(crate) fn stop_pid(name: &str, pid: u32) -> Result<()> {
    say!("{name}: stopping pid {pid}");
    let signal = |sig: &str| Command::new("kill").args([sig, &pid.to_string()]).stderr(Stdio::null()).status();
    let gone_within = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !pid_alive(pid, "") {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        !pid_alive(pid, "")
    };
    let _ = signal("-TERM");
    if gone_within(Duration::from_secs(10)) {
        return Ok(());
    }
    say!("{name}: pid {pid} still running after 10 s, sending SIGKILL");
    let _ = signal("-KILL");
    if gone_within(Duration::from_secs(2)) {
        return Ok(());
    }
    Err(fail(format!("{name}: pid {pid} does not die"), format!("look at it with: ps -o pid,stat,cmd -p {pid}")))
}

/// Prints the last 20 lines of a log, indented.
pub(crate) fn log_tail(file: &Path) {
    let Ok(text) = std::fs::read_to_string(file) else { return };
    if text.is_empty() {
        return;
    }
    eprintln!("services: last lines of {}:", file.display());
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines[lines.len().saturating_sub(20)..] {
        eprintln!("    {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_alive_only_while_it_runs_and_its_command_line_matches() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        // Until it execs, the child's command line is still this test's.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !pid_alive(child.id(), "sleep 30") {
            assert!(Instant::now() < deadline, "the sleep never showed as alive");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!pid_alive(child.id(), "nisshi"), "a recycled pid must not pass for the service");
        child.kill().unwrap();
        // Killed but not yet reaped: a zombie is not alive.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!pid_alive(child.id(), ""));
        child.wait().unwrap();
    }

    #[test]
    fn a_stale_pid_file_is_removed() {
        let root = std::env::temp_dir().join(format!("xtask-pid-{}", std::process::id()));
        let stack = Stack::at(&root);
        std::fs::create_dir_all(stack.state()).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        std::fs::write(stack.state().join("kafka.pid"), format!("{}\n", child.id())).unwrap();
        assert_eq!(stack.recorded_pid("kafka", "nisshi"), None);
        assert!(!stack.state().join("kafka.pid").exists());
        std::fs::remove_dir_all(root).unwrap();
    }
}
