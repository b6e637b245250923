//! A Produce or Fetch response with its throttle_time_ms raised (KIP-219): exactly that field
//! changes, and only upwards. The checks live in `idemgate::fuzz::throttle_time`.
//!
//! Input: api_key, api_version (int16 each), then the response frame body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idemgate::fuzz::throttle_time(data);
});
