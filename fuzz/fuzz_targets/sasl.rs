//! SASL handshakes and tokens: the principal the proxy sniffs is never empty, never a secret,
//! and the same whatever the password, proof or signature. The checks live in
//! `idemgate::fuzz::sasl`.
//!
//! Input: steps, `0xff` + mechanism byte (a handshake) or length byte + token.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idemgate::fuzz::sasl(data);
});
