//! The properties the fuzz targets (`fuzz/`, `cargo +nightly fuzz run
//! <target>`) check on every input: each function takes the fuzzer's bytes
//! and panics when a property fails, so a failure is a crash the fuzzer
//! keeps. They live here, not in `fuzz/`, so that the committed inputs
//! (`fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`) are replayed
//! by `cargo test` on the stable toolchain (the tests at the bottom), and
//! CI checks every input a long run found interesting without building the
//! fuzzer. See docs/FUZZING.md.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::PipelineConfig;
use crate::plugin::artifact::{self, ArtifactError, ArtifactKey};
use crate::redact;
use crate::stages::decode::{decode as decode_record, DecodeLimits};

const DAY_MS: i64 = 86_400_000;

/// The host's clock as the decode property sees it (2026-12-01).
const NOW_MS: i64 = 1_796_083_200_000;

/// The default `[source]` limits, at [`NOW_MS`], but records up to 4 KiB:
/// the fuzzer's inputs (8 KiB at most) reach the size bound too.
const LIMITS: DecodeLimits =
    DecodeLimits { max_record_bytes: 4 << 10, min_timestamp_ms: 946_684_800_000, max_future_ms: DAY_MS, max_past_ms: 400 * DAY_MS };

/// Every dead-letter kind the decoder may give (the dead-letter table of docs/concepts.md).
const DECODE_KINDS: &[&str] = &[
    "too_large",
    "not_json",
    "duplicate_key",
    "missing_field",
    "wrong_type",
    "timestamp_out_of_range",
    "too_old",
    "nul_character",
    "field_too_long",
    "invalid_field",
];

/// A record is decoded into an event or refused with a known kind, the same
/// way twice; an event keeps every field within its limits and its time
/// within the bounds, carries no userinfo in its URLs, and decodes to itself
/// when written back as a record.
pub fn decode(bytes: &[u8]) {
    let derived = || "derived-id".to_string();
    let first = decode_record(bytes, &LIMITS, NOW_MS, derived);
    let again = decode_record(bytes, &LIMITS, NOW_MS, derived);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decoding is not deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "decoding is not deterministic"),
        _ => panic!("decoding is not deterministic: {first:?} then {again:?}"),
    }
    let event = match first {
        Ok(event) => event,
        Err(e) => {
            assert!(DECODE_KINDS.contains(&e.kind()), "unknown dead-letter kind {}", e.kind());
            return;
        }
    };
    event.check_fields().unwrap_or_else(|e| panic!("a decoded event breaks a field limit: {e}"));
    assert!(!event.event_id.is_empty(), "a decoded event has no id");
    assert!(
        (LIMITS.min_timestamp_ms..=NOW_MS + LIMITS.max_future_ms).contains(&event.timestamp_ms)
            && NOW_MS - event.timestamp_ms <= LIMITS.max_past_ms,
        "a decoded event's time {} is out of bounds",
        event.timestamp_ms
    );
    let record = serde_json::json!({
        "event_id": event.event_id,
        "user_id": event.user_id,
        "timestamp": event.timestamp_ms,
        "url": event.url,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "referrer": event.referrer,
        "session_id": event.session_id,
    });
    let written = serde_json::to_vec(&record).expect("a JSON value serialises");
    match decode_record(&written, &DecodeLimits { max_record_bytes: usize::MAX, ..LIMITS }, NOW_MS, derived) {
        Ok(back) => assert_eq!(back, event, "an event written back as a record decodes to another event (URL userinfo left?)"),
        Err(e) => panic!("an event written back as a record is refused: {e}"),
    }
}

/// What the `config` property writes as every secret key's value.
const MARKER: &str = "Mk7secretVALUEq2";

/// A pipeline.toml either loads or is refused with an error that never
/// shows the value of a secret key (`reload_token`, `sasl.password`, any
/// key [`redact::is_secret_key`] names), whatever is wrong with the file;
/// a loaded configuration validates again.
///
/// To tell a value the error quotes from text that merely looks like it
/// (a key's name, the message's own words), the file is checked a second
/// time with every secret value, as a user would read the line (an
/// unclosed quote included), replaced by a marker found nowhere else.
pub fn config(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if text.contains(MARKER) {
        return;
    }
    let marked = with_marked_secrets(text);
    for text in [text, &marked] {
        match PipelineConfig::parse(text, Path::new("/fuzz/pipeline.toml"), |_| None) {
            Ok(config) => config.validate().unwrap_or_else(|e| panic!("a loaded configuration does not validate again: {e}")),
            Err(e) => {
                let shown = e.to_string();
                assert!(!shown.contains(MARKER), "the error shows a secret key's value: {shown}");
            }
        }
    }
}

/// `text` with the value of every line assigning a secret key replaced by
/// [`MARKER`] (its quotes kept as they were).
fn with_marked_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let secret = body.split_once('=').and_then(|(key, value)| {
            let key = key.trim().trim_matches(['"', '\'']);
            let value = value.trim().trim_start_matches(['"', '\'']).trim_end_matches(['"', '\'']);
            redact::is_secret_key(key).then_some(value)
        });
        match secret {
            Some(value) => {
                let at = value.as_ptr() as usize - line.as_ptr() as usize;
                out.push_str(&line[..at]);
                out.push_str(MARKER);
                out.push_str(&line[at + value.len()..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

/// The artifact parser refuses whatever this host did not seal, without
/// panicking; what it sealed passes every check of the header and the tag,
/// whatever the payload; and a sealed artifact with one byte changed or cut
/// is refused for the header field that byte belongs to.
pub fn artifact(bytes: &[u8]) {
    let engine = crate::plugin::engine();
    let key = ArtifactKey::from_bytes([7; artifact::KEY_BYTES]);
    if let Ok(_opened) = artifact::open(engine, &key, bytes, None) {
        panic!("bytes this host never sealed were opened");
    }
    let source: [u8; 32] = Sha256::digest(bytes).into();
    let sealed = artifact::seal(engine, &key, &source, bytes);
    assert_eq!(artifact::named_source(&sealed), Some(artifact::hex(&source)), "a sealed artifact names another source");
    match artifact::open(engine, &key, &sealed, Some(&artifact::hex(&source))) {
        Ok(_) | Err(ArtifactError::Refused(_)) => {}
        Err(e) => panic!("a sealed artifact fails the header or tag checks: {e}"),
    }
    let cut = &sealed[..sealed.len() - 1];
    assert!(artifact::open(engine, &key, cut, None).is_err(), "a cut artifact was opened");
    let at = bytes.first().map_or(0, |&b| usize::from(b) * 7919) % sealed.len();
    let mut flipped = sealed.clone();
    flipped[at] ^= 0x20;
    let refused = artifact::open(engine, &key, &flipped, None).err();
    let expected = match at {
        0..16 => matches!(refused, Some(ArtifactError::NotAnArtifact)),
        80..88 => matches!(refused, Some(ArtifactError::Truncated { .. })),
        _ => matches!(refused, Some(ArtifactError::Unauthenticated)),
    };
    assert!(expected, "byte {at} changed, refused as {refused:?}");
}

/// Redacting a URL or a text never panics, changes nothing the second time,
/// and leaves no password a URL parser would read.
pub fn redact(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let once = redact::url(text);
    assert_eq!(redact::url(&once), once, "redacting a URL twice changes it");
    if let Ok(shown) = url::Url::parse(&once) {
        assert!(matches!(shown.password(), None | Some(redact::HIDDEN)), "a password is left in {once:?} (from {text:?})");
    }
    let once = redact::in_text(text);
    assert_eq!(redact::in_text(&once), once, "redacting a text twice changes it");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every input in `fuzz/corpus/<target>/` (what the runs found,
    /// minimised) and `fuzz/regressions/<target>/` (seeds and every input
    /// that once failed), through its property. An empty folder fails: the
    /// replay would prove nothing.
    fn replay(target: &str, property: fn(&[u8])) {
        let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        for dir in [fuzz.join("corpus").join(target), fuzz.join("regressions").join(target)] {
            let mut inputs = 0;
            for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = entry.expect("a corpus entry").path();
                let bytes = std::fs::read(&path).expect("a corpus file");
                if std::panic::catch_unwind(|| property(&bytes)).is_err() {
                    panic!("{} fails its property (cargo +nightly fuzz run -s none {target} {})", path.display(), path.display());
                }
                inputs += 1;
            }
            assert!(inputs > 0, "{} holds no input", dir.display());
        }
    }

    #[test]
    fn the_decode_corpus_keeps_its_properties() {
        replay("decode", super::decode);
    }

    #[test]
    fn the_config_corpus_keeps_its_properties() {
        replay("config", super::config);
    }

    #[test]
    fn the_artifact_corpus_keeps_its_properties() {
        replay("artifact", super::artifact);
    }

    #[test]
    fn the_redact_corpus_keeps_its_properties() {
        replay("redact", super::redact);
    }
}
