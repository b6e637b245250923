//! A request frame body: the header peek must agree with kafka_protocol's header decoder, and
//! the fields the proxy reads in place (Produce acks and timeout, Fetch max_wait_ms,
//! isolation_level and the max_bytes cap, JoinGroup rebalance timeout) with a full decode of
//! the request. The checks live in `idemgate::fuzz::request_head` and
//! `idemgate::fuzz::request_fields`.
//!
//! Input: one request frame body, as the golden request files are.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(head) = idemgate::fuzz::request_head(data) {
        idemgate::fuzz::request_fields(data, &head);
    }
});
