//! a URL or a text → the same with no password left, stable when redacted again (`clickstream::fuzzing::redact`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clickstream::fuzzing::redact(data));
