//! Arbitrary bytes as a client stream: frames or a `FrameError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idemgate::codec::fuzz_entry(data);
});
