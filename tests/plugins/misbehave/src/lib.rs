//! A test-only transform (contract 0.2.0) that misbehaves on request, so the
//! host's limits can be proven on a real component. The user id of an event
//! picks the behaviour:
//!
//! - `trap` panics, `loop` never returns, `alloc` allocates until stopped;
//! - `rename` returns the event with another event id, user id and
//!   timestamp (the host keeps its own);
//! - `long-city` returns a 1 MiB city name, `nul-country` a country holding
//!   a NUL character, `many-attributes` 1000 attributes (the host refuses
//!   all three);
//! - `short` makes the whole batch answer one outcome too few (a contract
//!   breach the host catches);
//! - `drop` is dropped (reason `asked`), `reject` rejected (field `user_id`);
//! - `chatty` logs 1000 messages (the host rate-limits them);
//! - `sleep` sleeps 20 s (`std::thread::sleep`), `poll` and `block` wait
//!   20 s on a clock in `wasi:io/poll` (the host bounds each by the call's
//!   deadline);
//! - `socket` opens a TCP socket (the host denies it);
//! - `alias` answers the batch with every city pointing at one 1 MiB
//!   buffer, `alias-import` passes geoip 200 addresses pointing at one
//!   1 MiB buffer: few bytes in the guest, hundreds of MiB if the host
//!   copied them all (it stops at its bound).
//!
//! Every other event is kept with country and city from geoip.

use std::collections::BTreeMap;

use clickstream_plugin::log::{log, Level};
use clickstream_plugin::{export_transformer, Attribute, Event, Outcome, Rejection, Transformer, Value};

struct Misbehave;

impl Transformer for Misbehave {
    const NAME: &'static str = "misbehave";
    /// Any key; `refuse = "why"` refuses the plugin with that message.
    type Settings = BTreeMap<String, String>;

    fn new(settings: BTreeMap<String, String>) -> Result<Self, String> {
        match settings.get("refuse") {
            Some(why) => Err(why.clone()),
            None => Ok(Misbehave),
        }
    }

    fn transform(&mut self, batch: Vec<Event>) -> Vec<Outcome> {
        // The `always-trap` build fails every batch: a plugin that cannot
        // pass the golden batch a reload runs before swapping it in.
        if cfg!(feature = "always-trap") {
            panic!("built to trap on every batch");
        }
        // The `slow` build: a candidate in shadow that cannot keep up, and
        // does nothing else (what its slowness costs, not its work).
        if cfg!(feature = "slow") {
            std::thread::sleep(std::time::Duration::from_millis(900));
            return batch.into_iter().map(Outcome::Keep).collect();
        }
        let short = batch.iter().any(|e| e.user_id == "short");
        let alias = batch.iter().any(|e| e.user_id == "alias");
        if batch.iter().any(|e| e.user_id == "alias-import") {
            let big = "1".repeat(1 << 20);
            let ips = aliases(&big, 200);
            // `ManuallyDrop<String>` is a `String` in memory.
            let ips: &[String] = unsafe { std::slice::from_raw_parts(ips.as_ptr().cast::<String>(), ips.len()) };
            clickstream_plugin::geoip::lookup_batch(ips);
        }
        let ips: Vec<String> = batch.iter().map(|e| e.ip.clone()).collect();
        let locations = clickstream_plugin::geoip::lookup_batch(&ips);
        let batch_len = batch.len();
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        let mut out: Vec<Outcome> = batch
            .into_iter()
            .zip(locations)
            .map(|(mut event, location)| {
                match event.user_id.as_str() {
                    "trap" => panic!("asked to trap"),
                    "loop" => {
                        let mut n: u64 = 0;
                        loop {
                            n = std::hint::black_box(n.wrapping_add(1));
                        }
                    }
                    "alloc" => loop {
                        let mut chunk = vec![0u8; 16 << 20];
                        chunk[0] = 1;
                        hoard.push(std::hint::black_box(chunk));
                    },
                    "drop" => return Outcome::Drop("asked".into()),
                    "reject" => return Outcome::Reject(Rejection { field: Some("user_id".into()), reason: "asked to reject".into() }),
                    "chatty" => (0..1000).for_each(|i| log(Level::Info, &format!("chatty message {i}"))),
                    "sleep" => std::thread::sleep(std::time::Duration::from_secs(20)),
                    "poll" => {
                        let clock = wasip2::clocks::monotonic_clock::subscribe_duration(20_000_000_000);
                        wasip2::io::poll::poll(&[&clock]);
                    }
                    "block" => wasip2::clocks::monotonic_clock::subscribe_duration(20_000_000_000).block(),
                    "socket" => {
                        let family = wasip2::sockets::network::IpAddressFamily::Ipv4;
                        if let Err(e) = wasip2::sockets::tcp_create_socket::create_tcp_socket(family) {
                            return Outcome::Reject(Rejection { field: None, reason: format!("socket refused: {e:?}") });
                        }
                    }
                    _ => {}
                }
                if let Some(l) = location {
                    event.country = l.country;
                    event.city = l.city;
                }
                match event.user_id.as_str() {
                    "rename" => {
                        event.event_id = format!("renamed-{}", event.event_id);
                        event.user_id = "someone-else".into();
                        event.timestamp_ms += 3_600_000;
                    }
                    "long-city" => event.city = Some("x".repeat(1 << 20)),
                    "nul-country" => event.country = Some("D\0E".into()),
                    "many-attributes" => {
                        event.attributes = (0..1000).map(|i| Attribute { key: format!("a{i}"), value: Value::Int(i) }).collect();
                    }
                    _ => {}
                }
                Outcome::Keep(event)
            })
            .collect();
        if short {
            out.pop();
        }
        if alias {
            let big: &'static str = Box::leak("x".repeat(1 << 20).into_boxed_str());
            for (outcome, city) in out.iter_mut().zip(aliases(big, batch_len)) {
                if let Outcome::Keep(event) = outcome {
                    event.city = Some(std::mem::ManuallyDrop::into_inner(city));
                }
            }
        }
        out
    }
}

/// `n` strings sharing `text`'s bytes: what a hostile guest can hand the
/// host without holding more than one copy. Never dropped by this side.
fn aliases(text: &str, n: usize) -> Vec<std::mem::ManuallyDrop<String>> {
    (0..n)
        .map(|_| std::mem::ManuallyDrop::new(unsafe { String::from_raw_parts(text.as_ptr() as *mut u8, text.len(), text.len()) }))
        .collect()
}

export_transformer!(Misbehave, version = "0.0.1-misbehave");
