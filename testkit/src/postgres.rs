//! A PostgreSQL server a fault test may stop and restart.

use std::path::PathBuf;
use std::process::Command;

use crate::db::unique;

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
        let bin =
            xtask::tools::pg_bindir().expect("PostgreSQL server binaries (initdb, pg_ctl) are missing: apt-get install -y postgresql");
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let dir = PathBuf::from(format!("/tmp/{}", unique("clickstream-pg")));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = PrivatePostgres { url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), dir, bin };
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
        let status = if xtask::tools::is_root() {
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
