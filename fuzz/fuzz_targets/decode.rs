//! a Kafka record's bytes → an event or a dead letter (`clickstream::fuzzing::decode`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| clickstream::fuzzing::decode(data));
