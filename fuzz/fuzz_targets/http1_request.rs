//! Fuzz target: `trellis_proxy::fuzzing::http1_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trellis_proxy::fuzzing::http1_request(data));
