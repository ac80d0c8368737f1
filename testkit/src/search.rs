//! A search server an outage test may freeze.

use std::process::Command;

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
        let bin = xtask::tools::osmem_bin().expect("osmem-server is not installed: run `scripts/services up` (pip install osmem-server)");
        // Port 0: the server binds a free port itself and says which. A port
        // picked here and bound later could be taken meanwhile by another
        // test's listener, which would then answer (and not freeze) for it.
        let mut child = Command::new(bin)
            .args(["-addr", "127.0.0.1:0", "-no-stdin-watch"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start osmem-server");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut first = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut first).expect("read osmem-server's address");
        // Whatever else it prints is drained, so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let started: serde_json::Value =
            serde_json::from_str(&first).unwrap_or_else(|e| panic!("osmem-server did not say where it listens ({e}): {first:?}"));
        let url = started["url"].as_str().unwrap_or_else(|| panic!("no url in osmem-server's first line: {first}")).to_string();
        PrivateSearch { url, child }
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
