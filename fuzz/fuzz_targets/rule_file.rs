//! Fuzz target: `trellis_proxy::fuzzing::rule_file`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trellis_proxy::fuzzing::rule_file(data));
