//! A response that can carry broker addresses (Metadata, FindCoordinator in both shapes,
//! DescribeCluster, the KIP-951 endpoints of Produce v10+ and Fetch v16+), rewritten: it must
//! decode again with every address the proxy's and nothing else changed. The checks live in
//! `idemgate::fuzz::broker_address`.
//!
//! Input: api_key, api_version (int16 each), then the response frame body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    idemgate::fuzz::broker_address(data);
});
