//! Headless Chromium driven over the DevTools protocol, for tests of the
//! dashboard that need what `--dump-dom` cannot do: move a real mouse, read
//! the page while it lives, and screenshot the whole page in that state.
//!
//! The protocol runs over `--remote-debugging-pipe` (the browser reads
//! commands on its fd 3 and writes answers on its fd 4, each message JSON
//! ending with a NUL byte), so no port is opened and no WebSocket client is
//! needed. Calls block: tests call them from their own thread, not from a
//! runtime worker.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long one protocol call may take before the test fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Headless Chromium, or a failure that says how to install it.
pub fn chromium() -> PathBuf {
    for candidate in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(candidate).output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            }
        }
    }
    panic!("no Chromium for the dashboard test: install it with `apt-get install -y chromium` (.ci/run does)");
}

/// One browser with one page, closed when dropped.
pub struct Browser {
    child: Child,
    commands: std::io::PipeWriter,
    answers: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium with a `width` × `height` viewport and opens `url`.
    pub fn open(url: &str, width: u32, height: u32) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (browser_reads, commands) = std::io::pipe().unwrap();
        let (answers_in, browser_writes) = std::io::pipe().unwrap();
        let (fd3, fd4) = (browser_reads.as_raw_fd(), browser_writes.as_raw_fd());
        let stderr = std::fs::File::create(profile.path().join("stderr.log")).unwrap();
        let mut command = Command::new(chromium());
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--window-size={width},{height}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // SAFETY: between fork and exec the closure calls only async-signal-
        // safe functions (fcntl, dup2) on descriptors this process owns.
        unsafe {
            command.pre_exec(move || {
                // Either end may already sit on 3 or 4: move both out of the way first.
                let (r, w) = (libc::fcntl(fd3, libc::F_DUPFD_CLOEXEC, 10), libc::fcntl(fd4, libc::F_DUPFD_CLOEXEC, 10));
                if r < 0 || w < 0 || libc::dup2(r, 3) < 0 || libc::dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("start chromium");
        drop((browser_reads, browser_writes));
        let (send, answers) = mpsc::channel();
        std::thread::spawn(move || {
            for message in BufReader::new(answers_in).split(0) {
                let Ok(message) = message else { return };
                let Ok(value) = serde_json::from_slice(&message) else { continue };
                if send.send(value).is_err() {
                    return;
                }
            }
        });
        let mut browser = Browser { child, commands, answers, session: String::new(), next_id: 0, profile };
        let target = browser.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = browser.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }));
        browser.session = attached["sessionId"].as_str().expect("a session id").to_string();
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser.call("Page.navigate", json!({ "url": url }));
        browser
    }

    /// Sends a command (to the page, once attached) and returns its result;
    /// fails the test on a protocol error or after [`CALL_TIMEOUT`].
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.commands.write_all(&bytes).unwrap_or_else(|e| panic!("{method}: the browser is gone ({e}){}", self.log()));
        let deadline = Instant::now() + CALL_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self.answers.recv_timeout(left).unwrap_or_else(|e| panic!("{method}: no answer ({e}){}", self.log()));
            if answer["id"] == id {
                assert!(answer.get("error").is_none(), "{method}: {}", answer["error"]);
                return answer["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns
    /// its value; fails the test on an exception.
    pub fn eval(&mut self, expression: &str) -> Value {
        self.try_eval(expression).unwrap_or_else(|exception| panic!("{expression}: {exception}"))
    }

    /// Evaluates `expression`: its value, or the exception it threw.
    fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self.call("Runtime.evaluate", json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }));
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Polls `expression` until it is truthy and returns its value; fails
    /// the test with `what` and the last value after `timeout`. An
    /// exception counts as not yet (the page may still be loading).
    pub fn wait_for(&mut self, what: &str, expression: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_eval(expression);
            if let Ok(value) = &last {
                let truthy = !matches!(value, Value::Null | Value::Bool(false)) && *value != json!(0) && *value != json!("");
                if truthy {
                    return value.clone();
                }
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}; last: {last:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Moves the mouse to (`x`, `y`), CSS pixels of the viewport, as a user
    /// would: the page gets the browser's own mousemove events.
    pub fn move_mouse(&mut self, x: f64, y: f64) {
        self.call("Input.dispatchMouseEvent", json!({ "type": "mouseMoved", "x": x, "y": y }));
    }

    /// Makes the viewport as tall as the page, so that a screenshot holds
    /// all of it without resizing anything at capture time (a resize then
    /// can cost the page its hover state).
    pub fn fit_to_content(&mut self) {
        let size = self.eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]");
        let metrics = json!({ "width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": false });
        self.call("Emulation.setDeviceMetricsOverride", metrics);
    }

    /// Saves a PNG of the viewport to `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        std::fs::write(path, base64_decode(shot["data"].as_str().expect("PNG data"))).unwrap();
    }

    /// The browser's stderr so far, for failure messages.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.profile.path().join("stderr.log")).unwrap_or_default();
        format!("; chromium's stderr:\n{}", &text[text.len().saturating_sub(4000)..])
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the protocol's encoding of binary data).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| *c != b'=' && !c.is_ascii_whitespace()).map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, d)| n | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
