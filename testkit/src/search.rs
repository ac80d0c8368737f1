//! A search server an outage test may freeze.

use std::path::PathBuf;
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
