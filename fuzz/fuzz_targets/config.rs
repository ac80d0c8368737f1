//! pipeline.toml's bytes → a configuration or an error that shows no secret (`clickstream::fuzzing::config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clickstream::fuzzing::config(data));
