//! PostgreSQL: `$DATABASE_URL` when it answers (its database created when
//! only that is missing); else a private cluster under `data/postgres` on
//! port 55432 or the next free one. A shared server is never stopped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::process::{log_tail, pid_alive};
use super::{fail, io_failure, say, status_line, Failure, Result, Stack};
use crate::probe::{postgres_answers, tcp_open};
use crate::tools::{is_root, on_path, pg_bindir};
use crate::DEFAULT_DATABASE_URL;

pub(super) fn up(stack: &Stack) -> Result<()> {
    let url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
    say!("postgres: checking {url}");
    if postgres_answers(&url) {
        say!("postgres: {url} answers");
        return stack.set_env("DATABASE_URL", &url);
    }
    if create_missing_database(&url)? {
        return stack.set_env("DATABASE_URL", &url);
    }
    let private = private_cluster(stack, &url)?;
    stack.set_env("DATABASE_URL", &private)
}

/// When the server answers but the URL's database does not exist, creates
/// it. False when the server itself does not answer.
fn create_missing_database(url: &str) -> Result<bool> {
    let Some((base, db, rest)) = split_database(url) else { return Ok(false) };
    let admin = format!("{base}/postgres{rest}");
    if db == "postgres" || on_path("psql").is_none() || !postgres_answers(&admin) {
        return Ok(false);
    }
    say!("postgres: the server answers but database \"{db}\" does not; creating it");
    let sql_db = db.replace('"', "\"\"");
    let create = format!("CREATE DATABASE \"{sql_db}\"");
    if !psql(Path::new("psql"), &admin, &create) {
        return Err(fail(
            format!("postgres: could not create database \"{db}\""),
            format!("create it yourself: psql '{admin}' -c '{create}'"),
        ));
    }
    if !postgres_answers(url) {
        return Err(fail(
            format!("postgres: {url} still does not answer after creating \"{db}\""),
            "check the server's log and pg_hba.conf",
        ));
    }
    say!("postgres: {url} answers");
    Ok(true)
}

/// `(scheme://authority, database, ?query)` of a PostgreSQL URL.
fn split_database(url: &str) -> Option<(&str, &str, &str)> {
    let scheme_end = url.find("://")? + 3;
    let (scheme, _) = url.split_at(scheme_end);
    if scheme != "postgres://" && scheme != "postgresql://" {
        return None;
    }
    let slash = scheme_end + url[scheme_end..].find('/')?;
    if url[scheme_end..slash].contains('?') {
        return None;
    }
    let path_and_query = &url[slash + 1..];
    let (db, rest) = path_and_query.find('?').map_or((path_and_query, ""), |q| path_and_query.split_at(q));
    (!db.is_empty()).then_some((&url[..slash], db, rest))
}

fn psql(psql: &Path, url: &str, sql: &str) -> bool {
    Command::new(psql)
        .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "3")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a PostgreSQL program as the `postgres` OS user when this is root
/// (initdb and postgres refuse root), from `/` so that user can read the cwd.
/// Its output goes to `log` when given; else stdout is dropped.
fn as_postgres(program: &Path, args: &[&str], log: Option<std::fs::File>) -> std::io::Result<bool> {
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command.args(args).current_dir("/").stdin(Stdio::null());
    match log {
        Some(log) => command.stdout(log.try_clone()?).stderr(log),
        None => command.stdout(Stdio::null()),
    };
    Ok(command.status()?.success())
}

fn data_dir(stack: &Stack) -> PathBuf {
    stack.data().join("postgres")
}

/// The private cluster's postmaster pid and port, when it runs.
fn running_private(stack: &Stack) -> Option<(u32, u16)> {
    let pidfile = std::fs::read_to_string(data_dir(stack).join("postmaster.pid")).ok()?;
    let mut lines = pidfile.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let port = lines.nth(2)?.trim().parse().ok()?;
    pid_alive(pid, "postgres").then_some((pid, port))
}

fn free_port() -> Result<u16> {
    (55432..55532)
        .find(|&port| !tcp_open("127.0.0.1", port) && !Path::new(&format!("/tmp/.s.PGSQL.{port}")).exists())
        .ok_or_else(|| Failure { what: "postgres: no free port in 55432-55531".into(), fix: None })
}

/// Starts (or finds) the private cluster; its `test` database's URL.
fn private_cluster(stack: &Stack, url: &str) -> Result<String> {
    let Some(bindir) = pg_bindir() else {
        return Err(fail(
            format!("postgres: nothing answers at {url} and no PostgreSQL server binaries (initdb, pg_ctl) are installed"),
            "apt-get install -y postgresql   (or set DATABASE_URL to a server that answers)",
        ));
    };
    let psql_bin = on_path("psql").or_else(|| Some(bindir.join("psql")).filter(|p| p.exists()));
    let Some(psql_bin) = psql_bin else { return Err(fail("postgres: psql is missing", "apt-get install -y postgresql-client")) };
    say!("postgres: nothing answers at {url}; using a private cluster in data/postgres ({})", bindir.display());
    let root = is_root();
    if root && !Command::new("id").arg("postgres").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success()) {
        return Err(fail(
            "postgres: running as root, but there is no 'postgres' OS user to run the cluster as",
            "useradd --system --home-dir /var/lib/postgresql postgres   (the postgresql package creates it)",
        ));
    }
    let data = data_dir(stack);
    std::fs::create_dir_all(stack.state()).map_err(|e| io_failure("create .services/", e))?;
    if std::fs::metadata(data.join("PG_VERSION")).map_or(true, |m| m.len() == 0) {
        init_cluster(stack, &bindir, &data, root)?;
    }
    if root {
        chown_postgres(&data, true);
    }
    let log = stack.log("postgres");
    let (pid, port) = match running_private(stack)
        .filter(|&(_, port)| postgres_answers(&format!("postgres://postgres@127.0.0.1:{port}/postgres")))
    {
        Some((pid, port)) => {
            say!("postgres: private cluster already running (pid {pid}, port {port})");
            (Some(pid), port)
        }
        None => {
            let port = free_port()?;
            std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|e| io_failure("create .services/postgres.log", e))?;
            if root {
                chown_postgres(&log, false);
            }
            say!("postgres: starting the private cluster on 127.0.0.1:{port} (log .services/postgres.log)");
            let options = format!("-p {port} -k /tmp -c listen_addresses=127.0.0.1");
            let (d, l) = (data.to_string_lossy(), log.to_string_lossy());
            let started = as_postgres(&bindir.join("pg_ctl"), &["-D", &d, "-l", &l, "-w", "-t", "30", "-o", &options, "start"], None);
            if !started.unwrap_or(false) {
                log_tail(&log);
                return Err(fail("postgres: pg_ctl start failed", format!("read {}", log.display())));
            }
            (running_private(stack).map(|(pid, _)| pid), port)
        }
    };
    let pid = pid.map(|p| p.to_string()).unwrap_or_default();
    std::fs::write(stack.state().join("postgres.pid"), format!("{pid}\n")).map_err(|e| io_failure("write .services/postgres.pid", e))?;
    let private = format!("postgres://postgres@127.0.0.1:{port}/test");
    if !postgres_answers(&private) {
        say!("postgres: creating database test");
        if !psql(&psql_bin, &format!("postgres://postgres@127.0.0.1:{port}/postgres"), "CREATE DATABASE test") {
            return Err(fail("postgres: could not create database test in the private cluster", format!("read {}", log.display())));
        }
    }
    say!("postgres: {private} answers");
    Ok(private)
}

fn chown_postgres(path: &Path, recursive: bool) {
    let mut chown = Command::new("chown");
    if recursive {
        chown.arg("-R");
    }
    let _ = chown.arg("postgres:").arg(path).status();
}

fn init_cluster(stack: &Stack, bindir: &Path, data: &Path, root: bool) -> Result<()> {
    say!("postgres: initdb data/postgres (trust auth, superuser postgres)");
    let _ = std::fs::remove_dir_all(data);
    std::fs::create_dir_all(data).map_err(|e| io_failure("create data/postgres", e))?;
    if root {
        chown_postgres(data, false);
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700)).map_err(|e| io_failure("chmod data/postgres", e))?;
    if root && !as_postgres(Path::new("test"), &["-w", &data.to_string_lossy()], None).unwrap_or(false) {
        return Err(fail(
            format!("postgres: the postgres user cannot write {}", data.display()),
            format!("make every parent of {} traversable by it (chmod o+x), or set DATABASE_URL", data.display()),
        ));
    }
    let initdb_log = stack.state().join("postgres-initdb.log");
    let out = std::fs::File::create(&initdb_log).map_err(|e| io_failure("create .services/postgres-initdb.log", e))?;
    let d = data.to_string_lossy();
    if !as_postgres(&bindir.join("initdb"), &["-D", &d, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"], Some(out))
        .unwrap_or(false)
    {
        log_tail(&initdb_log);
        let _ = std::fs::remove_dir_all(data);
        return Err(fail("postgres: initdb failed", format!("read {}", initdb_log.display())));
    }
    Ok(())
}

pub(super) fn down(stack: &Stack) -> Result<()> {
    if let Some((pid, _)) = running_private(stack) {
        let Some(bindir) = pg_bindir() else {
            return Err(fail(
                format!("postgres: cannot find pg_ctl to stop the private cluster (pid {pid})"),
                format!("apt-get install -y postgresql, or: kill {pid}"),
            ));
        };
        say!("postgres: stopping the private cluster (pid {pid})");
        let d = data_dir(stack);
        if !as_postgres(&bindir.join("pg_ctl"), &["-D", &d.to_string_lossy(), "-m", "fast", "-w", "-t", "30", "stop"], None)
            .unwrap_or(false)
        {
            return Err(fail("postgres: pg_ctl stop failed", format!("read {}", stack.log("postgres").display())));
        }
    } else {
        say!("postgres: no private cluster running; a shared PostgreSQL server is never stopped");
    }
    let _ = std::fs::remove_file(stack.state().join("postgres.pid"));
    Ok(())
}

pub(super) fn status(stack: &Stack) -> String {
    let url = stack.get_env("DATABASE_URL").unwrap_or_else(|| stack.setting("DATABASE_URL", DEFAULT_DATABASE_URL));
    let state = if postgres_answers(&url) { "up" } else { "down" };
    match running_private(stack).filter(|(_, port)| url.contains(&format!(":{port}/"))) {
        Some((pid, _)) => status_line("postgres", state, &url, &pid.to_string(), ".services/postgres.log"),
        None => status_line("postgres", state, &url, "-", "-"),
    }
}

#[cfg(test)]
mod tests {
    use super::split_database;

    #[test]
    fn a_database_url_splits_into_server_database_and_query() {
        assert_eq!(split_database("postgres://postgres@127.0.0.1:5432/test"), Some(("postgres://postgres@127.0.0.1:5432", "test", "")));
        assert_eq!(split_database("postgresql://u:p@h/db?sslmode=off"), Some(("postgresql://u:p@h", "db", "?sslmode=off")));
        assert_eq!(split_database("postgres://h:5432/"), None);
        assert_eq!(split_database("mysql://h/db"), None);
    }
}
