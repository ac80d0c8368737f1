//! `api-load`, ingest beside API load: `ingest`'s workload (the same topic, a
//! fresh database) while `--api-clients` loopback clients hammer the host's
//! HTTP API, each sending its next request as soon as the last one is
//! answered: `/api/dead-letters` (paging through dead letters put in the
//! database first, by cursor), `/api/aggregates` (the search server) and
//! `/metrics`, in turn. Reported as steady events/s over `ingest`'s in the same
//! run, with what the clients got (requests, statuses, latency).
//!
//! What it shows: the API reads PostgreSQL through a pool of its own with a
//! statement timeout, behind a concurrency limit, so its load costs ingest
//! CPU (two cores are shared by the host, its clients, PostgreSQL and the
//! search server) but never the store's connections.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use clickstream_testkit::procfs::{cpu_seconds, cpu_seconds_of};

use super::stats::{rate, Spread};

/// Dead letters put in the arm's database before the host starts, so the
/// clients page through real rows (smoke sizes: a tenth).
pub fn dead_letters_for(quick: bool) -> u64 {
    if quick {
        2_000
    } else {
        20_000
    }
}

/// Rows per dead-letter page the clients ask for.
const PAGE: u32 = 100;

/// Creates the store's tables in `url` (the migrations) and puts `n`
/// pending dead letters in today's partition.
pub async fn prefill_dead_letters(url: &str, n: u64) -> anyhow::Result<()> {
    let windows = clickstream::stages::record::WindowSpec { window_ms: 60_000, session_timeout_ms: 1_800_000 };
    let store = clickstream::stages::store::Store::connect(url, windows).await?;
    sqlx::query(
        "INSERT INTO dead_letters (topic, \"partition\", \"offset\", payload, stage, kind, reason, received_at)
         SELECT 'bench-dead', 0, g, convert_to('{\"user_id\":\"u' || g || '\",\"timestamp\":', 'UTF8'),
                'decode', 'not_json', 'not JSON: EOF while parsing a value at line 1 column 30', now()
         FROM generate_series(1, $1) g",
    )
    .bind(n as i64)
    .execute(store.pool())
    .await?;
    store.pool().close().await;
    Ok(())
}

/// The API's address from the host's log line `HTTP API and dashboard at
/// http://ADDRESS/`.
pub fn api_address(log: &str) -> Option<String> {
    let (_, rest) = log.split_once("HTTP API and dashboard at http://")?;
    let address = rest.split('/').next()?;
    (!address.is_empty()).then(|| address.to_string())
}

/// The search server's command name, for its CPU time.
const SEARCH_SERVER: &str = "osmem-server";

/// The endpoints, in the order each client cycles through them.
const ENDPOINTS: [&str; 3] = ["dead_letters", "aggregates", "metrics"];

/// What one client saw, per endpoint.
#[derive(Default)]
struct Tally {
    latencies_ms: BTreeMap<&'static str, Vec<f64>>,
    statuses: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    errors: BTreeMap<&'static str, u64>,
    /// 503s that say the limit was reached (the rest: the pipeline starting).
    shed: u64,
    /// Times the dead-letter cursor came back to the start.
    dead_letter_passes: u64,
}

/// Clients running against the API until [`Load::finish`].
pub struct Load {
    stop: watch::Sender<bool>,
    clients: Vec<JoinHandle<Tally>>,
    started: Instant,
    /// CPU seconds of this process (the clients) and of the search server at the start.
    cpu0: (f64, f64),
}

/// CPU seconds so far of this process and of the search server.
fn load_cpu() -> (f64, f64) {
    (cpu_seconds(std::process::id()).unwrap_or(0.0), cpu_seconds_of(&[SEARCH_SERVER]))
}

/// Starts `clients` closed-loop clients against `http://address`, together
/// at most `rate` requests a second (0: each as fast as it is answered).
pub fn start(address: &str, clients: usize, rate: u64) -> anyhow::Result<Load> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let (stop, stopped) = watch::channel(false);
    let period = (rate > 0).then(|| Duration::from_secs_f64(clients as f64 / rate as f64));
    let clients =
        (0..clients).map(|i| tokio::spawn(client(http.clone(), format!("http://{address}"), i, period, stopped.clone()))).collect();
    Ok(Load { stop, clients, started: Instant::now(), cpu0: load_cpu() })
}

async fn client(http: reqwest::Client, base: String, first: usize, period: Option<Duration>, stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let mut cursor = 0i64;
    let mut pace = period.map(|p| {
        let mut interval = tokio::time::interval(p);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    // Each client starts at another endpoint, so all three are busy at once.
    for turn in first.. {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        if *stop.borrow() {
            break;
        }
        let endpoint = ENDPOINTS[turn % ENDPOINTS.len()];
        let url = match endpoint {
            "dead_letters" => format!("{base}/api/dead-letters?limit={PAGE}&after={cursor}"),
            "aggregates" => format!("{base}/api/aggregates?by=url&limit=20"),
            _ => format!("{base}/metrics"),
        };
        let sent = Instant::now();
        let answer = match http.get(url).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|body| (status, body))
            }
            Err(e) => Err(e),
        };
        match answer {
            Ok((status, body)) => {
                tally.latencies_ms.entry(endpoint).or_default().push(sent.elapsed().as_secs_f64() * 1000.0);
                *tally.statuses.entry(endpoint).or_default().entry(status).or_default() += 1;
                if status == 503 && String::from_utf8_lossy(&body).contains("max_concurrent_requests") {
                    tally.shed += 1;
                }
                if endpoint == "dead_letters" && status == 200 {
                    let next = serde_json::from_slice::<Value>(&body).ok().and_then(|page| page["next"].as_i64());
                    if next.is_none() {
                        tally.dead_letter_passes += 1;
                    }
                    cursor = next.unwrap_or(0);
                }
            }
            Err(_) => *tally.errors.entry(endpoint).or_default() += 1,
        }
    }
    tally
}

impl Load {
    /// Stops the clients (each finishes its request) and returns the figures.
    pub async fn finish(self, rate_limit: u64) -> Value {
        let _ = self.stop.send(true);
        let seconds = self.started.elapsed().as_secs_f64();
        let cpu = load_cpu();
        let clients = self.clients.len();
        let mut all = Tally::default();
        for client in self.clients {
            let Ok(tally) = client.await else { continue };
            for (endpoint, latencies) in tally.latencies_ms {
                all.latencies_ms.entry(endpoint).or_default().extend(latencies);
            }
            for (endpoint, statuses) in tally.statuses {
                for (status, n) in statuses {
                    *all.statuses.entry(endpoint).or_default().entry(status).or_default() += n;
                }
            }
            for (endpoint, n) in tally.errors {
                *all.errors.entry(endpoint).or_default() += n;
            }
            all.dead_letter_passes += tally.dead_letter_passes;
            all.shed += tally.shed;
        }
        let mut by_endpoint = serde_json::Map::new();
        let mut requests = 0usize;
        for endpoint in ENDPOINTS {
            let latencies = all.latencies_ms.get(endpoint).cloned().unwrap_or_default();
            requests += latencies.len();
            by_endpoint.insert(
                endpoint.into(),
                json!({
                    "requests": latencies.len(),
                    "per_s": rate(latencies.len() as f64, seconds),
                    "statuses": all.statuses.get(endpoint).map(|s| s.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()),
                    "errors": all.errors.get(endpoint).copied().unwrap_or(0),
                    "latency_ms": Spread::of(&latencies),
                }),
            );
        }
        let unavailable: u64 = all.statuses.values().filter_map(|s| s.get(&503)).sum();
        json!({
            "clients": clients,
            "rate_limit_per_s": (rate_limit > 0).then_some(rate_limit),
            "seconds": seconds,
            "requests": requests,
            "requests_per_s": rate(requests as f64, seconds),
            "shed_503": all.shed,
            "other_503": unavailable - all.shed,
            "dead_letter_passes": all.dead_letter_passes,
            "cpu_seconds": {
                "clients": cpu.0 - self.cpu0.0,
                "search_server": cpu.1 - self.cpu0.1,
                "measures": "user + system CPU over the load: the bench process (its clients, and its progress polling), the search server answering /api/aggregates; the host's and PostgreSQL's are in the arm's cpu_seconds",
            },
            "by_endpoint": by_endpoint,
            "measures": "closed-loop clients in the bench process on loopback, from the host's API coming up to the last record stored: each sends its next request when the last is answered (paced to rate_limit_per_s together when set), cycling /api/dead-letters (paging by cursor through the dead letters put in first, previews off), /api/aggregates (the search server) and /metrics. shed_503: refused by api.max_concurrent_requests; other_503: the pipeline not yet started",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_address_comes_from_the_host_log() {
        let log =
            "2026-11-30T10:00:00Z  INFO clickstream::cli::run: HTTP API and dashboard at http://127.0.0.1:40123/ listen=127.0.0.1:40123\n";
        assert_eq!(api_address(log).as_deref(), Some("127.0.0.1:40123"));
        assert_eq!(api_address("starting\n"), None);
    }
}
