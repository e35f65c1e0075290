//! Fuzz target: `wgspin::fuzzing::dataset` on arbitrary bytes.
//!
//! The Parquet reader turns the parquet crate's panics on corrupt files into errors with
//! `catch_unwind`; libfuzzer-sys's panic hook aborts before any unwinding, so this target puts
//! the default hook back. A panic that nothing catches still aborts (it cannot unwind out of
//! libFuzzer's callback) and is reported as a crash.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: {
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| {
        wgspin::fuzzing::dataset(data);
    }
);
