//! Whether a service answers, checked by speaking its protocol where that is
//! cheap, so that "a port is open" is not mistaken for "it serves".

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Connects to `host:port` within `timeout`, trying each address it resolves to.
fn connect(host: &str, port: u16, timeout: Duration) -> Option<TcpStream> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = (host, port).to_socket_addrs().ok()?.find_map(|a| TcpStream::connect_timeout(&a, timeout).ok())?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    Some(stream)
}

/// Something accepts TCP connections at `host:port` within 2 s.
pub fn tcp_open(host: &str, port: u16) -> bool {
    connect(host, port, Duration::from_secs(2)).is_some()
}

/// A Kafka broker answers at `host:port`: an ApiVersions v0 request whose
/// reply carries its correlation id, so a port that is bound but does not
/// serve yet is not mistaken for a broker.
pub fn kafka_answers(host: &str, port: u16) -> bool {
    let Some(mut stream) = connect(host, port, Duration::from_secs(3)) else { return false };
    // size 14, api key 18 (ApiVersions), version 0, correlation id 42, client id "svcs".
    let request = b"\x00\x00\x00\x0e\x00\x12\x00\x00\x00\x00\x00\x2a\x00\x04svcs";
    let mut reply = [0u8; 8];
    stream.write_all(request).is_ok() && stream.read_exact(&mut reply).is_ok() && reply[4..] == [0, 0, 0, 42]
}

/// An HTTP server answers `GET /` at `url` with a 2xx status within 3 s.
/// Plain `http://` without credentials is asked directly; anything else
/// (TLS, a user and password in the URL) through curl.
pub fn http_answers(url: &str) -> bool {
    let url = url.trim_end_matches('/');
    match url.strip_prefix("http://") {
        Some(authority) if !authority.contains('@') && !authority.contains('/') => {
            let Some((host, port)) = split_host_port(authority, 80) else { return false };
            let Some(mut stream) = connect(&host, port, Duration::from_secs(3)) else { return false };
            let request = format!("GET / HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            stream.write_all(request.as_bytes()).is_ok()
                && stream.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
                && head[9] == b'2'
        }
        _ => Command::new("curl")
            .args(["-sf", "--max-time", "3", "-o", "/dev/null", &format!("{url}/")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// A PostgreSQL server answers `select 1` at `url` within 3 s (psql, or
/// pg_isready when psql is missing).
pub fn postgres_answers(url: &str) -> bool {
    let (program, args): (&str, Vec<&str>) = if crate::tools::on_path("psql").is_some() {
        ("psql", vec![url, "-XAtqc", "select 1"])
    } else {
        ("pg_isready", vec!["-q", "-t", "3", "-d", url])
    };
    Command::new(program)
        .args(args)
        .env("PGCONNECT_TIMEOUT", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `(host, port)` of `host`, `host:port` or `[v6]:port`, with `default_port`
/// when none is named.
pub fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => port.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((format!("[{host}]"), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), port.parse().ok()?)),
        None => Some((authority.to_string(), default_port)),
    }
}

/// `(host, port)` of a URL such as `postgres://user@host:port/db` or
/// `http://host:port/`, with the scheme's default port when it names none.
pub fn url_host_port(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let default_port = if url.starts_with("https://") { 443 } else { default_port };
    split_host_port(authority, default_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_services_address_is_read_from_its_url_with_the_default_port_when_none_is_named() {
        let at = |host: &str, port| Some((host.to_string(), port));
        assert_eq!(url_host_port("postgres://postgres@127.0.0.1:5432/test", 1), at("127.0.0.1", 5432));
        assert_eq!(url_host_port("postgres://u:p@db.example/test?sslmode=off", 5432), at("db.example", 5432));
        assert_eq!(url_host_port("http://127.0.0.1:9200", 80), at("127.0.0.1", 9200));
        assert_eq!(url_host_port("https://search.example/", 80), at("search.example", 443));
        assert_eq!(url_host_port("tcp://[::1]:9092", 1), at("[::1]", 9092));
        assert_eq!(split_host_port("127.0.0.1:notaport", 1), None);
    }

    #[test]
    fn a_port_nothing_listens_on_does_not_answer() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(tcp_open("127.0.0.1", port));
        drop(listener);
        assert!(!tcp_open("127.0.0.1", port));
    }

    #[test]
    fn an_open_port_that_does_not_speak_kafka_or_http_is_not_taken_for_a_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut buf = [0u8; 64];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n");
            }
        });
        assert!(!kafka_answers("127.0.0.1", port));
        assert!(!http_answers(&format!("http://127.0.0.1:{port}")));
        server.join().unwrap();
    }

    #[test]
    fn an_http_server_answering_200_answers() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 256];
            let _ = stream.read(&mut buf);
            stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        });
        assert!(http_answers(&format!("http://127.0.0.1:{port}/")));
        server.join().unwrap();
    }
}
