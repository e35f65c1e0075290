//! Fuzz target: `wgspin::fuzzing::chat_template` on arbitrary bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    wgspin::fuzzing::chat_template(data);
});
