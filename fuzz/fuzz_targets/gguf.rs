//! Fuzz target: `wgspin::fuzzing::gguf` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wgspin::fuzzing::gguf(data);
});
