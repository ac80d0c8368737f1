//! The search server: osmem-server (PyPI), in memory, at
//! `$ELASTICSEARCH_URL` (default http://127.0.0.1:9200). A server elsewhere
//! is only checked.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::process::Running;
use super::{fail, is_local_host, listen_host, say, status_line, Result, Stack};
use crate::probe::{http_answers, tcp_open, url_host_port};
use crate::tools::{on_path, osmem_bin, osmem_dir};
use crate::DEFAULT_SEARCH_URL;

fn search_url(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// osmem-server, installed with pip when python3 cannot import it.
fn ensure_osmem() -> Result<PathBuf> {
    if on_path("python3").is_none() {
        return Err(fail("search: python3 is missing", "apt-get install -y python3 python3-pip"));
    }
    let reinstall = "python3 -m pip install --force-reinstall osmem-server";
    if osmem_dir().is_none() {
        say!("search: installing osmem-server from PyPI (pip install osmem-server)");
        let installed = Command::new("python3").args(["-m", "pip", "install", "--quiet", "osmem-server"]).stdout(Stdio::null()).status();
        if !installed.is_ok_and(|s| s.success()) {
            return Err(fail("search: pip install osmem-server failed", "python3 -m pip install osmem-server"));
        }
        if osmem_dir().is_none() {
            return Err(fail("search: osmem-server installed but python3 cannot import osmem_server", reinstall));
        }
    }
    osmem_bin().ok_or_else(|| {
        let dir = osmem_dir().unwrap_or_default();
        fail(format!("search: {}/bin/osmem-server is missing (is there a wheel for this platform?)", dir.display()), reinstall)
    })
}

pub(super) fn up(stack: &Stack) -> Result<()> {
    let url = search_url(&std::env::var("ELASTICSEARCH_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| DEFAULT_SEARCH_URL.into()));
    let Some((host, port)) = url_host_port(&url, 80) else {
        return Err(fail(format!("search: cannot read a host and port from {url}"), "set ELASTICSEARCH_URL=http://HOST:PORT"));
    };
    if !is_local_host(&host) {
        say!("search: checking {url} (ELASTICSEARCH_URL)");
        if !http_answers(&url) {
            return Err(fail(
                format!("search: {url} does not answer"),
                "start that server, or unset ELASTICSEARCH_URL to run a local osmem-server",
            ));
        }
        say!("search: {url} answers");
        return stack.set_env("ELASTICSEARCH_URL", &url);
    }
    let address = format!("{host}:{port}");
    if let Some(pid) = stack.recorded_pid("search", "osmem-server") {
        stack.check_recorded_address("search", pid, &address)?;
        if http_answers(&url) {
            say!("search: already running (pid {pid}) at {url}");
        } else {
            say!("search: pid {pid} is running; waiting for {url} to answer");
            stack.wait_until_answers("search", Running::Found(pid), 30, || http_answers(&url))?;
        }
        return stack.set_env("ELASTICSEARCH_URL", &url);
    }
    if tcp_open(&host, port) {
        if !http_answers(&url) {
            return Err(fail(
                format!("search: {address} is taken by something that does not answer HTTP at {url}/"),
                format!(
                    "stop whatever listens there (ss -ltnp 'sport = :{port}'), or set ELASTICSEARCH_URL=http://127.0.0.1:<another port>"
                ),
            ));
        }
        say!("search: a server not started by this script already answers at {url}; using it");
        return stack.set_env("ELASTICSEARCH_URL", &url);
    }
    let bin = ensure_osmem()?;
    say!("search: starting osmem-server at {url} (log .services/search.log)");
    let listen = format!("{}:{port}", listen_host(&host));
    let child = stack.start_background("search", &address, &bin, &["-addr", &listen, "-no-stdin-watch"])?;
    let pid = child.id();
    stack.wait_until_answers("search", Running::Started(child), 30, || http_answers(&url))?;
    say!("search: up (pid {pid}) at {url}");
    stack.set_env("ELASTICSEARCH_URL", &url)
}

pub(super) fn down(stack: &Stack) -> Result<()> {
    stack.stop_recorded("search", "osmem-server")
}

pub(super) fn status(stack: &Stack) -> String {
    let url = search_url(&stack.setting("ELASTICSEARCH_URL", DEFAULT_SEARCH_URL));
    let state = if http_answers(&url) { "up" } else { "down" };
    match stack.recorded_pid("search", "osmem-server") {
        Some(pid) => status_line("search", state, &url, &pid.to_string(), ".services/search.log"),
        None => status_line("search", state, &url, "-", "-"),
    }
}
