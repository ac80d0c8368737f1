//! a .cwasm's bytes → refused unless sealed by this host; sealed ones checked field by field (`clickstream::fuzzing::artifact`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clickstream::fuzzing::artifact(data));
