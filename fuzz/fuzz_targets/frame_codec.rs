//! A client's stream, cut into frames by `FrameCodec` and by `FrameReader` (read a few bytes
//! at a time, cancelled at every wait): both must agree with a model of Kafka's framing,
//! frame for frame and error for error. The checks live in `idemgate::fuzz::frame_codec`.
//!
//! Input: limit byte (x16 bytes), read-size byte, then the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idemgate::fuzz::frame_codec(data);
});
