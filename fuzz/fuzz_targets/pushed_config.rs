//! Fuzz target: `trellis_proxy::fuzzing::pushed_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| trellis_proxy::fuzzing::pushed_config(data));
