//! Fuzz target: `wgspin::fuzzing::safetensors` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wgspin::fuzzing::safetensors(data);
});
